"""The secret project key under which every pseudonym is an HMAC.

Same key -> same pseudonyms on any machine and any site; different research projects use different
keys and their outputs cannot be linked. The key never appears in the YAML, in logs or in reprs.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from deid_core.errors import ConfigError

#: A key shorter than this is refused at start-up. `deid-gateway keygen` writes 64 hex characters
#: (256 bits of entropy).
MIN_KEY_LENGTH = 32


class ProjectKey:
    """Key material for HMAC-SHA256, validated for length. Its repr never shows the secret."""

    __slots__ = ("_material",)

    def __init__(self, material: bytes) -> None:
        material = material.strip()
        if len(material) < MIN_KEY_LENGTH:
            raise ConfigError(
                f"the project key is too short ({len(material)} bytes; at least {MIN_KEY_LENGTH} "
                "are required): generate one with `deid-gateway keygen FILE`"
            )
        self._material = material

    @classmethod
    def generate(cls) -> ProjectKey:
        return cls(secrets.token_hex(32).encode("ascii"))

    def export_text(self) -> str:
        """The key as text, for writing a new key file only."""
        return self._material.decode("ascii", errors="strict")

    def hmac(self, domain: str, message: bytes) -> bytes:
        """HMAC-SHA256 of `message` under the key, separated by `domain` so that a patient ID and a
        UID with the same text never map to related outputs."""
        return hmac.new(
            self._material, domain.encode("utf-8") + b"\x00" + message, hashlib.sha256
        ).digest()

    def fingerprint(self) -> str:
        """A short, non-secret identifier of the key, for logs and reports (which key was used)."""
        return self.hmac("fingerprint", b"").hex()[:12]

    def __repr__(self) -> str:
        return f"ProjectKey(fingerprint={self.fingerprint()})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ProjectKey) and hmac.compare_digest(
            self._material, other._material
        )

    def __hash__(self) -> int:
        return hash(self.fingerprint())
