"""A seeded universal hash family for embedding lookups that is stable across processes and machines.

Every value is first reduced to a 61-bit key by a stable digest (BLAKE2b of its UTF-8 text), then mapped to a
bucket by ``h(x) = ((a·x + b) mod p) mod B`` with the Mersenne prime ``p = 2**61 − 1`` (Carter and Wegman's
universal family). ``a`` and ``b`` are derived from a fixed seed and a salt (e.g. feature name and chunk index) by
the same digest, so the same configuration gives the same buckets in every process, on every machine and under
every ``PYTHONHASHSEED``: Python's ``hash()`` is never used.

Coleman et al., "Unified Embedding: Battle-Tested Feature Representations for Web-Scale ML Systems", NeurIPS 2023,
hash each (feature, chunk) pair with its own salted function; :class:`UniversalHash` is one such function.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from recsys.data.hashing import MERSENNE_61, _digest61, _text, stable_key, stable_keys

__all__ = ["MERSENNE_61", "UniversalHash", "mulmod61", "stable_key", "stable_keys"]

_P = np.uint64(MERSENNE_61)
_MASK32 = np.uint64(0xFFFFFFFF)
_MASK29 = np.uint64((1 << 29) - 1)


def _fold(v: np.ndarray) -> np.ndarray:
    # 2**61 ≡ 1 (mod p): the high bits fold onto the low 61 bits.
    return (v & _P) + (v >> np.uint64(61))


def mulmod61(a: int, x: np.ndarray) -> np.ndarray:
    """``(a · x) mod (2**61 − 1)`` elementwise without 128-bit integers (32-bit limbs in uint64).

    Args:
        a: a multiplier in ``[0, 2**61 − 1)``.
        x: keys in ``[0, 2**61 − 1)``.

    Shapes:
        x: [N] uint64 -> [N] uint64
    """
    x = np.asarray(x, dtype=np.uint64)
    a1, a0 = np.uint64(a >> 32), np.uint64(a & 0xFFFFFFFF)
    x1, x0 = x >> np.uint64(32), x & _MASK32
    # a·x = a1·x1·2^64 + (a1·x0 + a0·x1)·2^32 + a0·x0, and 2^64 ≡ 8, 2^61 ≡ 1 (mod p); every term stays < 2^64.
    hi = (a1 * x1) << np.uint64(3)
    mid = a1 * x0 + a0 * x1
    mid = (mid >> np.uint64(29)) + ((mid & _MASK29) << np.uint64(32))
    lo = _fold(a0 * x0)
    r = _fold(_fold(hi) + _fold(mid) + lo)
    r = _fold(r)
    return np.where(r >= _P, r - _P, r)


class UniversalHash:
    """One member ``h(x) = ((a·x + b) mod p) mod B`` of the Carter–Wegman family, chosen by a seed and a salt.

    Args:
        buckets: B, the number of buckets.
        seed: the family's seed (one per model).
        salt: what distinguishes this function within the family, e.g. ``("genres", 1)`` for chunk 1 of genres.

    Shapes:
        keys: [N] uint64 (from :func:`stable_keys`) -> [N] int64 in ``[0, B)``
    """

    def __init__(self, buckets: int, seed: int = 0, salt: tuple = ()) -> None:
        if buckets < 1:
            raise ValueError(f"buckets must be >= 1, got {buckets}")
        self.buckets, self.seed, self.salt = int(buckets), int(seed), tuple(salt)
        tag = "\x1f".join(_text(s) for s in (self.seed, *self.salt)).encode("utf-8", "surrogateescape")
        self.a = 1 + _digest61(b"a\x1e" + tag) % (MERSENNE_61 - 1)  # a ≠ 0, or every key would share a bucket
        self.b = _digest61(b"b\x1e" + tag)

    def __call__(self, keys: np.ndarray) -> np.ndarray:
        keys = np.asarray(keys, dtype=np.uint64)
        r = _fold(mulmod61(self.a, keys) + np.uint64(self.b))
        r = np.where(r >= _P, r - _P, r)
        return (r % np.uint64(self.buckets)).astype(np.int64)

    def hash_values(self, values: Iterable) -> np.ndarray:
        """Buckets of raw values (strings, ints): :func:`stable_keys` then the hash."""
        return self(stable_keys(values))

    def __repr__(self) -> str:
        return f"UniversalHash(buckets={self.buckets}, seed={self.seed}, salt={self.salt!r})"
