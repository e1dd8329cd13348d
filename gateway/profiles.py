"""From the YAML configuration to a ready de-identifier.

The configuration names profiles (options + safe private rules) and carries the project's and the
site's Clinical Trial attributes; `build_deidentifier` turns one profile into a `Deidentifier`.
"""

from __future__ import annotations

from deid_core.deidentify import ClinicalTrialSubject, Deidentifier
from deid_core.errors import ConfigError
from deid_core.keys import ProjectKey
from deid_core.private import DEFAULT_SAFE_PRIVATE, SafePrivateElement
from deid_core.profile import ConfidentialityProfile
from gateway.config import GatewayConfig, SafePrivateRule


def _safe_private(rule: SafePrivateRule, where: str) -> SafePrivateElement:
    if rule.group is not None and not rule.group & 1:
        raise ConfigError(f"{where}.group: a private group number is odd (got 0x{rule.group:04X})")
    if rule.elements == "*":
        elements = None
    else:
        bad = [e for e in rule.elements if not 0 <= e <= 0xFF]
        if bad:
            raise ConfigError(
                f"{where}.elements: offsets within a private block are 0..255 (0x00..0xFF)"
            )
        elements = frozenset(rule.elements)
    return SafePrivateElement(
        creator=rule.creator.strip(),
        elements=elements,
        group=rule.group,
        values="any",
        note="configured",
    )


def build_profile(cfg: GatewayConfig, profile_name: str) -> ConfidentialityProfile:
    profile = cfg.profiles.get(profile_name)
    if profile is None:
        known = ", ".join(sorted(cfg.profiles)) or "none"
        raise ConfigError(f"profiles.{profile_name}: no such profile (configured: {known})")
    rules = tuple(
        _safe_private(r, f"profiles.{profile_name}.safe_private[{i}]")
        for i, r in enumerate(profile.safe_private)
    )
    if profile.default_safe_private:
        rules += DEFAULT_SAFE_PRIVATE
    return ConfidentialityProfile(options=frozenset(profile.options), safe_private=rules)


def trial_subject(cfg: GatewayConfig) -> ClinicalTrialSubject | None:
    """The Clinical Trial Subject module values, when the project names a sponsor and a protocol
    (both are Type 1 in the module; without them the module is not written)."""
    project, site = cfg.project, cfg.site
    if not project.sponsor_name or not project.protocol_id:
        return None
    for where, value in (
        ("project.sponsor_name", project.sponsor_name),
        ("project.protocol_id", project.protocol_id),
        ("project.protocol_name", project.protocol_name),
        ("site.id", site.id),
        ("site.name", site.name),
    ):
        if value is not None and (len(value) > 64 or "\\" in value):
            raise ConfigError(f"{where}: at most 64 characters and no backslash (DICOM LO)")
    return ClinicalTrialSubject(
        sponsor_name=project.sponsor_name,
        protocol_id=project.protocol_id,
        protocol_name=project.protocol_name,
        site_id=site.id,
        site_name=site.name,
    )


def build_deidentifier(cfg: GatewayConfig, profile_name: str, key: ProjectKey) -> Deidentifier:
    """The de-identifier for one configured profile under the project key."""
    return Deidentifier(
        build_profile(cfg, profile_name),
        key,
        trial_subject(cfg),
        patient_id_prefix=cfg.project.subject_id_prefix,
        max_shift_days=cfg.project.max_date_shift_days,
        default_issuer=default_issuer(cfg),
    )


def default_issuer(cfg: GatewayConfig) -> str:
    """The Issuer of Patient ID assumed where an instance names none: patient pseudonyms are keyed
    on issuer + ID. Never the site's name by default: sites whose patients share one ID namespace
    (a regional or national ID) must link in a federated project, so keeping two sites' patient
    "12345" apart is the operator's explicit choice (a distinct issuer per site)."""
    return (cfg.project.patient_id_issuer or "").strip()


__all__ = ["build_deidentifier", "build_profile", "default_issuer", "trial_subject"]
