"""The review station end to end, in a real browser (Debian's chromium driven by Playwright).

A modality sends a photograph and a CT with burned-in annotation to the gateway; the photograph
is rejected by the lesion gate (the toy gate of tests/support/review.py, standing in for FlowEdit
and the lesion check through the same PixelStep contract) and the CT by the burned-in policy, both
into quarantine through the real pipeline. The station runs inside the gateway over TLS with a
self-signed certificate; the archive is Orthanc in its own network namespace.

In the browser: a viewer sees neither image nor decision (and gets 403 on the direct URLs); a
reviewer's action without the CSRF token is refused; the reviewer opens the photograph, sees the QA
panel, releases it with a reason, and it arrives in the archive — exactly the de-identified picture
the reviewer saw — while the decision shows in the audit export. Screenshots of the item pages go
to test-artifacts/review/.
"""

from __future__ import annotations

import csv
import io
import shutil
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import yaml
from PIL import Image

from dicom_io.scu import StoreTarget, send_files
from gateway.review.users import Role
from tests.conftest import run_cli
from tests.support.gateway import (
    GATEWAY_AE,
    MODALITY_AE,
    config_dict,
    destination,
    make_key_file,
    parse,
    running_node,
    wait_until,
)
from tests.support.netns import NetNamespace
from tests.support.orthanc import Orthanc, require_orthanc
from tests.support.review import (
    FAST_HASHER,
    REVIEWER,
    VIEWER,
    burned_in_ct,
    redness_mask,
    self_signed_certificate,
    set_user,
    toy_gate_registered,
    write_photo_instance,
)

pytestmark = [pytest.mark.network, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    require_orthanc()
    ns = NetNamespace.create()
    archive = Orthanc(tmp_path / "orthanc", ns)
    try:
        archive.start()
        yield archive
    finally:
        archive.stop()
        ns.destroy()


@pytest.fixture
def browser() -> Iterator[Any]:
    playwright_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists() or shutil.which("openssl") is None:
        pytest.skip("chromium and openssl are needed (scripts/install-system-deps.sh)")
    with playwright_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def _sign_in(page: Any, url: str, who: tuple[str, str]) -> None:
    page.goto(url + "/quarantine")
    page.wait_for_url("**/login?next=%2Fquarantine")
    page.fill("#username", who[0])
    page.fill("#password", who[1])
    page.click("button:has-text('Sign in')")
    page.wait_for_url("**/quarantine")


def _image_loaded(page: Any, selector: str) -> bool:
    return bool(page.eval_on_selector(selector, "img => img.complete && img.naturalWidth > 0"))


def test_reviewer_releases_a_quarantined_photograph_to_the_archive_from_the_browser(
    tmp_path: Path, orthanc: Orthanc, browser: Any, artifacts_dir: Path
) -> None:
    shots = artifacts_dir / "review"
    shots.mkdir(exist_ok=True)
    users = tmp_path / "review-users"
    # the reviewer is added with the command a site uses; the viewer through the same code
    result = run_cli(
        ["review", "add-user", str(users), REVIEWER[0], "--role", "reviewer", "--password-stdin"],
        input=REVIEWER[1] + "\n",
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert f"added {REVIEWER[0]} (reviewer)" in result.stdout
    set_user(users, VIEWER[0], Role.VIEWER, VIEWER[1], FAST_HASHER)
    cert, key = self_signed_certificate(tmp_path)
    data = config_dict(
        tmp_path / "gw",
        make_key_file(tmp_path),
        destinations={"archive": destination(orthanc.host, orthanc.dicom_port, orthanc.ae_title)},
        routes=[
            {
                "name": "photos",
                "match": {"modality": ["XC"]},
                "pixels": "flowedit",
                "destinations": ["archive"],
                # settings the real step needs; the toy gate ignores them
                "flowedit": {"model": "unused", "source_prompt": "a", "target_prompt": "b"},
            },
            {
                "name": "radiology",
                "match": {"modality": ["CT"]},
                "pixels": "quarantine_burned_in",
                "destinations": ["archive"],
            },
        ],
        review={
            "enabled": True,
            "port": 0,
            "users_file": str(users),
            "tls": {"cert_file": str(cert), "key_file": str(key)},
        },
    )
    config_file = tmp_path / "gateway.yaml"
    config_file.write_text(yaml.safe_dump(data))
    photo = write_photo_instance(tmp_path / "in" / "photo.dcm")
    burned_in_ct(tmp_path / "in" / "ct.dcm")
    with toy_gate_registered(), running_node(parse(data)) as (node, _):
        assert node.review is not None and node.storage is not None
        url = node.review.url
        assert url.startswith("https://127.0.0.1:")
        host, port = node.address  # type: ignore[misc]
        statuses = send_files(
            StoreTarget(GATEWAY_AE, host, port, MODALITY_AE),
            [tmp_path / "in" / "photo.dcm", tmp_path / "in" / "ct.dcm"],
        )
        assert statuses == [0, 0]
        quarantine = node.storage.quarantine
        assert wait_until(lambda: len(quarantine.list()) == 2, 30)
        by_reason = {row.reason: row.id for row in quarantine.list()}
        photo_id = by_reason["lesion_iou_below_threshold"]
        ct_id = by_reason["burned_in_annotation"]
        seen_deidentified = np.asarray(
            Image.open(quarantine.root / photo_id / "deidentified.png").convert("RGB")
        )
        assert orthanc.count_instances() == 0

        # --- a viewer: the list and the finding, no picture, no decision -------------------------
        viewer = browser.new_context(
            ignore_https_errors=True, viewport={"width": 1400, "height": 1000}
        )
        page = viewer.new_page()
        _sign_in(page, url, VIEWER)
        assert page.locator("a.card").count() == 2
        assert page.locator("img").count() == 0
        page.click("a.card:has-text('Lesion changed')")
        page.wait_for_url(f"**/quarantine/{photo_id}")
        assert page.locator("img").count() == 0
        assert page.locator("text=Images are shown to reviewers only").is_visible()
        assert page.locator("button:has-text('Release')").count() == 0
        token = page.locator("input[name=csrf]").first.get_attribute("value")
        for path in ("files/panel.png", "files/original.png", "thumb.png"):
            assert page.request.get(f"{url}/quarantine/{photo_id}/{path}").status == 403
        assert page.request.get(f"{url}/quarantine/{ct_id}/instance.png").status == 403
        refused = page.request.post(
            f"{url}/quarantine/{photo_id}/release", form={"csrf": token, "why": "viewer tries"}
        )
        assert refused.status == 403
        viewer.close()

        # --- a reviewer --------------------------------------------------------------------------
        context = browser.new_context(
            ignore_https_errors=True, viewport={"width": 1400, "height": 1000}
        )
        page = context.new_page()
        _sign_in(page, url, REVIEWER)
        assert page.locator("a.card").count() == 2
        assert _image_loaded(page, f"img[src='/quarantine/{photo_id}/thumb.png']")
        page.screenshot(path=str(shots / "list-reviewer.png"), full_page=True)
        # an action without the CSRF token is refused, with the session cookie and all
        no_token = page.request.post(
            f"{url}/quarantine/{photo_id}/release", form={"why": "forged request"}
        )
        assert no_token.status == 403
        assert quarantine.list()[0].state == "held"
        # the burned-in CT: the image as received, then purged with a reason
        page.goto(f"{url}/quarantine/{ct_id}")
        assert _image_loaded(page, "figure.instance img")
        page.screenshot(path=str(shots / "item-burned-in.png"), full_page=True)
        page.fill("#why", "test phantom, not needed in the archive")
        page.once("dialog", lambda dialog: dialog.accept())
        page.click("button:has-text('Purge')")
        page.wait_for_url("**/quarantine?done=purge*")
        assert not (quarantine.root / ct_id).exists()
        # the photograph: QA panel with the IoU, then release with a reason
        page.click("a.card:has-text('Lesion changed')")
        page.wait_for_url(f"**/quarantine/{photo_id}")
        assert _image_loaded(page, "figure.panel img")
        assert _image_loaded(page, "figure.kind-original img")
        assert _image_loaded(page, "figure.kind-deidentified img")
        assert "IoU 0.4" in page.inner_text(".gate-figures")
        page.screenshot(path=str(shots / "item-photograph.png"), full_page=True)
        page.fill("#why", "lesion border and colour intact in the panel; mask missed the rim")
        page.click("button:has-text('Release')")
        page.wait_for_url("**/quarantine?done=release*")
        assert page.locator(".flash").inner_text() == f"{photo_id} released."
        assert page.locator("a.card").count() == 0
        page.goto(f"{url}/status")
        page.screenshot(path=str(shots / "status.png"), full_page=True)
        context.close()

        # --- in the archive: the de-identified picture the reviewer saw --------------------------
        assert orthanc.wait_for_instances(1, timeout=60) == 1
        (instance,) = orthanc.instances()
        tags = orthanc.tags(instance)
        assert tags["PatientName"] != "TEST^IDENTIFIABLE" and tags["PatientID"] != "PID-4711"
        assert tags["StudyInstanceUID"] != str(photo.StudyInstanceUID)
        assert "DERIVED" in tags["ImageType"]
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
            f"{orthanc.url}/instances/{instance}/file", timeout=30
        ) as rsp:
            delivered = pydicom.dcmread(io.BytesIO(rsp.read())).pixel_array
        assert np.array_equal(delivered, seen_deidentified)
        assert not np.array_equal(delivered, photo.pixel_array)
        assert redness_mask(delivered).sum() < redness_mask(photo.pixel_array).sum()
        (decision,) = node.storage.journal.decisions(photo_id)
        assert decision["detail"]["by"] == REVIEWER[0] and decision["detail"]["waive_gate"]

        # --- the decision in the audit export ----------------------------------------------------
        export = run_cli(["review", "audit-export", "--config", str(config_file)], timeout=120)
        assert export.returncode == 0, export.stderr
        rows = list(csv.DictReader(io.StringIO(export.stdout)))
        decided = [(r["actor"], r["action"], r["entry"], r["why"]) for r in rows]
        assert (
            REVIEWER[0],
            "release",
            photo_id,
            "lesion border and colour intact in the panel; mask missed the rim",
        ) in decided
        assert (REVIEWER[0], "purge", ct_id, "test phantom, not needed in the archive") in decided
        views = {
            (r["actor"], r["entry"], r["detail"]) for r in rows if r["action"] == "view_original"
        }
        assert (REVIEWER[0], photo_id, '{"file": "panel.png", "kind": "panel"}') in views
        assert (REVIEWER[0], ct_id, '{"file": "instance.dcm", "kind": "instance"}') in views
        assert not any(r["actor"] == VIEWER[0] and r["action"] == "view_original" for r in rows)
        forged = [
            r for r in rows if r["action"] == "release" and r["outcome"].startswith("refused")
        ]
        assert len(forged) == 1 and forged[0]["actor"] == REVIEWER[0]
        assert "TEST^IDENTIFIABLE" not in export.stdout and "PID-4711" not in export.stdout
