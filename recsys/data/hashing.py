"""Stable keys of raw values: a 61-bit BLAKE2b digest, the same in every process and on every machine.

The data layer keys feature tokens with :func:`stable_keys` (:meth:`recsys.data.features.JaggedFeature.keys`); the
seeded hash family that maps keys to embedding buckets is :class:`recsys.encoders.hashing.UniversalHash`, which
re-exports these names. Python's ``hash()`` is never used, so keys do not depend on ``PYTHONHASHSEED``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np

__all__ = ["MERSENNE_61", "stable_key", "stable_keys"]

#: The Mersenne prime 2**61 − 1: reduction modulo it needs only shifts and masks.
MERSENNE_61 = (1 << 61) - 1


def _digest61(data: bytes) -> int:
    """The first 8 bytes of BLAKE2b(data), little-endian, reduced modulo 2**61 − 1."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") % MERSENNE_61


def _text(value) -> str:
    # numpy scalars print like Python scalars, so 3, np.int64(3) and "3" are one value; bytes are decoded.
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    if isinstance(value, np.generic):
        value = value.item()
    return str(value)


def stable_key(value) -> int:
    """A value's 61-bit key: BLAKE2b of its text, so equal texts have equal keys everywhere.

    Args:
        value: a string, bytes or scalar; non-strings are keyed by ``str(value)``.
    """
    return _digest61(_text(value).encode("utf-8", "surrogateescape"))


def stable_keys(values: Iterable) -> np.ndarray:
    """Keys of many values (see :func:`stable_key`).

    Shapes:
        values: [N] -> [N] uint64, each < 2**61 − 1
    """
    return np.fromiter((stable_key(v) for v in values), dtype=np.uint64)
