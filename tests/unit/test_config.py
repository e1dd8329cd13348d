from __future__ import annotations

from pathlib import Path

import pytest

from deid_core.errors import ConfigError
from deid_core.keys import MIN_KEY_LENGTH, ProjectKey
from gateway.config import load_config, parse_config
from tests.conftest import REPO, run_cli


def _base(key_file: Path) -> dict:
    return {"version": 1, "project": {"key": {"file": str(key_file)}}}


def test_default_config_is_valid() -> None:
    cfg = load_config(REPO / "gateway/defaults/gateway.yaml")
    assert cfg.project.key.file == Path("var/project.key")
    assert "default" in cfg.profiles


def test_unknown_key_is_rejected_with_its_path(key_file: Path) -> None:
    data = _base(key_file)
    data["profiles"] = {"research": {"options": ["clean_descriptors"], "colour": "red"}}
    with pytest.raises(ConfigError) as info:
        parse_config(data, "site.yaml")
    message = str(info.value)
    assert "site.yaml" in message
    assert "profiles.research.colour: unknown key" in message


def test_unknown_top_level_key_is_rejected(key_file: Path) -> None:
    data = _base(key_file)
    data["projcet"] = {}
    with pytest.raises(ConfigError, match=r"projcet: unknown key"):
        parse_config(data)


def test_bad_option_names_the_list_index(key_file: Path) -> None:
    data = _base(key_file)
    data["profiles"] = {"p": {"options": ["clean_descriptors", "retain_everything"]}}
    with pytest.raises(ConfigError, match=r"profiles\.p\.options\[1\]"):
        parse_config(data)


def test_exclusive_date_options_are_rejected(key_file: Path) -> None:
    data = _base(key_file)
    data["profiles"] = {
        "p": {"options": ["retain_longitudinal_full_dates", "retain_longitudinal_modified_dates"]}
    }
    with pytest.raises(ConfigError, match="cannot be used together"):
        parse_config(data)


def test_key_must_name_exactly_one_source(key_file: Path) -> None:
    with pytest.raises(ConfigError, match="exactly one"):
        parse_config({"project": {"key": {"file": str(key_file), "env": "X"}}})
    with pytest.raises(ConfigError, match="exactly one"):
        parse_config({"project": {"key": {}}})


def test_key_itself_is_not_accepted_in_yaml(key_file: Path) -> None:
    with pytest.raises(ConfigError, match=r"project\.key\.value: unknown key"):
        parse_config({"project": {"key": {"value": "secret" * 10}}})


def test_key_from_file_and_env(key_file: Path, key_text: str) -> None:
    cfg = parse_config(_base(key_file))
    assert cfg.load_key() == ProjectKey(key_text.encode())
    cfg_env = parse_config({"project": {"key": {"env": "MY_KEY"}}})
    assert cfg_env.load_key({"MY_KEY": key_text}) == ProjectKey(key_text.encode())


def test_missing_and_short_keys_are_startup_errors(tmp_path: Path) -> None:
    cfg = parse_config({"project": {"key": {"file": str(tmp_path / "nope.key")}}})
    with pytest.raises(ConfigError, match="does not exist"):
        cfg.load_key()
    short = tmp_path / "short.key"
    short.write_text("x" * (MIN_KEY_LENGTH - 1))
    with pytest.raises(ConfigError, match="too short"):
        parse_config({"project": {"key": {"file": str(short)}}}).load_key()
    cfg_env = parse_config({"project": {"key": {"env": "ABSENT_KEY_VAR"}}})
    with pytest.raises(ConfigError, match="ABSENT_KEY_VAR is not set"):
        cfg_env.load_key({})


def test_key_repr_hides_the_secret(key_text: str) -> None:
    key = ProjectKey(key_text.encode())
    assert key_text not in repr(key)
    assert key.fingerprint() in repr(key)


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("project:\n  key: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_config(bad)


def test_check_config_command(tmp_path: Path, key_file: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(f"project:\n  key:\n    file: {key_file}\n")
    ok = run_cli(["check-config", str(good)])
    assert ok.returncode == 0, ok.stderr
    assert "configuration is valid" in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"project:\n  key:\n    file: {key_file}\nrouts: []\n")
    failed = run_cli(["check-config", str(bad)])
    assert failed.returncode == 2
    assert "routs: unknown key" in failed.stderr
    assert "Traceback" not in failed.stderr


def test_keygen_writes_a_private_key_and_never_overwrites(tmp_path: Path) -> None:
    target = tmp_path / "k" / "project.key"
    first = run_cli(["keygen", str(target)])
    assert first.returncode == 0, first.stderr
    assert target.stat().st_mode & 0o777 == 0o600
    key = ProjectKey(target.read_bytes())
    again = run_cli(["keygen", str(target)])
    assert again.returncode == 2
    assert "refusing to overwrite" in again.stderr
    assert ProjectKey(target.read_bytes()) == key
