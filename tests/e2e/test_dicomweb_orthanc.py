"""Forwarding by STOW-RS to Orthanc's DICOMweb plugin, with HTTP basic authentication on.

A PHI-planted study sent to the gateway by C-STORE arrives in Orthanc de-identified, through the
DICOMweb destination (password from a file), holding none of the planted values. A second
destination with a wrong password gets Orthanc's real 401: dead-lettered after two attempts with
the reason, never retried for the full policy.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from dicom_io.scu import StoreTarget, send_files
from gateway.events import ForwardFailed
from tests.support.gateway import (
    GATEWAY_AE,
    MODALITY_AE,
    config_dict,
    make_key_file,
    parse,
    running_node,
    wait_until,
)
from tests.support.netns import NetNamespace
from tests.support.orthanc import Orthanc, require_orthanc, require_plugins
from tests.support.phi import write_planted_study

pytestmark = [pytest.mark.network, pytest.mark.slow]


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    require_orthanc()
    require_plugins("dicomweb")
    ns = NetNamespace.create()
    archive = Orthanc(
        tmp_path / "orthanc", ns, plugins=("dicomweb",), users={"gateway": "archive-pw-42"}
    )
    try:
        archive.start()
        yield archive
    finally:
        archive.stop()
        ns.destroy()


def test_stow_rs_forward_to_orthanc_is_delivered_de_identified(
    tmp_path: Path, orthanc: Orthanc
) -> None:
    good, bad = tmp_path / "good.pw", tmp_path / "bad.pw"
    good.write_text("archive-pw-42\n")
    bad.write_text("not-the-password\n")

    def web(password: Path) -> dict[str, object]:
        return {
            "type": "dicomweb",
            "url": orthanc.url + "/dicom-web",
            "allow_plain_http": True,  # a link-local test network
            "auth": {"type": "basic", "username": "gateway", "password": {"file": str(password)}},
            "retry": {"initial_delay_s": 0.2, "max_delay_s": 1, "max_attempts": 20},
        }

    data = config_dict(
        tmp_path / "gw",
        make_key_file(tmp_path),
        destinations={"archive": web(good), "wrong": web(bad)},
        routes=[
            {"name": "ct", "match": {"modality": ["CT"]}, "destinations": ["archive"]},
            {"name": "mr", "match": {"modality": ["MR"]}, "destinations": ["wrong"]},
        ],
    )
    study = write_planted_study(tmp_path / "in", "WEB", 3)
    refused = write_planted_study(tmp_path / "in", "WRONGPW", 1, modality="MR")
    with running_node(parse(data)) as (node, events):
        target = StoreTarget(GATEWAY_AE, *node.address, MODALITY_AE)  # type: ignore[misc]
        assert send_files(target, study.files + refused.files) == [0] * 4
        assert orthanc.wait_for_instances(3, 60) == 3
        assert wait_until(lambda: node.backlog().journal_states["forwarded"] == 3, 30)
        quarantine = node.storage.quarantine  # type: ignore[union-attr]
        assert wait_until(lambda: len(quarantine.list()) == 1, 30)
        entry = quarantine.show(quarantine.list()[0].id)
        assert entry.row.destination == "wrong"
        assert entry.details["attempts"] == 2
        assert "rejected our credentials (HTTP 401)" in entry.details["last_error"]
        # the event follows the dead letter: wait for it
        assert wait_until(
            lambda: len([f for f in events.of(ForwardFailed) if f.destination == "wrong"]) == 2,
            10,
        )
        wrong = [f for f in events.of(ForwardFailed) if f.destination == "wrong"]
        assert [(f.reason, f.will_retry) for f in wrong] == [("auth", True), ("auth", False)]
    originals = {str(pydicom.dcmread(f).SOPInstanceUID) for f in study.files}
    for instance in orthanc.instances():
        data_bytes = orthanc.file(instance)
        assert [n for n in study.needles if n.encode() in data_bytes] == []
        ds = pydicom.dcmread(io.BytesIO(data_bytes))
        assert ds.SOPInstanceUID not in originals
        assert ds.PatientIdentityRemoved == "YES"
    assert orthanc.count_studies() == 1
