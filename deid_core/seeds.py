"""Noise seeds for the generative edit, derived from the project key and the instance.

FlowEdit draws fresh Gaussian noise at every step; with the seed fixed by the key and the instance,
a retry of the same instance (after a crash, on another worker, at another site with the same key)
draws the same noise and so produces the same pixels on the same hardware. A different project key
gives unrelated noise, so outputs of two projects cannot be matched by their noise.
"""

from __future__ import annotations

from deid_core.keys import ProjectKey

#: Seeds are kept below 2**63 so that every consumer (torch.Generator, numpy) accepts them as is.
SEED_BITS = 63

_DOMAIN = "flowedit-seed"


def _encode_part(part: str | bytes | int) -> bytes:
    """Unambiguous encoding of one part: a type tag and a length prefix, so that ("ab", "c") and
    ("a", "bc"), or 1 and "1", never give the same message."""
    if isinstance(part, bool):
        raise TypeError("a seed part must be str, bytes or int, not bool")
    if isinstance(part, int):
        tag, raw = b"i", str(part).encode("ascii")
    elif isinstance(part, str):
        tag, raw = b"s", part.encode("utf-8")
    elif isinstance(part, bytes):
        tag, raw = b"b", part
    else:
        raise TypeError(f"a seed part must be str, bytes or int, not {type(part).__name__}")
    return tag + len(raw).to_bytes(8, "big") + raw


def derive_seed(key: ProjectKey, *parts: str | bytes | int) -> int:
    """A seed in [0, 2**63) from the key and the parts that name one edit.

    Callers pass what identifies the edit, for example the original SOP Instance UID, the frame
    number and the purpose (`"identity"` for the de-identifying edit, `"twin"` for a healthy twin of
    the lesion gate), so that each gets independent noise. The seed is an HMAC: it reveals nothing
    about the parts without the key.
    """
    if not parts:
        raise ValueError("derive_seed needs at least one part naming the edit")
    message = b"".join(_encode_part(p) for p in parts)
    digest = key.hmac(_DOMAIN, message)
    return int.from_bytes(digest[:8], "big") >> (64 - SEED_BITS)
