"""Every gateway configuration the project ships (deploy/, the Helm chart's `config:` value,
gateway/defaults/) passes `deid-gateway check-config`, and the Compose GPU profile's worker gets a
configuration with work for it (a flowedit route, with its `flowedit:` section, on executor
celery)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config import load_config
from tests.conftest import REPO, run_cli

SHIPPED = [REPO / "deploy", REPO / "gateway" / "defaults"]
HELM_VALUES = REPO / "deploy" / "helm" / "deid-gateway" / "values.yaml"


def _is_gateway_config(data: Any) -> bool:
    return isinstance(data, dict) and "project" in data and "routes" in data


def shipped_configs() -> list[Path]:
    """YAML files under deploy/ and gateway/defaults/ that are gateway configurations (found by
    their content, so a new one is checked without editing this test)."""
    found = []
    for root in SHIPPED:
        for path in sorted([*root.rglob("*.yaml"), *root.rglob("*.yml")]):
            if "templates" in path.parts:
                continue  # Helm templates are not YAML until rendered
            if _is_gateway_config(yaml.safe_load(path.read_text(encoding="utf-8"))):
                found.append(path)
    return found


def test_the_known_configurations_are_found() -> None:
    names = {p.relative_to(REPO).as_posix() for p in shipped_configs()}
    assert {
        "gateway/defaults/gateway.yaml",
        "deploy/compose/gateway.yaml",
        "deploy/compose/gateway-gpu.yaml",
    } <= names


@pytest.mark.parametrize("path", shipped_configs(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_shipped_configuration_passes_check_config(path: Path) -> None:
    result = run_cli(["check-config", "--skip-key", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "configuration is valid" in result.stdout


def test_helm_chart_configuration_passes_check_config(tmp_path: Path) -> None:
    config = yaml.safe_load(HELM_VALUES.read_text(encoding="utf-8"))["config"]
    assert _is_gateway_config(config)
    target = tmp_path / "gateway.yaml"
    target.write_text(yaml.safe_dump(config), encoding="utf-8")
    result = run_cli(["check-config", "--skip-key", str(target)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_check_config_fails_on_a_flowedit_route_without_its_section(tmp_path: Path) -> None:
    """What the checks above would catch: the GPU configuration without its flowedit section."""
    data = yaml.safe_load((REPO / "deploy/compose/gateway-gpu.yaml").read_text(encoding="utf-8"))
    [photos] = [r for r in data["routes"] if r.get("pixels") == "flowedit"]
    del photos["flowedit"]
    target = tmp_path / "gateway.yaml"
    target.write_text(yaml.safe_dump(data), encoding="utf-8")
    result = run_cli(["check-config", "--skip-key", str(target)])
    assert result.returncode != 0
    assert "flowedit needs a 'flowedit' section" in result.stdout + result.stderr


def test_the_compose_gpu_worker_gets_a_configuration_with_work() -> None:
    compose = yaml.safe_load((REPO / "deploy/compose.yaml").read_text(encoding="utf-8"))
    worker = compose["services"]["worker"]
    [mount] = [v for v in worker["volumes"] if v.endswith(":/etc/deid-gateway/gateway.yaml:ro")]
    cfg = load_config(REPO / "deploy" / mount.split(":")[0])
    flowedit = [r for r in cfg.routes if r.pixels == "flowedit"]
    assert flowedit and all(r.flowedit is not None for r in flowedit)
    assert all(str(r.flowedit.model).startswith("/models/") for r in flowedit if r.flowedit)
    assert cfg.executor.kind == "celery"
    assert cfg.executor.broker_url_env in worker["environment"]
    # the gateway can be pointed at the same file (DEID_GATEWAY_CONFIG)
    gateway_mounts = " ".join(compose["services"]["gateway"]["volumes"])
    assert "${DEID_GATEWAY_CONFIG:-./compose/gateway.yaml}" in gateway_mounts
    assert cfg.executor.broker_url_env in compose["services"]["gateway"]["environment"]


def test_helm_commented_photograph_route_passes_check_config(tmp_path: Path) -> None:
    """The chart's values carry a commented flowedit route to switch on with the workers: once
    uncommented (with executor: celery) it must be a valid configuration too."""
    lines = HELM_VALUES.read_text(encoding="utf-8").splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("    # - name: photographs"))
    block = []
    for line in lines[start:]:
        if not (line.startswith("    # - ") or line.startswith("    #   ")):
            break
        block.append(line[len("    # ") :])
    routes = yaml.safe_load("\n".join(block))
    assert routes[0]["pixels"] == "flowedit"
    config = yaml.safe_load(HELM_VALUES.read_text(encoding="utf-8"))["config"]
    config["routes"] = routes + config["routes"]
    config["executor"] = "celery"
    target = tmp_path / "gateway.yaml"
    target.write_text(yaml.safe_dump(config), encoding="utf-8")
    result = run_cli(["check-config", "--skip-key", str(target)])
    assert result.returncode == 0, result.stdout + result.stderr
