"""Review station records and figures: the audit trail and its CSV, the `review:` configuration
section, decisions per reason, status figures from the journal, the SVG charts."""

from __future__ import annotations

import csv
import io
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from deid_core.errors import ConfigError
from gateway.config import GatewayConfig
from gateway.events import QuarantineReason
from gateway.journal import Journal, QuarantineRow
from gateway.review import charts
from gateway.review.audit import (
    CSV_COLUMNS,
    AuditAction,
    AuditTrail,
    audit_csv,
    read_audit,
    utc_text,
)
from gateway.review.decisions import choices_for
from gateway.review.reader import JournalReader
from gateway.review.status import read_status
from tests.support.gateway import config_dict, parse


def test_audit_rows_are_kept_in_the_journal_and_read_back_in_order(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.sqlite")
    trail = AuditTrail(journal)
    AuditTrail(journal)  # creating the table twice is harmless
    trail.record("rita", "reviewer", AuditAction.LOGIN, at=1000.0)
    trail.record(
        "rita",
        "reviewer",
        AuditAction.VIEW_ORIGINAL,
        entry_id="q-0123456789abcdef",
        detail={"file": "panel.png"},
        at=1001.0,
    )
    trail.record(
        "rita",
        "reviewer",
        AuditAction.RELEASE,
        entry_id="q-0123456789abcdef",
        why="lesion border intact",
        outcome="sent back to the pipeline",
        at=1002.0,
    )
    journal.close()
    reader = JournalReader(tmp_path / "journal.sqlite")
    rows = read_audit(reader)
    assert [r.action for r in rows] == ["login", "view_original", "release"]
    assert rows[1].detail == {"file": "panel.png"}
    assert rows[2].why == "lesion border intact"
    assert [r.action for r in read_audit(reader, since=1001.0, until=1002.0)] == ["view_original"]
    assert len(read_audit(reader, entry_id="q-0123456789abcdef")) == 2
    assert read_audit(reader, newest_first=True, limit=1)[0].action == "release"


def test_audit_csv_has_one_row_per_record_with_utc_times(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.sqlite")
    trail = AuditTrail(journal)
    at = 1_790_000_000.25
    trail.record("rita", "reviewer", AuditAction.PURGE, entry_id="q-1", why="duplicate", at=at)
    trail.record("(unknown)", "", AuditAction.LOGIN_FAILED, outcome="refused", at=at + 1)
    journal.close()
    text = audit_csv(read_audit(JournalReader(tmp_path / "journal.sqlite")))
    rows = list(csv.reader(io.StringIO(text)))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert rows[1] == [utc_text(at), "rita", "reviewer", "purge", "q-1", "ok", "duplicate", ""]
    assert rows[1][0] == "2026-09-21T14:13:20.250Z"
    assert rows[2][3] == "login_failed" and rows[2][5] == "refused"


@pytest.mark.parametrize("text", ['=HYPERLINK("http://x")', "+1+1", "-2", "@SUM(A1)", "\tx"])
def test_audit_csv_defuses_spreadsheet_formulas_in_free_text(text: str) -> None:
    from gateway.review.audit import AuditRecord

    record = AuditRecord(0.0, "rita", "reviewer", "release", "q-1", text, "ok", {})
    row = list(csv.reader(io.StringIO(audit_csv([record]))))[1]
    assert row[6] == "'" + text
    assert not row[6].startswith(("=", "+", "-", "@", "\t"))


def test_audit_read_on_a_journal_without_the_table_is_empty(tmp_path: Path) -> None:
    Journal(tmp_path / "j.sqlite").close()
    assert read_audit(JournalReader(tmp_path / "j.sqlite")) == []
    assert read_audit(JournalReader(tmp_path / "missing.sqlite")) == []


# --- configuration -------------------------------------------------------------------------------


def _cfg(tmp_path: Path, review: dict[str, object]) -> GatewayConfig:
    return parse(config_dict(tmp_path, tmp_path / "key", review=review))


def test_review_is_off_by_default_and_on_loopback(tmp_path: Path) -> None:
    cfg = parse(config_dict(tmp_path, tmp_path / "key"))
    assert cfg.review.enabled is False
    assert cfg.review.address == "127.0.0.1"
    assert cfg.review.auth == "password_file"
    assert cfg.review.session_lifetime_s == 3600


def test_review_needs_tls_beyond_loopback(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"review: .*tls .* is required"):
        _cfg(tmp_path, {"enabled": True, "address": "0.0.0.0"})
    ok = _cfg(
        tmp_path,
        {"enabled": True, "address": "0.0.0.0", "tls": {"cert_file": "c", "key_file": "k"}},
    )
    assert ok.review.tls is not None
    assert _cfg(tmp_path, {"enabled": True, "address": "::1"}).review.loopback_only
    # disabled, nothing is checked beyond the types
    assert not _cfg(tmp_path, {"address": "0.0.0.0"}).review.enabled


def test_trusted_header_mode_needs_valid_proxy_addresses(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="trusted_header section"):
        _cfg(tmp_path, {"auth": "trusted_header"})
    with pytest.raises(ConfigError, match=r"review.trusted_header.proxies: .*not an IP"):
        _cfg(tmp_path, {"auth": "trusted_header", "trusted_header": {"proxies": ["proxy"]}})
    with pytest.raises(ConfigError, match=r"review.trusted_header.proxies"):
        _cfg(tmp_path, {"auth": "trusted_header", "trusted_header": {"proxies": []}})
    cfg = _cfg(tmp_path, {"auth": "trusted_header", "trusted_header": {"proxies": ["10.0.0.0/8"]}})
    assert cfg.review.trusted_header is not None
    assert cfg.review.trusted_header.user_header == "X-Forwarded-User"


def test_unknown_review_keys_and_bad_values_name_their_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"review.sesion_lifetime_s: unknown key"):
        _cfg(tmp_path, {"sesion_lifetime_s": 10})
    with pytest.raises(ConfigError, match=r"review.session_lifetime_s"):
        _cfg(tmp_path, {"session_lifetime_s": 5})
    with pytest.raises(ConfigError, match=r"review.auth"):
        _cfg(tmp_path, {"auth": "ldap"})


def test_the_default_config_keeps_review_off(tmp_path: Path) -> None:
    from gateway.config import load_config
    from tests.conftest import REPO

    cfg = load_config(REPO / "gateway/defaults/gateway.yaml")
    assert cfg.review.enabled is False


# --- decisions per reason ------------------------------------------------------------------------


def _row(reason: QuarantineReason) -> QuarantineRow:
    return QuarantineRow("q-0", 1, reason.value, "r", "archive", "k", "held", 0.0)


def test_each_reason_offers_the_decisions_that_make_sense() -> None:
    dead = choices_for(_row(QuarantineReason.DEAD_LETTER))
    assert dead.release and "archive" in dead.release and dead.rerun is None
    burned = choices_for(_row(QuarantineReason.BURNED_IN_ANNOTATION))
    assert burned.release and "pixels are sent as they are" in burned.release and burned.rerun
    # the same finding on a route that edits photographs: no release of unedited pixels offered
    for reason in (QuarantineReason.BURNED_IN_ANNOTATION, QuarantineReason.BURNED_IN_UNKNOWN):
        on_photos = choices_for(_row(reason), {"r": "flowedit"})
        assert on_photos.release is None and on_photos.rerun
        assert "cannot leave unedited" in on_photos.release_unavailable
        assert choices_for(_row(reason), {"r": "quarantine_burned_in"}).release
    for lesion in (
        QuarantineReason.LESION_IOU_BELOW_THRESHOLD,
        QuarantineReason.LESION_VANISHED,
        QuarantineReason.LESION_MASK_UNRELIABLE,
    ):
        choice = choices_for(_row(lesion))
        assert choice.release and "edited again" in choice.release
    no_route = choices_for(_row(QuarantineReason.NO_ROUTE))
    assert no_route.release is None and no_route.rerun_needs_route
    for reason in (
        QuarantineReason.DEIDENTIFICATION_FAILED,
        QuarantineReason.PIXEL_STEP_FAILED,
        QuarantineReason.UNREADABLE,
    ):
        choice = choices_for(_row(reason))
        assert choice.release is None and choice.release_unavailable and choice.rerun


# --- status figures ------------------------------------------------------------------------------


def test_status_counts_come_from_the_journal_in_hour_buckets(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.sqlite")
    now = time.time()
    hour = 3600.0
    # three instances two hours ago: one forwarded an hour later, one quarantined, one waiting
    ids = [
        journal.add_received(f"s/{i}.dcm", "study", received_at=now - 2 * hour) for i in range(3)
    ]
    journal.mark_queued(ids[0], "all", [("archive", "archive/study/a.dcm")], "study")
    (out,) = [r.id for r in journal.next_batch("archive", time.time() + 1, 10)]
    journal.mark_sent([out])
    journal.finished_instances([ids[0]])
    journal.mark_quarantined(ids[1], "q-1", "burned_in_annotation", "all", "study")
    journal.close()
    report = read_status(JournalReader(tmp_path / "journal.sqlite"), hours=24, now=now)
    assert len(report.bucket_starts) == 24
    assert report.bucket_starts[0] <= now - 23 * hour
    assert sum(report.received) == 3
    assert report.received[-3] == 3  # two hours ago, in 1 h buckets ending at the current hour
    assert sum(report.delivered) == 1 and report.delivered[-1] == 1
    assert report.rejections == {"burned_in_annotation": [0] * 23 + [1]}
    assert report.rejection_share == {"burned_in_annotation": pytest.approx(1 / 3)}
    assert report.backlog[-3] == 3 and report.backlog[-1] == 1
    assert report.states_now == {"received": 1, "queued": 0, "forwarded": 1, "quarantined": 1}
    assert report.held_now == {"burned_in_annotation": 1}
    assert report.outbox_now == {}


def test_status_of_an_empty_or_missing_journal_is_all_zero(tmp_path: Path) -> None:
    report = read_status(JournalReader(tmp_path / "none.sqlite"), hours=6)
    assert len(report.received) == 24 and not any(report.received)
    assert report.totals == {"received": 0, "delivered": 0, "quarantined": 0}


# --- charts --------------------------------------------------------------------------------------


def test_charts_are_well_formed_svg_with_their_numbers_for_screen_readers() -> None:
    labels = ["00:00", "01:00", "02:00"]
    svg = charts.bar_chart("Quarantined", labels, {"a <b>": [1, 0, 2], "c": [0, 0, 3]})
    root = ET.fromstring(svg)
    ns = "{http://www.w3.org/2000/svg}"
    bars = root.findall(f"{ns}rect[@class='bar']")
    assert len(bars) == 3  # zero-height segments are not drawn
    assert "a <b>: 00:00 1, 01:00 0, 02:00 2" in (root.findtext(f"{ns}desc") or "")
    # bar heights are proportional to their values (1, 2, 3 on an axis to 6)
    heights = sorted(float(b.get("height", 0)) for b in bars)
    assert heights[1] == pytest.approx(2 * heights[0], rel=0.01)
    assert heights[2] == pytest.approx(3 * heights[0], rel=0.01)
    line = ET.fromstring(charts.line_chart("T", labels, {"received": [0, 4, 10]}))
    assert len(line.findall(f"{ns}polyline")) == 1
    assert len(line.findall(f"{ns}circle")) == 3
    assert "<script" not in svg and "style=" not in svg


@pytest.mark.parametrize(
    ("value", "top", "step"),
    [(0, 1, 1), (1, 1, 1), (2, 2, 1), (3, 3, 1), (5, 6, 2), (7, 8, 2), (11, 15, 5), (240, 300, 100),
     (999, 1000, 500), (0.4, 1, 1)],
)  # fmt: skip
def test_count_axes_have_whole_round_steps(value: float, top: float, step: float) -> None:
    assert charts.axis(value) == (top, step)
    assert top >= value and top / step <= 4
