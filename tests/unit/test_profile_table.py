"""The generated PS3.15 table: edition recorded, faithful to the standard's CSV, complete."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from deid_core.actions import TABLE_CODES
from deid_core.options import TABLE_COLUMNS, ProfileOption
from deid_core.standard import load_table
from tests.conftest import REPO, shared_path

GENERATED = REPO / "deid_core" / "standard" / "ps315_table.json"


def test_edition_and_size_are_recorded() -> None:
    table = load_table()
    assert table.edition == "2025e"
    assert len(table.rows) == 654
    assert table.private.basic == "X"
    assert table.private.options == {"rtn_safe_priv_opt": "C"}
    doc = json.loads(GENERATED.read_text())
    assert doc["edition"] == "2025e" and len(doc["source_sha256"]) == 64


def test_every_action_code_is_known_and_every_option_has_a_column() -> None:
    table = load_table()
    columns = set(TABLE_COLUMNS.values())
    for row in table.rows:
        assert row.basic in TABLE_CODES, row
        for column, code in row.options.items():
            assert column in columns and code in TABLE_CODES, row
    # The ten table options each change at least one attribute.
    for option in TABLE_COLUMNS:
        assert any(row.option_action(option) for row in (*table.rows, table.private)), option
    assert ProfileOption.CLEAN_PIXEL_DATA not in TABLE_COLUMNS


def test_lookup_handles_repeating_groups() -> None:
    table = load_table()
    assert table.lookup(0x60023000).name == "Overlay Data"  # type: ignore[union-attr]
    assert table.lookup(0x601E4000).name == "Overlay Comments"  # type: ignore[union-attr]
    assert table.lookup(0x50100010).name == "Curve Data"  # type: ignore[union-attr]
    assert table.lookup(0x60033000) is None  # odd group: private, not an overlay
    assert table.lookup(0x00100010).name == "Patient's Name"  # type: ignore[union-attr]


@pytest.mark.needs_shared
def test_generated_table_matches_the_standard_csv(tmp_path: Path) -> None:
    source = shared_path("standard", "ps3.15_2025e_table_E.1-1.csv")
    out = tmp_path / "table.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "tools" / "gen_ps315_table.py"),
            str(source),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    # Regenerating from the CSV gives exactly the committed file.
    assert out.read_text() == GENERATED.read_text()
    # And the committed file says what the CSV says, row by row.
    with source.open(newline="") as fh:
        rows = {r["tag"]: r for r in csv.DictReader(fh)}
    table = load_table()
    assert len(rows) == len(table.rows) + 1
    for row in table.rows:
        rec = rows[row.tag]
        assert rec["attribute_name"] == row.name
        assert rec["basic_profile"] == row.basic
        for option, column in TABLE_COLUMNS.items():
            assert (rec[column] or None) == row.option_action(option), (row.tag, column)
