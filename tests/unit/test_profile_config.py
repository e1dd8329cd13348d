"""From the YAML configuration to a de-identifier (gateway.profiles)."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from deid_core import DEFAULT_SAFE_PRIVATE, Pseudonymizer
from deid_core.errors import ConfigError
from deid_core.options import ProfileOption
from gateway.config import parse_config
from gateway.profiles import build_deidentifier, build_profile, trial_subject


def _cfg(key_file: Path, **overrides: object) -> dict:
    data: dict = {
        "version": 1,
        "project": {
            "key": {"file": str(key_file)},
            "sponsor_name": "Sponsor",
            "protocol_id": "P-1",
            "protocol_name": "Protocol",
            "subject_id_prefix": "ST7-",
        },
        "site": {"id": "S7", "name": "Site Seven"},
        "profiles": {
            "default": {"options": ["clean_descriptors"]},
            "research": {
                "options": ["retain_safe_private", "retain_longitudinal_modified_dates"],
                "safe_private": [{"creator": "ACME 1.0", "elements": [1, 2], "group": 0x0029}],
                "default_safe_private": False,
            },
        },
    }
    data.update(overrides)
    return data


def test_profile_options_and_safe_private_rules(key_file: Path) -> None:
    cfg = parse_config(_cfg(key_file))
    default = build_profile(cfg, "default")
    assert default.options == {ProfileOption.CLEAN_DESCRIPTORS}
    assert default.safe_private[-len(DEFAULT_SAFE_PRIVATE) :] == DEFAULT_SAFE_PRIVATE
    research = build_profile(cfg, "research")
    assert len(research.safe_private) == 1
    rule = research.safe_private[0]
    assert rule.matches(0x0029, "ACME 1.0", 0x02) and not rule.matches(0x0029, "ACME 1.0", 0x03)


def test_deidentifier_carries_the_trial_and_subject_policy(key_file: Path) -> None:
    cfg = parse_config(_cfg(key_file))
    deid = build_deidentifier(cfg, "default", cfg.load_key())
    out = deid.deidentify(pydicom.dcmread(get_testdata_file("CT_small.dcm")))
    # CT_small names no Issuer of Patient ID and none is configured: keyed on the bare ID (the
    # site's name is not assumed, so federated sites sharing an ID namespace link)
    expected = Pseudonymizer(cfg.load_key(), patient_id_prefix="ST7-").patient_id("1CT1")
    assert expected != Pseudonymizer(cfg.load_key(), patient_id_prefix="ST7-").patient_id(
        "1CT1", issuer="Site Seven"
    )
    assert out.PatientID == expected == out.ClinicalTrialSubjectID
    assert out.ClinicalTrialSiteName == "Site Seven"
    assert out.ClinicalTrialProtocolName == "Protocol"


def test_no_trial_module_without_sponsor_and_protocol(key_file: Path) -> None:
    data = _cfg(key_file)
    data["project"] = {"key": {"file": str(key_file)}}
    cfg = parse_config(data)
    assert trial_subject(cfg) is None
    out = build_deidentifier(cfg, "default", cfg.load_key()).deidentify(
        pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    )
    assert "ClinicalTrialSponsorName" not in out


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ({"creator": "X", "elements": [1], "group": 0x0028}, "odd"),
        ({"creator": "X", "elements": [0x1001]}, r"0\.\.255"),
    ],
)
def test_bad_safe_private_rules_name_the_key(key_file: Path, rule: dict, message: str) -> None:
    data = _cfg(key_file)
    data["profiles"]["research"]["safe_private"] = [rule]
    cfg = parse_config(data)
    with pytest.raises(ConfigError, match=rf"profiles\.research\.safe_private\[0\].*{message}"):
        build_profile(cfg, "research")


def test_unknown_profile_and_bad_trial_values(key_file: Path) -> None:
    cfg = parse_config(_cfg(key_file))
    with pytest.raises(ConfigError, match=r"profiles\.nope: no such profile"):
        build_profile(cfg, "nope")
    data = _cfg(key_file)
    data["site"] = {"id": "S" * 65}
    with pytest.raises(ConfigError, match=r"site\.id"):
        trial_subject(parse_config(data))
    data = _cfg(key_file)
    data["project"]["subject_id_prefix"] = "has space"
    with pytest.raises(ConfigError, match="subject_id_prefix"):
        parse_config(data)


def test_configured_patient_id_issuer_overrides_the_site_name(key_file: Path) -> None:
    data = _cfg(key_file)
    data["project"]["patient_id_issuer"] = "MRN.HOSPITAL-A"
    cfg = parse_config(data)
    deid = build_deidentifier(cfg, "default", cfg.load_key())
    out = deid.deidentify(pydicom.dcmread(get_testdata_file("CT_small.dcm")))
    pseudo = Pseudonymizer(cfg.load_key(), patient_id_prefix="ST7-")
    assert out.PatientID == pseudo.patient_id("1CT1", issuer="MRN.HOSPITAL-A")
    assert out.PatientID != pseudo.patient_id("1CT1", issuer="Site Seven")
    # without one, the site's name is NOT assumed (federated sites sharing an ID namespace link)
    del data["project"]["patient_id_issuer"]
    cfg = parse_config(data)
    out = build_deidentifier(cfg, "default", cfg.load_key()).deidentify(
        pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    )
    assert cfg.site.name
    assert out.PatientID == pseudo.patient_id("1CT1")
