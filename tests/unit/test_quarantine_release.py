"""Releases from quarantine that could let unedited pixels out are refused: accept-pixels outside
burned-in entries or for a photograph on a flowedit route, and a re-run onto a weaker pixel step
without --force; through the quarantine API, the CLI and the review station alike."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from starlette.testclient import TestClient

from gateway.events import QuarantineReason
from gateway.node import Storage
from gateway.quarantine import QuarantineError
from gateway.review.station import ReviewStation
from tests.conftest import run_cli
from tests.support.gateway import config_dict, destination, make_key_file, parse
from tests.support.review import REVIEWER, burned_in_ct, write_photo_instance, write_users

CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def _config_data(tmp_path: Path) -> dict[str, Any]:
    return config_dict(
        tmp_path / "gw",
        make_key_file(tmp_path),
        destinations={"archive": destination("127.0.0.1", 4242, "ARCHIVE")},
        routes=[
            {
                "name": "photos",
                "match": {"modality": ["XC"]},
                "pixels": "flowedit",
                "destinations": ["archive"],
                "flowedit": {
                    "model": str(tmp_path / "model"),
                    "source_prompt": "a photograph of a patient's skin",
                    "target_prompt": "a photograph of another person's skin",
                },
            },
            {
                "name": "radiology",
                "match": {"modality": ["CT"]},
                "pixels": "quarantine_burned_in",
                "destinations": ["archive"],
            },
            {"name": "plain", "match": {"modality": ["OT"]}, "destinations": ["archive"]},
        ],
        review={"enabled": True, "port": 0, "users_file": str(write_users(tmp_path / "users"))},
    )


class Entries:
    def __init__(self, tmp_path: Path) -> None:
        self.data = _config_data(tmp_path)
        self.config_file = tmp_path / "gateway.yaml"
        self.config_file.write_text(yaml.safe_dump(self.data), encoding="utf-8")
        self.cfg = parse(self.data)
        self.storage = Storage.open(self.cfg)
        q, j = self.storage.quarantine, self.storage.journal
        write_photo_instance(tmp_path / "photo.dcm")
        photo = (tmp_path / "photo.dcm").read_bytes()

        def put(n: int, data: bytes, reason: QuarantineReason, route: str) -> str:
            return q.put(
                instance_id=j.add_received(f"a/{n}.dcm", f"{n}" * 64),
                data=data,
                reason=reason,
                route=route,
                study_key=f"{n}" * 64,
            )

        self.lesion = put(1, photo, QuarantineReason.LESION_IOU_BELOW_THRESHOLD, "photos")
        self.ct = put(2, burned_in_ct(tmp_path / "ct.dcm"), QuarantineReason.BURNED_IN_ANNOTATION,
                      "radiology")  # fmt: skip
        self.photo_burned_in = put(3, photo, QuarantineReason.BURNED_IN_UNKNOWN, "photos")
        self.failed = put(4, photo, QuarantineReason.PIXEL_STEP_FAILED, "photos")

    def release(self, entry: str, **kw: Any) -> str:
        s = self.storage
        return s.quarantine.release(entry, spool=s.spool, outbox=s.outbox, **kw)

    def state(self, entry: str) -> str:
        row = self.storage.journal.quarantine_entry(entry)
        assert row is not None
        return row.state


@pytest.fixture
def entries(tmp_path: Path) -> Iterator[Entries]:
    e = Entries(tmp_path)
    yield e
    e.storage.close()


@pytest.mark.parametrize("which", ["lesion", "failed"])
def test_accept_pixels_is_refused_outside_burned_in_entries(entries: Entries, which: str) -> None:
    entry = getattr(entries, which)
    with pytest.raises(QuarantineError, match="only for entries quarantined for burned-in"):
        entries.release(entry, accept_pixels=True)
    assert entries.state(entry) == "held"
    assert entries.storage.journal.state_counts()["received"] == 0  # nothing new spooled


def test_accept_pixels_is_refused_for_a_photograph_on_a_flowedit_route(entries: Entries) -> None:
    with pytest.raises(QuarantineError, match="photograph on route photos"):
        entries.release(entries.photo_burned_in, accept_pixels=True)
    # nor by moving it off its flowedit route without force
    with pytest.raises(QuarantineError, match="weaker pixel step"):
        entries.release(entries.photo_burned_in, accept_pixels=True, route="radiology")
    assert entries.state(entries.photo_burned_in) == "held"


@pytest.mark.parametrize("which", ["ct", "failed", "photo_burned_in"])
def test_waive_gate_is_refused_outside_lesion_gate_rejections(entries: Entries, which: str) -> None:
    entry = getattr(entries, which)
    with pytest.raises(QuarantineError, match="waive-gate is only for lesion-gate rejections"):
        entries.release(entry, waive_gate=True)
    assert entries.state(entry) == "held"
    entries.release(entries.lesion, waive_gate=True)
    assert entries.state(entries.lesion) == "released"


def test_accept_pixels_for_a_burned_in_ct_is_allowed(entries: Entries) -> None:
    entries.release(entries.ct, accept_pixels=True)
    assert entries.state(entries.ct) == "released"


def test_rerun_onto_a_weaker_pixel_step_needs_force(entries: Entries) -> None:
    for weaker in ("plain", "radiology"):
        with pytest.raises(QuarantineError, match=f"route {weaker} does a weaker pixel step"):
            entries.release(entries.lesion, route=weaker)
    assert entries.state(entries.lesion) == "held"
    entries.release(entries.lesion, route="plain", force=True)
    assert entries.state(entries.lesion) == "released"
    [decision] = entries.storage.journal.decisions(entries.lesion)
    assert decision["detail"]["force"] is True


def test_rerun_onto_the_same_or_a_stronger_step_needs_no_force(entries: Entries) -> None:
    entries.release(entries.lesion, route="photos")
    entries.release(entries.ct, route="photos")  # quarantine_burned_in -> flowedit: stronger
    assert entries.state(entries.lesion) == entries.state(entries.ct) == "released"


def test_cli_refuses_accept_pixels_and_an_unforced_weaker_route(entries: Entries) -> None:
    cfg = ["--config", str(entries.config_file)]
    entries.storage.close()
    refused = run_cli(["quarantine", "release", entries.lesion, "--accept-pixels", *cfg])
    assert refused.returncode != 0
    assert "only for entries quarantined for burned-in" in refused.stdout + refused.stderr
    weaker = run_cli(["quarantine", "release", entries.lesion, "--route", "plain", *cfg])
    assert weaker.returncode != 0 and "--force" in weaker.stdout + weaker.stderr
    forced = run_cli(["quarantine", "release", entries.lesion, "--route", "plain", "--force", *cfg])
    assert forced.returncode == 0, forced.stderr
    entries.storage = Storage.open(entries.cfg)
    assert entries.state(entries.lesion) == "released"


def test_review_station_refuses_a_rerun_onto_a_weaker_route(entries: Entries) -> None:
    station = ReviewStation(entries.cfg, entries.storage)
    client = TestClient(station.app, follow_redirects=False)
    form = client.get("/login")
    token = CSRF.search(form.text)
    assert token is not None
    login = {"csrf": token.group(1), "username": REVIEWER[0], "password": REVIEWER[1]}
    assert client.post("/login", data=login).status_code == 303
    match = CSRF.search(client.get("/quarantine").text)
    assert match is not None
    # the page offers no weaker route for the photograph's re-run
    page = client.get(f"/quarantine/{entries.lesion}").text
    assert '<option value="photos">' in page and '<option value="plain">' not in page
    ct_page = client.get(f"/quarantine/{entries.ct}").text  # quarantine_burned_in: plain is weaker
    assert '<option value="photos">' in ct_page and '<option value="radiology">' in ct_page
    assert '<option value="plain">' not in ct_page
    response = client.post(
        f"/quarantine/{entries.lesion}/rerun",
        data={"csrf": match.group(1), "why": "try without the edit", "route": "plain"},
    )
    assert response.status_code == 400
    assert "weaker pixel step" in response.text
    assert entries.state(entries.lesion) == "held"
    # releasing a burned-in photograph of a flowedit route would accept its pixels: not offered,
    # and refused when posted anyway
    photo_page = client.get(f"/quarantine/{entries.photo_burned_in}").text
    assert "cannot leave unedited" in photo_page and ">Release</button>" not in photo_page
    assert ">Release</button>" in ct_page
    response = client.post(
        f"/quarantine/{entries.photo_burned_in}/release",
        data={"csrf": match.group(1), "why": "no text in the picture"},
    )
    assert response.status_code == 400
    assert "requires the generative edit" in response.text
    assert entries.state(entries.photo_burned_in) == "held"
    # the same page still releases the lesion entry by waiving the gate (no accept-pixels)
    response = client.post(
        f"/quarantine/{entries.lesion}/release",
        data={"csrf": match.group(1), "why": "lesion border intact in the panel"},
    )
    assert response.status_code == 303
    [waiting] = [r for r in entries.storage.journal.received_in_study("1" * 64) if r.override]
    assert waiting.override == {"released_from": entries.lesion, "waive_gate": True}


def test_a_decided_entry_whose_files_outlived_a_crash_is_shredded_on_start(
    entries: Entries,
) -> None:
    """The decision is recorded before the folder is shredded; a crash in between must not leave
    the original (PHI) in a released entry's folder for ever."""
    q, journal = entries.storage.quarantine, entries.storage.journal
    kept = q.root / entries.ct
    held = q.root / entries.lesion
    assert kept.is_dir() and held.is_dir()
    # the state a crash between close_quarantine_entry and _shred leaves behind
    journal.close_quarantine_entry(entries.ct, "released", "release", {"note": "crash test"})
    assert kept.is_dir()
    assert q.remove_orphans() == 1
    assert not kept.exists()
    assert held.is_dir() and any(held.iterdir())  # undecided entries keep everything
    assert entries.state(entries.lesion) == "held"
