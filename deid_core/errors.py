"""The project's one root error type and the two families that say whether a retry can help.

Messages never contain PHI: they name attributes by tag or keyword, files by a caller-supplied
label, never by a value read from a dataset.
"""


class DeidGatewayError(Exception):
    """Root of every error this project raises on purpose."""

    #: Whether trying the same thing again later can succeed (archive down, broker away, disk full).
    retryable: bool = False


class RetryableError(DeidGatewayError):
    """A temporary condition: the same input may succeed later."""

    retryable = True


class PermanentError(DeidGatewayError):
    """The input or the configuration is wrong: retrying the same thing cannot help."""


class InvalidInputError(PermanentError):
    """A dataset, file or image that cannot be processed as given (truncated, wrong VR, ...)."""


class ConfigError(PermanentError):
    """The configuration is invalid; the message names the offending key."""


class ClinicalContentLossError(PermanentError):
    """De-identifying this instance would remove its clinical content (the text of a structured
    report, an encapsulated PDF or CDA document): refused unless the profile accepts that loss
    explicitly (option `clean_structured_content`). The gateway quarantines it with the reason."""
