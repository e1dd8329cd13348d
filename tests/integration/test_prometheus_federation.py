"""One Prometheus for a federated project: the shipped per-site and central configurations
(deploy/prometheus/site.yml, federation.yml) pass promtool, and, run for real with two gateways
as two sites, the central Prometheus sees both sites' series, each with its site label, and one
key fingerprint (the sites share the project key)."""

from __future__ import annotations

import copy
import subprocess
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.node import GatewayNode
from tests.support.gateway import KEY_TEXT, config_dict, make_key_file, parse, running_node
from tests.support.prometheus import DEPLOY, PrometheusServer, require_tool

pytestmark = pytest.mark.network

PROMETHEUS_DIR = DEPLOY / "prometheus"


@pytest.mark.parametrize("name", ["site.yml", "federation.yml"])
def test_promtool_accepts_the_federation_configurations(name: str) -> None:
    promtool = require_tool("promtool")
    result = subprocess.run(
        [promtool, "check", "config", name],
        cwd=PROMETHEUS_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_federation_keeps_the_sites_labels() -> None:
    central = yaml.safe_load((PROMETHEUS_DIR / "federation.yml").read_text())
    [job] = central["scrape_configs"]
    assert job["metrics_path"] == "/federate" and job["honor_labels"] is True
    assert any("dicomgw_" in m for m in job["params"]["match[]"])
    site = yaml.safe_load((PROMETHEUS_DIR / "site.yml").read_text())
    assert "site" in site["global"]["external_labels"]


def _node_config(tmp_path: Path, site: str) -> Any:
    data = config_dict(
        tmp_path / site, make_key_file(tmp_path), site={"id": site, "name": f"Hospital {site}"}
    )
    return parse(data)


def _federate(folder: Path, nodes: list[GatewayNode]) -> list[dict[str, Any]]:
    """Each site's Prometheus (site.yml) scrapes its gateway; the central one (federation.yml)
    federates both. Only addresses and intervals are changed from the shipped files."""
    site_template = yaml.safe_load((PROMETHEUS_DIR / "site.yml").read_text())
    central_template = yaml.safe_load((PROMETHEUS_DIR / "federation.yml").read_text())
    fast = {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"}
    with ExitStack() as stack:
        site_addresses = []
        for node in nodes:
            assert node.monitoring is not None and node.monitoring.server is not None
            site_id = str(node.cfg.site.id)
            target = f"127.0.0.1:{node.monitoring.server.port}"
            (folder / site_id).mkdir(parents=True)
            server = PrometheusServer(folder / site_id, [target])
            config = copy.deepcopy(site_template)
            config["global"].update(fast)
            config["global"]["external_labels"]["site"] = site_id
            config["rule_files"] = [str(PROMETHEUS_DIR / "alerts.yml")]
            config["scrape_configs"][0]["static_configs"] = [{"targets": [target]}]
            server.config_path.write_text(yaml.safe_dump(config))
            stack.enter_context(server)
            site_addresses.append(f"127.0.0.1:{server.port}")
        (folder / "central").mkdir(parents=True)
        central = PrometheusServer(folder / "central", site_addresses)
        config = copy.deepcopy(central_template)
        config["global"].update(fast)
        config["scrape_configs"][0]["static_configs"] = [{"targets": site_addresses}]
        central.config_path.write_text(yaml.safe_dump(config))
        stack.enter_context(central)
        central.wait_for("count(count by (site) (dicomgw_build_info)) == 2", timeout_s=60)
        central.wait_for('count(count by (site) (up{job="deid-gateway"} == 1)) == 2', timeout_s=30)
        return central.query("dicomgw_build_info")


def test_one_prometheus_sees_every_site(tmp_path: Path) -> None:
    require_tool("prometheus")
    with (
        running_node(_node_config(tmp_path, "SITE-A"), KEY_TEXT) as (a, _),
        running_node(_node_config(tmp_path, "SITE-B"), KEY_TEXT) as (b, _),
    ):
        series = _federate(tmp_path / "prometheus", [a, b])
    assert {s["metric"]["site"] for s in series} == {"SITE-A", "SITE-B"}
    assert len({s["metric"]["key_fingerprint"] for s in series}) == 1
    assert all(s["metric"]["job"] == "deid-gateway" for s in series)  # the sites' own labels
