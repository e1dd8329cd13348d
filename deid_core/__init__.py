"""deid_core: pure de-identification logic (no sockets, no metrics, no global state).

The public, stable names are re-exported here as they land; see README "Library API".
"""

from deid_core.errors import (
    DeidGatewayError,
    InvalidInputError,
    PermanentError,
    RetryableError,
)
from deid_core.keys import MIN_KEY_LENGTH, ProjectKey

__all__ = [
    "MIN_KEY_LENGTH",
    "DeidGatewayError",
    "InvalidInputError",
    "PermanentError",
    "ProjectKey",
    "RetryableError",
]
