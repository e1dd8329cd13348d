"""Pieces of `deid-gateway evaluate` that need no subprocess: defaults, the report folder rules,
the route check."""

from __future__ import annotations

from pathlib import Path

import pytest

from deid_core.errors import ConfigError, InvalidInputError
from deid_core.evaluation import DEFAULT_BASELINES
from gateway.commands import evaluate as evaluate_command
from gateway.config import parse_config
from gateway.evaluation_report import FILES


def test_defaults_repeated_for_a_fast_start_match_the_engines() -> None:
    from deid_core.lesion import DEFAULT_HEALTHY_PROMPT, DEFAULT_LESION_PROMPT

    assert ",".join(DEFAULT_BASELINES) == evaluate_command.DEFAULT_BASELINES
    assert evaluate_command.DEFAULT_LESION_PROMPT == DEFAULT_LESION_PROMPT
    assert evaluate_command.DEFAULT_HEALTHY_PROMPT == DEFAULT_HEALTHY_PROMPT


def test_report_folder_rules(tmp_path: Path) -> None:
    """A report may be written into a new or empty folder or over an earlier report, never among
    other files (they could be anything of the site's)."""
    report = tmp_path / "report"
    evaluate_command._check_report_dir(report)
    report.mkdir()
    for name in FILES:
        (report / name).write_text("earlier report")
    evaluate_command._check_report_dir(report)
    (report / "mine.txt").write_text("keep me")
    with pytest.raises(InvalidInputError, match="holds other files"):
        evaluate_command._check_report_dir(report)


def test_route_must_exist_and_edit_photographs(key_file: Path, tmp_path: Path) -> None:
    """`--route` names a route of the YAML; its `flowedit` section is what gets evaluated."""
    cfg = parse_config(
        {
            "project": {"key": {"file": str(key_file)}},
            "destinations": {"archive": {"ae_title": "ARCHIVE", "host": "127.0.0.1", "port": 104}},
            "routes": [
                {"name": "radiology", "destinations": ["archive"]},
                {
                    "name": "photos",
                    "pixels": "flowedit",
                    "destinations": ["archive"],
                    "flowedit": {
                        "model": str(tmp_path / "model"),
                        "source_prompt": "a photo of a person",
                        "target_prompt": "a photo of another person",
                        "params": {"n_max": 24},
                        "gate": {"method": "synthesis_free", "threshold": 0.5},
                    },
                },
            ],
        }
    )
    config = tmp_path / "site.yaml"
    with pytest.raises(ConfigError, match=r"no such route .*routes: radiology, photos"):
        evaluate_command._route_flowedit(cfg, config, "derm")
    with pytest.raises(ConfigError, match="pixel step is 'none'"):
        evaluate_command._route_flowedit(cfg, config, "radiology")
    chosen = evaluate_command._route_flowedit(cfg, config, "photos")
    assert chosen.model == tmp_path / "model"
    assert chosen.source_prompt == "a photo of a person"
    assert chosen.params == {"n_max": 24}
    assert chosen.gate.threshold == 0.5
