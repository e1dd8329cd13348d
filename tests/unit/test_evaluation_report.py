"""The report folder: every file is written, and the page, the JSON and the CSV carry the same
figures (parsed back, not string-searched)."""

from __future__ import annotations

import csv
import dataclasses
import html
import json
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from deid_core.evaluation import (
    DEIDENTIFICATION,
    EvaluationResult,
    EvaluationSettings,
    Method,
    Photo,
    ThresholdJudge,
    baseline,
    evaluate,
)
from gateway.evaluation_report import FILES, TEST_MODEL_WARNING, RunInfo, write_report
from tests.support.evaluation_photos import random_images, redness_mask, skin_photo

IDENTIFYING_NAME = "DOE^JOHN_1970-01-01.png"


def _result(test_model: bool = True) -> EvaluationResult:
    photos = []
    for seed in range(6):
        image, lesion = skin_photo(seed, 96, 112)
        photos.append(Photo(f"p{seed + 1:04d}", image, seed, lesion if seed % 2 else None))
    methods = [
        baseline("none"),
        baseline("blur:0.04"),
        Method("edit", DEIDENTIFICATION, random_images, {"prompt": "x"}, test_model=test_model),
    ]
    return evaluate(photos, methods, ThresholdJudge(redness_mask), EvaluationSettings(examples=2))


def _info(result: EvaluationResult) -> RunInfo:
    return RunInfo(
        photos="photos",
        masks="masks",
        created="2026-11-30T00:00:00+00:00",
        command=["deid-gateway", "evaluate", "photos"],
        config={"baselines": ["none", "blur:0.04"]},
        models={"edit": {"name": "tiny", "is_test_model": True}},
        key_fingerprint="abc123def456",
        versions={"deid-gateway": "0.1.0"},
        sources=[(p.photo, IDENTIFYING_NAME if i == 0 else f"x{i}.png")
                 for i, p in enumerate(result.photos)],
    )  # fmt: skip


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, EvaluationResult]:
    result = _result()
    directory = tmp_path_factory.mktemp("report")
    write_report(result, _info(result), directory)
    return directory, result


class _Cells(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.cells: dict[tuple[str, str], str] = {}
        self.run: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if "data-figure" in a and "data-value" in a:
            value = a["data-value"] or ""
            if "data-method" in a:
                self.cells[(a["data-method"] or "", a["data-figure"] or "")] = value
            else:
                self.run[a["data-figure"] or ""] = value


def _csv(directory: Path) -> list[dict[str, str]]:
    with (directory / "figures.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def _same(csv_text: str, json_value: object) -> bool:
    if json_value is None:
        return csv_text == ""
    if isinstance(json_value, bool):
        return csv_text == ("true" if json_value else "false")
    if isinstance(json_value, int | float):
        return float(csv_text) == float(json_value)
    return csv_text == str(json_value)


def test_every_file_is_written(report: tuple[Path, EvaluationResult]) -> None:
    directory, _ = report
    for name in FILES:
        assert (directory / name).stat().st_size > 0, name
    for name in FILES:
        if name.endswith(".png"):
            with Image.open(directory / name) as im:
                assert im.format == "PNG" and im.width > 300


def test_page_figures_match_the_csv(report: tuple[Path, EvaluationResult]) -> None:
    directory, result = report
    parser = _Cells()
    parser.feed((directory / "index.html").read_text())
    rows = _csv(directory)
    by_key = {(r["method"], r["figure"]): r["value"] for r in rows if r["scope"] == "method"}
    assert len(parser.cells) >= len(result.methods) * 20
    for key, value in parser.cells.items():
        assert by_key[key] == value, key
    run = {r["figure"]: r["value"] for r in rows if r["scope"] == "run"}
    assert parser.run["mask_vs_expert_iou_median"] == run["mask_vs_expert_iou_median"]
    # the page shows the figures themselves: the headline of "none" is 100 %
    assert by_key[("none", "reid_top1")] == "1.0"


def test_json_figures_match_the_csv(report: tuple[Path, EvaluationResult]) -> None:
    directory, result = report
    doc = json.loads(
        (directory / "figures.json").read_text(),
        parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"),
    )
    rows = _csv(directory)
    method_rows = {(r["method"], r["figure"]): r["value"] for r in rows if r["scope"] == "method"}
    compared = 0
    for method in doc["methods"]:
        for figure, value in method["figures"].items():
            assert _same(method_rows[(method["name"], figure)], value), (method["name"], figure)
            compared += 1
    assert compared == len(method_rows)
    image_rows = {
        (r["method"], r["photo"], r["figure"]): r["value"] for r in rows if r["scope"] == "image"
    }
    for image in doc["images"]:
        for figure, value in image.items():
            if figure in ("photo", "method"):
                continue
            assert _same(image_rows[(image["method"], image["photo"], figure)], value)
    assert len(doc["images"]) == len(result.images) == 18
    run_rows = {r["figure"]: r["value"] for r in rows if r["scope"] == "run"}
    assert all(_same(run_rows[k], v) for k, v in doc["run"].items())


def test_report_records_model_key_settings_and_versions(
    report: tuple[Path, EvaluationResult],
) -> None:
    directory, _ = report
    doc = json.loads((directory / "figures.json").read_text())
    assert doc["test_model"] is True
    assert doc["models"]["edit"]["is_test_model"] is True
    assert doc["key_fingerprint"] == "abc123def456"
    assert doc["config"] == {"baselines": ["none", "blur:0.04"]}
    assert doc["versions"]["deid-gateway"] == "0.1.0"
    assert doc["gate"]["threshold"] == 0.67
    assert [m["name"] for m in doc["methods"]] == ["none", "blur 4%", "edit"]
    assert doc["methods"][2]["params"] == {"prompt": "x"}
    page = (directory / "index.html").read_text()
    assert html.escape(TEST_MODEL_WARNING) in page and "abc123def456" in page


def test_file_names_appear_only_in_the_photo_index(report: tuple[Path, EvaluationResult]) -> None:
    directory, _ = report
    for name in ("figures.csv", "figures.json", "index.html"):
        assert "DOE" not in (directory / name).read_text(), name
    assert IDENTIFYING_NAME in (directory / "photos.csv").read_text()


def test_no_test_model_warning_without_a_test_model(
    report: tuple[Path, EvaluationResult], tmp_path: Path
) -> None:
    _, tested = report
    methods = [dataclasses.replace(m, test_model=False) for m in tested.methods]
    result = dataclasses.replace(tested, methods=methods)
    write_report(result, _info(result), tmp_path)
    assert html.escape(TEST_MODEL_WARNING) not in (tmp_path / "index.html").read_text()
    assert json.loads((tmp_path / "figures.json").read_text())["test_model"] is False
