"""The gateway as an Orthanc plugin (Debian's orthanc-python), in a network namespace.

Orthanc is configured with what `deid-gateway orthanc-plugin snippet` prints, so the documented
way to install the plugin is the way tested.

1. ``in_process``: a PHI-planted study stored into Orthanc is handed over when stable,
   de-identified by the gateway running inside Orthanc, and forwarded by STOW-RS (Orthanc's own
   DICOMweb plugin, over loopback inside the namespace) back into the same Orthanc. The result
   holds none of the planted values; the de-identified copy is not handed over again (no loop);
   the gateway inside Orthanc stops with Orthanc.
2. ``forward``: the plugin has Orthanc send the stable study to a gateway node (here, in the test
   process), which de-identifies it and forwards it back by C-STORE.
"""

from __future__ import annotations

import io
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
import yaml

from tests.conftest import run_cli
from tests.support.gateway import (
    config_dict,
    destination,
    make_key_file,
    parse,
    running_node,
    wait_until,
)
from tests.support.netns import NetNamespace
from tests.support.orthanc import Orthanc, require_orthanc, require_plugins
from tests.support.phi import CANARY, PlantedStudy, write_planted_study

pytestmark = [pytest.mark.network, pytest.mark.slow]


def _plugin_entries(config: Path) -> dict[str, Any]:
    result = run_cli(["orthanc-plugin", "snippet", "--config", str(config)])
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr  # the plugin embeds the Python the gateway runs on
    snippet = json.loads(result.stdout)
    return {"PythonScript": snippet["PythonScript"], "DeidGateway": snippet["DeidGateway"]}


@pytest.fixture
def ns() -> Iterator[NetNamespace]:
    require_orthanc()
    require_plugins("python", "dicomweb")
    namespace = NetNamespace.create()
    try:
        yield namespace
    finally:
        namespace.destroy()


def _new_study(orthanc: Orthanc, before: set[str]) -> str | None:
    new = orthanc.studies() - before
    return next(iter(new)) if len(new) == 1 else None


def _leaks(data: bytes, study: PlantedStudy) -> list[str]:
    """Planted values found anywhere in an encoded instance (also inside sequences, private
    blocks and file meta)."""
    return [n for n in study.needles if n.encode("ascii") in data]


def _ledger(path: Path) -> dict[str, int]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return dict(db.execute("SELECT outcome, COUNT(*) FROM instances GROUP BY outcome"))
    finally:
        db.close()


def test_in_process_plugin_deidentifies_stable_studies_inside_orthanc(
    tmp_path: Path, ns: NetNamespace
) -> None:
    work = tmp_path / "site"
    http_port = 8042
    data = config_dict(
        work / "gw",
        make_key_file(tmp_path),
        destinations={
            # Orthanc's own DICOMweb service, seen from inside Orthanc: loopback, plain HTTP
            "research": {
                "type": "dicomweb",
                "url": f"http://127.0.0.1:{http_port}/dicom-web",
                "retry": {"initial_delay_s": 0.5, "max_delay_s": 2},
            }
        },
    )
    data["metrics"] = {"enabled": False}
    data["logging"] = {"level": "info", "format": "json"}
    data["orthanc_plugin"] = {"mode": "in_process", "state_file": str(work / "ledger.sqlite")}
    config = work / "gateway.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(yaml.safe_dump(data))

    orthanc = Orthanc(
        work / "orthanc",
        ns,
        http_port=http_port,
        plugins=("dicomweb", "python"),
        extra=_plugin_entries(config),
    )
    study = write_planted_study(tmp_path / "in", "PLUGIN", 3)
    try:
        orthanc.start(timeout=60)
        assert "deid-gateway plugin ready: in process" in orthanc.log_text()
        for path in study.files:
            orthanc.upload(path)
        before = orthanc.studies()
        assert wait_until(
            lambda: (
                (sid := _new_study(orthanc, before)) is not None
                and len(orthanc.study_instances(sid)) == 3
            ),
            60,
        ), orthanc.log_text()[-3000:]
        new = _new_study(orthanc, before)
        assert new is not None
        for instance in orthanc.study_instances(new):
            data_bytes = orthanc.file(instance)
            assert _leaks(data_bytes, study) == []
            ds = pydicom.dcmread(io.BytesIO(data_bytes))
            assert ds.PatientIdentityRemoved == "YES"
            assert CANARY not in str(ds.PatientName)
        # the de-identified copy became stable too, and was left alone: no loop
        time.sleep(3.0)
        assert len(orthanc.studies()) == 2
        assert wait_until(
            lambda: _ledger(work / "ledger.sqlite") == {"handed": 3, "skipped_deidentified": 3},
            10,
        ), _ledger(work / "ledger.sqlite")
    finally:
        orthanc.stop()
    log = orthanc.log_text()
    ours = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    events = [entry.get("event") for entry in ours]
    assert "orthanc_study_handed_over" in events
    assert "shutdown_complete" in events  # the embedded gateway stopped with Orthanc
    for entry in ours:
        text = json.dumps(entry)
        assert not [n for n in study.needles if n in text], entry
    journal = sqlite3.connect(f"file:{work / 'gw' / 'journal.sqlite'}?mode=ro", uri=True)
    states = dict(journal.execute("SELECT state, COUNT(*) FROM instances GROUP BY state"))
    calling = {r[0] for r in journal.execute("SELECT calling_ae FROM instances")}
    journal.close()
    assert states == {"forwarded": 3} and calling == {"ORTHANC"}


def test_forward_mode_sends_stable_studies_to_a_gateway_node(
    tmp_path: Path, ns: NetNamespace
) -> None:
    """The gateway is down when the study becomes stable: the plugin retries with backoff, and
    the study arrives once the gateway is up."""
    work = tmp_path / "site"
    orthanc_ae = "ORTHANC"
    port = _free_port(ns.host_address)
    data = config_dict(
        work / "gw",
        make_key_file(tmp_path),
        destinations={"archive": destination(ns.inner_address, 4242, orthanc_ae)},
    )
    data["node"]["host"] = ns.host_address
    data["node"]["port"] = port
    data["node"]["allowed_callers"] = [{"ae_title": orthanc_ae, "host": ns.inner_address}]
    data["orthanc_plugin"] = {
        "mode": "forward",  # to `node`: this file's gateway
        "state_file": str(work / "ledger.sqlite"),
        "retry_initial_delay_s": 0.5,
        "retry_max_delay_s": 1.0,
    }
    data["metrics"] = {"enabled": False}
    config = work / "gateway.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(yaml.safe_dump(data))
    orthanc = Orthanc(work / "orthanc", ns, plugins=("python",), extra=_plugin_entries(config))
    study = write_planted_study(tmp_path / "in", "FORWARD", 2)
    try:
        orthanc.start(timeout=60)
        assert f"forwarding to DEIDGW@{ns.host_address}:{port}" in orthanc.log_text()
        for path in study.files:
            orthanc.upload(path)
        before = orthanc.studies()
        assert wait_until(lambda: "orthanc_handover_retry" in orthanc.log_text(), 30)
        with running_node(parse(data)) as (node, _):
            assert wait_until(lambda: node.backlog().journal_states["forwarded"] == 2, 60), (
                orthanc.log_text()[-3000:]
            )
            assert wait_until(lambda: _new_study(orthanc, before) is not None, 30)
            new = _new_study(orthanc, before)
            assert new is not None and len(orthanc.study_instances(new)) == 2
            for instance in orthanc.study_instances(new):
                assert _leaks(orthanc.file(instance), study) == []
            time.sleep(3.0)  # the de-identified copy is stable now, and not sent again
            assert sum(node.backlog().journal_states.values()) == 2
            assert wait_until(
                lambda: (
                    _ledger(work / "ledger.sqlite") == {"forwarded": 2, "skipped_deidentified": 2}
                ),
                10,
            )
    finally:
        orthanc.stop()


def _free_port(host: str) -> int:
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
