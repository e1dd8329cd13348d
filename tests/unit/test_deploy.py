"""Static checks of deploy/: Dockerfiles, the Compose file, the Helm chart, the Grafana dashboard.

No Docker engine or Kubernetes cluster runs on the project's machines, so these check what can be
checked without one: Dockerfiles parse with BuildKit's own parser (the `dockerfile` package) and
copy only what exists; the Compose file passes `docker-compose config` (Docker's schema and
interpolation, Debian package); the chart renders (tests/support/helm_template.py) into objects
that pass the Kubernetes OpenAPI schemas (kubernetes-validate, strict), wire together (selectors,
ports, volumes, probes), and carry a configuration the gateway itself accepts. Where the Helm
library is installed (scripts/install-helm-lint.sh), real `helm lint` checks the templates too.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import dockerfile
import jsonschema
import kubernetes_validate
import pytest
import yaml

from gateway.config import GatewayConfig, parse_config
from gateway.labels import Vocabulary
from gateway.node import access_policy
from gateway.routing import Router
from tests.conftest import REPO
from tests.support.helm_template import Chart, TemplateError, UnsupportedTemplate, merge

DEPLOY = REPO / "deploy"
CHART = DEPLOY / "helm" / "deid-gateway"
K8S_VERSION = "1.31"
#: Every optional part of the chart switched on.
FULL_VALUES: dict[str, Any] = {
    "worker": {"enabled": True, "gpus": 2, "runtimeClassName": "nvidia"},
    "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
    "prometheusRule": {"enabled": True},
    "grafanaDashboard": {"enabled": True},
    "projectKey": {"value": "k" * 48},
    "models": {"existingClaim": "sd3-weights"},
    "persistence": {"storageClass": "fast-ssd"},
    "gateway": {"extraEnv": [{"name": "TZ", "value": "UTC"}], "nodeSelector": {"disk": "ssd"}},
    "imagePullSecrets": [{"name": "registry"}],
    "service": {"annotations": {"example.org/team": "imaging"}},
}

# ---- Dockerfiles ---------------------------------------------------------------------------


def dockerignore() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cuda"])
def test_dockerfile_parses_and_copies_only_what_exists(name: str) -> None:
    commands = dockerfile.parse_file(str(DEPLOY / name))
    kinds = [c.cmd for c in commands]
    assert kinds.count("FROM") == 2, "a build stage and a slim runtime stage"
    ignored = dockerignore()
    for command in commands:
        if command.cmd == "COPY" and not any(f.startswith("--from") for f in command.flags):
            *sources, _dest = command.value
            for source in sources:
                assert (REPO / source).exists(), f"{name}: COPY {source}: not in the repository"
                assert source.split("/")[0] not in ignored, f"{name}: {source} is .dockerignored"
    user = [c.value[0] for c in commands if c.cmd == "USER"]
    assert user and user[-1].isdigit() and int(user[-1]) != 0, "the runtime stage must not be root"
    exposed = {p for c in commands if c.cmd == "EXPOSE" for p in c.value}
    assert {"11112", "9477"} <= exposed
    entry = next(c for c in commands if c.cmd == "ENTRYPOINT")
    assert json.loads(entry.original.split(None, 1)[1]) == ["deid-gateway"]
    health = next(c for c in commands if c.cmd == "HEALTHCHECK")
    assert "/healthz" in health.original
    installs = " ".join(c.original for c in commands if c.cmd == "RUN")
    assert "torch==2.13.0" in installs, "the image pins the same torch as the project"


def test_image_entry_point_is_the_project_console_script() -> None:
    import tomllib

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["deid-gateway"] == "gateway.cli:main"


# ---- commands and configuration shared by Compose and the chart --------------------------------

#: Where Compose and the chart mount the gateway's YAML.
CONFIG_PATH = "/etc/deid-gateway/gateway.yaml"
#: The volume with the spool, outbox, quarantine and journal in both.
STATE_DIR = Path("/var/lib/deid-gateway")


def cli_commands() -> dict[str, list[str]]:
    """Each `deid-gateway` command and its option names, from the CLI itself."""
    import typer

    from gateway.cli import app

    group = typer.main.get_command(app)
    return {
        name: [opt for param in command.params for opt in param.opts]
        for name, command in group.commands.items()  # type: ignore[attr-defined]
    }


def check_container_command(args: list[str], role: str) -> None:
    """`serve --config <mounted YAML>` for the gateway; `worker --config ...` for GPU workers
    (the worker command arrives with the Celery executor, issue 7: until then only its form is
    checked)."""
    assert args == [role, "--config", CONFIG_PATH]
    commands = cli_commands()
    if role == "serve" or role in commands:
        assert "--config" in commands[role], f"`deid-gateway {role}` takes no --config"


def check_container_config(cfg: GatewayConfig, dicom_port: int, metrics_port: int) -> None:
    """A configuration a container can start with: callers can associate, every interface of the
    container listens on the published ports, all state is on the volume, every route reaches a
    configured destination, and metric labels can be made from its names."""
    access_policy(cfg)  # raises when nobody could associate
    assert cfg.node.host in {"0.0.0.0", "::"} and cfg.node.port == dicom_port
    assert cfg.metrics.enabled and cfg.metrics.address in {"0.0.0.0", "::"}
    assert cfg.metrics.port == metrics_port
    storage = cfg.storage
    for path in (storage.spool_dir, storage.outbox_dir, storage.quarantine_dir, storage.journal):
        assert path.is_absolute() and STATE_DIR in path.parents, path
    routes = Router.from_config(cfg).all_routes()
    assert routes and all(r.destinations for r in routes)
    Vocabulary([r.name for r in routes], list(cfg.destinations))


def test_the_image_runs_serve_on_the_mounted_configuration() -> None:
    for name in ("Dockerfile", "Dockerfile.cuda"):
        commands = dockerfile.parse_file(str(DEPLOY / name))
        cmd = next(c for c in commands if c.cmd == "CMD")
        check_container_command(json.loads(cmd.original.split(None, 1)[1]), "serve")


# ---- Compose ---------------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return data


@pytest.mark.slow
def test_compose_file_passes_docker_compose_config(tmp_path: Path) -> None:
    tool = shutil.which("docker-compose")
    if tool is None:
        pytest.skip("docker-compose is not installed (scripts/install-system-deps.sh installs it)")
    for profile in ([], ["--profile", "gpu"]):
        result = subprocess.run(
            [tool, "-f", "compose.yaml", *profile, "config", "-q"],
            cwd=DEPLOY,
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "DOCKER_HOST": "unix:///nonexistent"},
        )
        assert result.returncode == 0, result.stdout + result.stderr
    # And the check can fail: an unknown service key is rejected.
    broken = compose()
    broken["services"]["gateway"]["colour"] = "red"
    (tmp_path / "compose.yaml").write_text(yaml.safe_dump(broken))
    result = subprocess.run(
        [tool, "-f", str(tmp_path / "compose.yaml"), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0 and "colour" in result.stdout + result.stderr


def test_compose_services_fit_together(key_file: Path) -> None:
    data = compose()
    services = data["services"]
    assert {"gateway", "orthanc", "prometheus", "grafana"} <= set(services)
    # Every host path mounted exists, except the key (made by keygen) and optional models.
    for name, service in services.items():
        for volume in service.get("volumes", []):
            host = volume.split(":")[0]
            if host.startswith("."):
                assert (DEPLOY / host).exists(), f"{name}: {host} does not exist"
    assert data["secrets"]["project_key"]["file"] == "./secrets/project.key"
    ignore = (DEPLOY / "secrets" / ".gitignore").read_text().splitlines()
    assert "*" in ignore, "a key put into deploy/secrets must never be committed"
    # The gateway's configuration is valid and reads the key where Compose mounts the secret.
    gateway_yaml = yaml.safe_load((DEPLOY / "compose" / "gateway.yaml").read_text())
    cfg = parse_config(gateway_yaml, "deploy/compose/gateway.yaml")
    assert cfg.project.key.file == Path("/run/secrets/project_key")
    gateway = services["gateway"]
    published = int(gateway["ports"][0].split(":")[-1])
    check_container_config(cfg, dicom_port=published, metrics_port=int(gateway["expose"][0]))
    check_container_command(gateway["command"], "serve")
    check_container_command(services["worker"]["command"], "worker")
    assert f"{CONFIG_PATH}:ro" in " ".join(gateway["volumes"])
    assert "/healthz" in " ".join(gateway["healthcheck"]["test"])
    assert any(v.startswith(f"spool:{STATE_DIR}") for v in gateway["volumes"])
    # The archive of the stack is the destination, and it knows the gateway's AE title.
    (archive,) = cfg.destinations.values()
    orthanc = services[archive.host]["environment"]
    assert orthanc["ORTHANC__DICOM_AET"] == archive.ae_title
    assert int(orthanc["ORTHANC__DICOM_PORT"]) == archive.port
    modalities = json.loads(orthanc["ORTHANC__DICOM_MODALITIES"])
    assert [cfg.node.ae_title, "gateway", cfg.node.port] in modalities.values()
    # Prometheus scrapes the gateway on that port and loads the alert rules.
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    job = next(j for j in prometheus["scrape_configs"] if j["job_name"] == "deid-gateway")
    assert job["static_configs"][0]["targets"] == [f"gateway:{cfg.metrics.port}"]
    assert prometheus["rule_files"] == ["alerts.yml"]
    # Grafana's provisioned data source and dashboard folder match the mounts.
    datasource = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text()
    )["datasources"][0]
    assert datasource["url"] == "http://prometheus:9090"
    provider = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/dashboards/deid-gateway.yml").read_text()
    )["providers"][0]
    mounts = dict(v.split(":")[:2] for v in services["grafana"]["volumes"])
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]


# ---- Grafana dashboard -----------------------------------------------------------------------


def test_dashboard_is_well_formed() -> None:
    dash = json.loads((DEPLOY / "grafana/dashboards/deid-gateway.json").read_text())
    assert dash["uid"] == "deid-gateway"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    titles = {p["title"] for p in dash["panels"]}
    for wanted in (
        "Throughput",
        "Rejection rate by reason",
        "Lesion IoU distribution",
        "Stage latency p50",
        "Stage latency p95",
        "Journal rows by state",
        "Outbox per destination",
        "Destination health",
    ):
        assert wanted in titles
    variables = {v["name"] for v in dash["templating"]["list"]}
    for panel in dash["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip()
            used = {v for v in variables if f"${v}" in target["expr"]}
            assert used <= variables


# ---- Helm chart ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chart() -> Chart:
    return Chart(CHART, release="gw", namespace="imaging")


def by_kind(docs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


#: The parts of the Prometheus Operator's CRD schemas our objects use.
SERVICE_MONITOR_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "endpoints"],
            "properties": {
                "selector": {
                    "type": "object",
                    "properties": {
                        "matchLabels": {
                            "type": "object",
                            "additionalProperties": {"type": "string"},
                        }
                    },
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "interval": {"type": "string", "pattern": "^([0-9]+(ms|s|m|h))+$"},
                            "scrapeTimeout": {
                                "type": "string",
                                "pattern": "^([0-9]+(ms|s|m|h))+$",
                            },
                        },
                    },
                },
            },
        },
    },
}
PROMETHEUS_RULE_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "groups": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name", "rules"],
                        "properties": {
                            "name": {"type": "string"},
                            "rules": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "required": ["expr"],
                                    "properties": {
                                        "alert": {"type": "string"},
                                        "record": {"type": "string"},
                                        "expr": {"type": "string"},
                                        "for": {"type": "string"},
                                        "labels": {
                                            "type": "object",
                                            "additionalProperties": {"type": "string"},
                                        },
                                        "annotations": {
                                            "type": "object",
                                            "additionalProperties": {"type": "string"},
                                        },
                                    },
                                },
                            },
                        },
                    },
                }
            },
        },
    },
}


@pytest.mark.parametrize("variant", ["defaults", "full"])
def test_chart_renders_valid_kubernetes_objects(chart: Chart, variant: str) -> None:
    docs = chart.manifests(FULL_VALUES if variant == "full" else None)
    kinds = sorted(d["kind"] for d in docs)
    if variant == "defaults":
        assert kinds == ["ConfigMap", "Deployment", "PersistentVolumeClaim", "Service"]
    else:
        assert kinds == [
            "ConfigMap",
            "ConfigMap",
            "Deployment",
            "Deployment",
            "PersistentVolumeClaim",
            "PrometheusRule",
            "Secret",
            "Service",
            "ServiceMonitor",
        ]
    for doc in docs:
        if doc["kind"] == "ServiceMonitor":
            jsonschema.validate(doc, SERVICE_MONITOR_SCHEMA)
        elif doc["kind"] == "PrometheusRule":
            jsonschema.validate(doc, PROMETHEUS_RULE_SCHEMA)
        else:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == "gw"
        assert len(doc["metadata"]["name"]) <= 63


def test_a_schema_violation_in_a_rendered_object_is_caught(chart: Chart) -> None:
    deployment = next(d for d in chart.manifests() if d["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "dicom"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def test_gateway_deployment_probes_volumes_and_service_fit(chart: Chart) -> None:
    objs = by_kind(chart.manifests(FULL_VALUES))
    deployment = objs[("Deployment", "gw-deid-gateway")]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"dicom": 11112, "metrics": 9477}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    assert pod["securityContext"]["runAsNonRoot"] is True
    # Mounts name volumes that exist; the key is read-only; the spool is the PVC.
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert set(mounts) <= set(volumes)
    assert mounts["project-key"]["readOnly"] is True
    assert volumes["project-key"]["secret"]["secretName"] == "gw-deid-gateway-key"
    assert volumes["spool"]["persistentVolumeClaim"]["claimName"] == "gw-deid-gateway-spool"
    assert ("PersistentVolumeClaim", "gw-deid-gateway-spool") in objs
    assert volumes["models"]["persistentVolumeClaim"] == {
        "claimName": "sd3-weights",
        "readOnly": True,
    }
    # The configuration the pod reads is one the gateway accepts, with the key where it is
    # mounted and metrics on the probed port, on every interface of the pod.
    configmap = objs[("ConfigMap", "gw-deid-gateway-config")]
    assert volumes["config"]["configMap"]["name"] == "gw-deid-gateway-config"
    cfg = parse_config(yaml.safe_load(configmap["data"]["gateway.yaml"]), "chart config")
    key_mount = mounts["project-key"]["mountPath"]
    assert cfg.project.key.file == Path(key_mount) / "project.key"
    check_container_config(cfg, dicom_port=ports["dicom"], metrics_port=ports["metrics"])
    assert Path(mounts["spool"]["mountPath"]) == STATE_DIR
    assert mounts["config"]["mountPath"] == CONFIG_PATH
    check_container_command(container["args"], "serve")
    secret = objs[("Secret", "gw-deid-gateway-key")]
    assert "project.key" in secret["data"]
    # The Service selects exactly the gateway pods and names the ports the probes use.
    service = objs[("Service", "gw-deid-gateway")]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert deployment["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]
    assert {p["targetPort"] for p in service["spec"]["ports"]} == set(ports)
    # The ServiceMonitor finds that Service and scrapes its metrics port.
    monitor = objs[("ServiceMonitor", "gw-deid-gateway")]
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_gpu_worker_requests_gpus_and_selects_only_workers(chart: Chart) -> None:
    objs = by_kind(chart.manifests(FULL_VALUES))
    worker = objs[("Deployment", "gw-deid-gateway-worker")]
    pod = worker["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 2
    check_container_command(container["args"], "worker")
    assert pod["runtimeClassName"] == "nvidia"
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    gateway = objs[("Deployment", "gw-deid-gateway")]
    worker_labels = worker["spec"]["selector"]["matchLabels"]
    gateway_labels = gateway["spec"]["selector"]["matchLabels"]
    assert worker_labels != gateway_labels
    service = objs[("Service", "gw-deid-gateway")]
    assert (
        not service["spec"]["selector"].items()
        <= worker["spec"]["template"]["metadata"]["labels"].items()
    ), "the gateway Service must not route DICOM to GPU workers"
    # Workers get no project key: no metadata (and no key) leaves the gateway.
    assert "project-key" not in {v["name"] for v in pod["volumes"]}


def test_chart_ships_the_same_alerts_and_dashboard(chart: Chart) -> None:
    assert (CHART / "files/alerts.yml").read_bytes() == (
        DEPLOY / "prometheus/alerts.yml"
    ).read_bytes()
    assert (CHART / "files/deid-gateway.json").read_bytes() == (
        DEPLOY / "grafana/dashboards/deid-gateway.json"
    ).read_bytes()
    objs = by_kind(chart.manifests(FULL_VALUES))
    rule = objs[("PrometheusRule", "gw-deid-gateway")]
    assert rule["spec"] == yaml.safe_load((DEPLOY / "prometheus/alerts.yml").read_text())
    dashboard = objs[("ConfigMap", "gw-deid-gateway-dashboard")]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["deid-gateway.json"])["uid"] == "deid-gateway"


def test_prometheus_rule_from_the_chart_passes_promtool(chart: Chart, tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (scripts/install-system-deps.sh installs it)")
    objs = by_kind(chart.manifests(FULL_VALUES))
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump(objs[("PrometheusRule", "gw-deid-gateway")]["spec"]))
    result = subprocess.run(
        [promtool, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_readiness_can_keep_ingesting_through_an_archive_outage(chart: Chart) -> None:
    """Default: /readyz (an unreachable archive takes the pod out of the Service); an operator
    who wants ingest to go on through archive outages probes /healthz instead."""
    for path in ("/readyz", "/healthz"):
        values = {"gateway": {"readinessProbe": {"path": path}}}
        jsonschema.validate(merge(chart.default_values, values), values_schema())
        objs = by_kind(chart.manifests(values))
        (container,) = objs[("Deployment", "gw-deid-gateway")]["spec"]["template"]["spec"][
            "containers"
        ]
        assert container["readinessProbe"]["httpGet"] == {"path": path, "port": "metrics"}


def test_existing_claim_and_no_persistence(chart: Chart) -> None:
    objs = by_kind(chart.manifests({"persistence": {"existingClaim": "site-spool"}}))
    assert not any(kind == "PersistentVolumeClaim" for kind, _ in objs)
    pod = objs[("Deployment", "gw-deid-gateway")]["spec"]["template"]["spec"]
    spool = next(v for v in pod["volumes"] if v["name"] == "spool")
    assert spool["persistentVolumeClaim"]["claimName"] == "site-spool"
    objs = by_kind(chart.manifests({"persistence": {"enabled": False}}))
    pod = objs[("Deployment", "gw-deid-gateway")]["spec"]["template"]["spec"]
    assert next(v for v in pod["volumes"] if v["name"] == "spool") == {
        "name": "spool",
        "emptyDir": {},
    }


def values_schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((CHART / "values.schema.json").read_text())
    return schema


def test_values_schema_accepts_the_defaults_and_the_full_set(chart: Chart) -> None:
    schema = values_schema()
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.validate(chart.default_values, schema)
    jsonschema.validate(merge(chart.default_values, FULL_VALUES), schema)


@pytest.mark.parametrize(
    "override",
    [
        {"worker": {"gpus": "two"}},
        {"worker": {"gpu": 1}},
        {"gateway": {"replicas": 2}},
        {"projectKey": {"existingSecret": "", "value": ""}},
        {"projectKey": {"value": "too-short"}},
        {"config": {"metrics": {"address": "127.0.0.1"}}},
        {"config": {"node": {"host": "127.0.0.1"}}},
        {"gateway": {"readinessProbe": {"path": "/metrics"}}},
        {"config": {"storage": {"journal": "/tmp/journal.sqlite"}}},
        {"config": {"project": {"key": {"file": "/elsewhere/key"}}}},
        {"persistence": {"size": "lots"}},
    ],
)
def test_values_schema_rejects_mistakes(chart: Chart, override: dict[str, Any]) -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(merge(chart.default_values, override), values_schema())


# ---- the renderer itself ---------------------------------------------------------------------


def _render_one(tmp_path: Path, template: str, values: dict[str, Any]) -> str:
    (tmp_path / "templates").mkdir(exist_ok=True)
    (tmp_path / "Chart.yaml").write_text("apiVersion: v2\nname: t\nversion: 1.0.0\n")
    (tmp_path / "values.yaml").write_text(yaml.safe_dump(values))
    (tmp_path / "templates" / "_helpers.tpl").write_text(
        '{{- define "t.greet" -}}\nhi {{ .name }}\n{{- end -}}\n'
    )
    (tmp_path / "templates" / "x.yaml").write_text(template)
    return Chart(tmp_path).render()["x.yaml"]


@pytest.mark.parametrize(
    ("template", "values", "expected"),
    [
        # Trim markers eat all whitespace, newlines included, on their side only.
        ("a:\n  {{- .Values.x }}\nb", {"x": 1}, "a:1\nb"),
        ("a: {{ .Values.x -}}\n\n  b", {"x": 1}, "a: 1b"),
        # Missing keys print nothing; Go truthiness of 0, "", [] and {}.
        ("[{{ .Values.missing }}]", {}, "[]"),
        (
            "{{ if .Values.a }}A{{ end }}{{ if .Values.b }}B{{ end }}{{ if .Values.c }}C{{ end }}"
            "{{ if .Values.d }}D{{ else }}notD{{ end }}{{ if .Values.e }}E{{ end }}",
            {"a": 0, "b": "", "c": [], "d": {}, "e": "0"},
            "notDE",
        ),
        # with rebinds dot; $ stays the root.
        ("{{ with .Values.m }}{{ .k }}-{{ $.Values.n }}{{ end }}", {"m": {"k": 1}, "n": 2}, "1-2"),
        # include renders a define with the data given; pipes pass the last argument.
        ('{{ include "t.greet" .Values | upper }}', {"name": "x"}, None),
        ('{{ include "t.greet" .Values | nindent 2 }}', {"name": "x"}, "\n  hi x"),
        ('{{ .Values.t | default "dflt" | quote }}', {"t": ""}, '"dflt"'),
        ('{{ printf "%s-%s" .Values.a "b" | trunc 3 }}', {"a": "xyz"}, "xyz"),
        ('{{ "ab-" | trimSuffix "-" }}', {}, "ab"),
        ("{{ and .Values.a .Values.b }}|{{ or .Values.a .Values.b }}", {"a": 0, "b": 5}, "0|5"),
        ("{{ toYaml .Values.l | indent 2 }}", {"l": {"b": [1], "a": "s"}}, "  a: s\n  b:\n  - 1"),
        ("{{ .Values.s | b64enc }}", {"s": "key"}, "a2V5"),
    ],
)
def test_renderer_follows_go_template_semantics(
    tmp_path: Path, template: str, values: dict[str, Any], expected: str | None
) -> None:
    if expected is None:
        with pytest.raises(UnsupportedTemplate, match="upper"):
            _render_one(tmp_path, template, values)
    else:
        assert _render_one(tmp_path, template, values) == expected


@pytest.mark.parametrize(
    ("template", "error"),
    [
        ("{{ .Values.nope.deeper }}", TemplateError),
        ("{{ range .Values.l }}x{{ end }}", UnsupportedTemplate),
        ("{{ $x := 1 }}", UnsupportedTemplate),
        ("{{ if .Values.a }}unclosed", TemplateError),
        ("{{ .Values.big }}", UnsupportedTemplate),
        ("{{ .Values.m }}", UnsupportedTemplate),
        ('{{ include "t.missing" . }}', TemplateError),
    ],
)
def test_renderer_refuses_what_it_cannot_render_faithfully(
    tmp_path: Path, template: str, error: type[Exception]
) -> None:
    with pytest.raises(error):
        _render_one(tmp_path, template, {"big": 1000000, "m": {"a": 1}, "l": [1]})


# ---- real helm lint, where the Helm library is installed ------------------------------------

HELM_LINT = """
import asyncio, json, sys
import helm_sdkpy
config = helm_sdkpy.Configuration(namespace="default", kubeconfig="/dev/null")
results = {p: asyncio.run(helm_sdkpy.Lint(config).run(p)) for p in sys.argv[1:]}
print(json.dumps(results))
"""


def helm_python() -> str:
    candidates = [os.environ.get("DEID_HELM_PYTHON", ""), str(REPO / ".venv-helm/bin/python")]
    for candidate in candidates:
        if candidate and Path(candidate).exists():
            return candidate
    pytest.skip("the Helm library is not installed (scripts/install-helm-lint.sh installs it)")


def test_real_helm_lint_accepts_the_chart_in_every_variant(tmp_path: Path) -> None:
    python = helm_python()
    variants = {"defaults": {}, "full": FULL_VALUES, "broken": {}}
    paths = []
    for name, override in variants.items():
        target = tmp_path / name
        shutil.copytree(CHART, target)
        values = yaml.safe_load((target / "values.yaml").read_text())
        (target / "values.yaml").write_text(yaml.safe_dump(merge(values, override)))
        paths.append(str(target))
    broken = tmp_path / "broken" / "templates" / "service.yaml"
    broken.write_text(broken.read_text().replace(".Values.service.type", ".Values.nope.type"))
    result = subprocess.run(
        [python, "-c", HELM_LINT, *paths], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)

    def errors(name: str) -> list[str]:
        messages = report[str(tmp_path / name)]["Messages"]
        return [m["Path"] for m in messages if m["Severity"] >= 3]  # 3: error

    assert errors("defaults") == []
    assert errors("full") == []
    assert errors("broken") == ["templates/"], "helm lint must catch a broken template"
