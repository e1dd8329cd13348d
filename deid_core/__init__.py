"""deid_core: pure de-identification logic (no sockets, no metrics, no global state).

The public, stable names are re-exported here; see README "Library API".
"""

from deid_core.deidentify import (
    AttributeDecision,
    ClinicalTrialSubject,
    Deidentifier,
    record_method,
)
from deid_core.errors import (
    DeidGatewayError,
    InvalidInputError,
    PermanentError,
    RetryableError,
)
from deid_core.keys import MIN_KEY_LENGTH, ProjectKey
from deid_core.options import ProfileOption
from deid_core.private import DEFAULT_SAFE_PRIVATE, SafePrivateElement
from deid_core.profile import ConfidentialityProfile
from deid_core.pseudonyms import Pseudonymizer

__all__ = [
    "DEFAULT_SAFE_PRIVATE",
    "MIN_KEY_LENGTH",
    "AttributeDecision",
    "ClinicalTrialSubject",
    "ConfidentialityProfile",
    "DeidGatewayError",
    "Deidentifier",
    "InvalidInputError",
    "PermanentError",
    "ProfileOption",
    "ProjectKey",
    "Pseudonymizer",
    "RetryableError",
    "SafePrivateElement",
    "record_method",
]
