"""deid_core: pure de-identification logic (no sockets, no metrics, no global state).

The public, stable names are re-exported here; see README "Library API". The engine's names
(which import pydicom, numpy and the pixel plugins: about a second) load on first use, so that
`from deid_core.errors import ...` in a command that never de-identifies stays cheap.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from deid_core.errors import (
    ClinicalContentLossError,
    ConfigError,
    DeidGatewayError,
    InvalidInputError,
    PermanentError,
    RetryableError,
)
from deid_core.keys import MIN_KEY_LENGTH, ProjectKey
from deid_core.options import ProfileOption

if TYPE_CHECKING:
    from deid_core.api import (
        check_lesion,
        deidentify_dataset,
        deidentify_file,
        flowedit_images,
    )
    from deid_core.deidentify import (
        AttributeDecision,
        ClinicalTrialSubject,
        Deidentifier,
        record_method,
    )
    from deid_core.flowedit import FlowEditParams
    from deid_core.lesion.gate import GateOutcome, GateResult, LesionGateParams
    from deid_core.models import RectifiedFlowModel, build_tiny_model, load_model
    from deid_core.private import DEFAULT_SAFE_PRIVATE, SafePrivateElement
    from deid_core.profile import ConfidentialityProfile
    from deid_core.pseudonyms import Pseudonymizer

_LAZY = {
    "check_lesion": "deid_core.api",
    "deidentify_dataset": "deid_core.api",
    "deidentify_file": "deid_core.api",
    "flowedit_images": "deid_core.api",
    "FlowEditParams": "deid_core.flowedit",
    "GateOutcome": "deid_core.lesion.gate",
    "GateResult": "deid_core.lesion.gate",
    "LesionGateParams": "deid_core.lesion.gate",
    "RectifiedFlowModel": "deid_core.models",
    "build_tiny_model": "deid_core.models",
    "load_model": "deid_core.models",
    "AttributeDecision": "deid_core.deidentify",
    "ClinicalTrialSubject": "deid_core.deidentify",
    "Deidentifier": "deid_core.deidentify",
    "record_method": "deid_core.deidentify",
    "ConfidentialityProfile": "deid_core.profile",
    "DEFAULT_SAFE_PRIVATE": "deid_core.private",
    "SafePrivateElement": "deid_core.private",
    "Pseudonymizer": "deid_core.pseudonyms",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'deid_core' has no attribute {name!r}")
    return getattr(import_module(module), name)


__all__ = [
    "DEFAULT_SAFE_PRIVATE",
    "MIN_KEY_LENGTH",
    "AttributeDecision",
    "ClinicalContentLossError",
    "ClinicalTrialSubject",
    "ConfidentialityProfile",
    "ConfigError",
    "DeidGatewayError",
    "Deidentifier",
    "FlowEditParams",
    "GateOutcome",
    "GateResult",
    "InvalidInputError",
    "LesionGateParams",
    "PermanentError",
    "ProfileOption",
    "ProjectKey",
    "Pseudonymizer",
    "RectifiedFlowModel",
    "RetryableError",
    "SafePrivateElement",
    "build_tiny_model",
    "check_lesion",
    "deidentify_dataset",
    "deidentify_file",
    "flowedit_images",
    "load_model",
    "record_method",
]
