"""Noise seeds derived from the project key and the instance."""

from __future__ import annotations

import pytest

from deid_core.keys import ProjectKey
from deid_core.seeds import SEED_BITS, derive_seed

KEY = ProjectKey(b"k" * 16 + b"0123456789abcdef0123456789abcdef")
OTHER = ProjectKey(b"z" * 16 + b"0123456789abcdef0123456789abcdef")


def test_same_key_and_parts_give_the_same_seed() -> None:
    assert derive_seed(KEY, "1.2.3", 0, "identity") == derive_seed(KEY, "1.2.3", 0, "identity")


def test_seed_is_in_range() -> None:
    seeds = [derive_seed(KEY, "1.2.3", frame) for frame in range(200)]
    assert all(0 <= s < 2**SEED_BITS for s in seeds)
    assert len(set(seeds)) == 200


def test_key_and_every_part_change_the_seed() -> None:
    base = derive_seed(KEY, "1.2.3", 0, "identity")
    assert derive_seed(OTHER, "1.2.3", 0, "identity") != base
    assert derive_seed(KEY, "1.2.4", 0, "identity") != base
    assert derive_seed(KEY, "1.2.3", 1, "identity") != base
    assert derive_seed(KEY, "1.2.3", 0, "twin") != base


def test_parts_are_unambiguous() -> None:
    assert derive_seed(KEY, "ab", "c") != derive_seed(KEY, "a", "bc")
    assert derive_seed(KEY, 1) != derive_seed(KEY, "1")
    assert derive_seed(KEY, b"1") != derive_seed(KEY, "1")


def test_bad_parts_are_refused() -> None:
    with pytest.raises(ValueError):
        derive_seed(KEY)
    with pytest.raises(TypeError):
        derive_seed(KEY, True)
    with pytest.raises(TypeError):
        derive_seed(KEY, 1.5)  # type: ignore[arg-type]
