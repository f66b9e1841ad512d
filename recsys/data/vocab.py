"""Vocabulary: the one mapping between external IDs and the contiguous rows that models see."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from recsys.errors import DataError

__all__ = ["Vocabulary", "as_id_type"]

# An integer literal as a user types it in an ID list: optional sign, digits (no "1_000", no "1e3", no "4.0").
_INT_TEXT = re.compile(r"[+-]?[0-9]+")


def _int_bounds(dtype: np.dtype) -> tuple[int, int]:
    info = np.iinfo(dtype)
    return int(info.min), int(info.max)


def as_id_type(values, dtype) -> tuple[np.ndarray, np.ndarray]:
    """External IDs converted exactly to a vocabulary's ID type, and which of them convert.

    Nothing wraps or rounds: ``2**63`` is not an ``int64`` ID, ``-1`` is not a ``uint64`` one, ``4.5`` and ``"abc"``
    are not integer IDs and ``True`` is no ID at all; such values come back with ``ok`` False (the caller decides
    whether that is an unknown ID or an error). Text such as ``"42"`` or ``" 42"`` is the integer 42 for an integer
    vocabulary; for a string vocabulary every value is compared as text.

    Args:
        values: IDs of any type (numpy array, list; strings, Python or numpy integers, floats).
        dtype: the vocabulary's ID dtype (object for strings, or an integer dtype).

    Shapes:
        values: [N] -> (ids [N] of ``dtype``, ok [N] bool)
    """
    dtype = np.dtype(dtype)
    values = np.asarray(values)
    n = len(values)
    if dtype.kind == "O":
        return values.astype(str).astype(object), np.ones(n, dtype=bool)
    if dtype.kind not in "iu":
        raise TypeError(f"vocabulary IDs must be strings or integers, not {dtype}")
    lo, hi = _int_bounds(dtype)
    if values.dtype.kind in "iu":
        if values.dtype == dtype:
            return values, np.ones(n, dtype=bool)
        # Compare the bounds in the source's own type: a cast first would wrap (2**63 -> -2**63).
        vlo, vhi = _int_bounds(values.dtype)
        ok = np.ones(n, dtype=bool)
        if vlo < lo:
            ok &= values >= values.dtype.type(max(lo, vlo))
        if vhi > hi:
            ok &= values <= values.dtype.type(min(hi, vhi))
        return np.where(ok, values, 0).astype(dtype), ok
    if values.dtype.kind == "f":
        with np.errstate(invalid="ignore"):
            ok = np.isfinite(values) & (np.mod(values, 1) == 0) & (values >= float(lo)) & (values < float(hi) + 1)
        return np.where(ok, values, 0).astype(dtype), ok
    if values.dtype.kind == "b":
        return np.zeros(n, dtype=dtype), np.zeros(n, dtype=bool)
    out = np.zeros(n, dtype=dtype)
    ok = np.zeros(n, dtype=bool)
    todo = range(n)
    if values.dtype.kind in "OUS" and n:
        # Fast path for canonical integer text ("42"), exact because it must print back to the same text.
        text = np.char.strip(values.astype(str))
        try:
            converted = text.astype(dtype)
        except (TypeError, ValueError, OverflowError):
            pass
        else:
            ok = converted.astype(str) == text
            out = np.where(ok, converted, 0).astype(dtype)
            todo = np.flatnonzero(~ok)
    flat = values.tolist()
    for i in todo:
        v = flat[i]
        if isinstance(v, bool):
            continue
        if isinstance(v, str):
            v = v.strip()
            if not _INT_TEXT.fullmatch(v):
                continue
            v = int(v)
        elif isinstance(v, float):
            if not (v == v and v % 1 == 0):
                continue
            v = int(v)
        elif not isinstance(v, (int, np.integer)):
            continue
        v = int(v)
        if lo <= v <= hi:
            out[i], ok[i] = v, True
    return out, ok


class Vocabulary:
    """A bijection between external IDs (ints or strings) and rows ``0..n-1``.

    Rows follow the sorted order of the IDs, so the mapping does not depend on the order of the input file.

    Args:
        ids: the distinct external IDs. Duplicates are an error.
        name: what the IDs are ("user", "item"), used in error messages and file names.
    """

    def __init__(self, ids, name: str = "id") -> None:
        ids = np.asarray(ids)
        if len(ids) == 0 and ids.dtype.kind == "f":
            ids = ids.astype(np.int64)  # np.asarray([]) is float64: an empty vocabulary, not float IDs
        if ids.dtype.kind in "OU":
            ids = ids.astype(str).astype(object)
        elif ids.dtype.kind in "iu" and ids.dtype not in (np.int64, np.uint64):
            # One width per signedness, so a vocabulary saved from int32 IDs loads back as the same type.
            ids = ids.astype(np.int64)
        elif ids.dtype.kind not in "iu":
            raise DataError(f"{name} IDs must be strings or integers, not {ids.dtype}")
        order = np.argsort(ids, kind="stable")
        sorted_ids = ids[order]
        if len(sorted_ids) > 1 and (sorted_ids[1:] == sorted_ids[:-1]).any():
            raise DataError(f"duplicate {name} IDs in vocabulary")
        self.ids = ids
        self.name = name
        self._sorted = sorted_ids
        self._rows = order.astype(np.int64)

    @classmethod
    def from_values(cls, values, name: str = "id") -> Vocabulary:
        """Build a vocabulary from every distinct value (rows in sorted ID order)."""
        return cls(np.unique(np.asarray(values)), name)

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return f"Vocabulary({self.name}, n={len(self)})"

    def encode(self, values, *, missing: str = "raise", source: str | None = None) -> np.ndarray:
        """Map external IDs to rows.

        Values of another type are compared exactly (see :func:`as_id_type`): ``"42"`` finds the integer ID 42,
        while ``2**63`` never matches an ``int64`` ID by wrapping around.

        Args:
            values: external IDs.
            missing: ``"raise"`` (a DataError naming the first unknown ID and its position) or ``"ignore"``
                (unknown IDs map to -1).
            source: the file or option the values came from, for the error message.

        Shapes:
            values: [N] -> rows: [N] int64
        """
        original = np.asarray(values)
        values, ok = as_id_type(original, self.ids.dtype)
        if len(self._sorted) == 0:
            pos_in_sorted = np.zeros(len(values), dtype=np.int64)
            found = np.zeros(len(values), dtype=bool)
        else:
            pos_in_sorted = np.searchsorted(self._sorted, values)
            clipped = np.minimum(pos_in_sorted, len(self._sorted) - 1)
            found = (self._sorted[clipped] == values) & ok
            pos_in_sorted = clipped
        rows = np.where(found, self._rows[pos_in_sorted], -1).astype(np.int64)
        if missing == "raise" and not found.all():
            pos = int(np.flatnonzero(~found)[0])
            bad = original[pos].item() if hasattr(original[pos], "item") else original[pos]
            raise DataError(f"unknown {self.name} ID {bad!r} ({int((~found).sum())} unknown in all)",
                            file=source, column=self.name, row=pos)
        return rows

    def decode(self, rows) -> np.ndarray:
        """Map rows back to external IDs.

        Shapes:
            rows: [...] int -> [...] IDs
        """
        return self.ids[np.asarray(rows)]

    def save(self, path: str | Path) -> None:
        """Write the IDs in row order as a one-column Parquet file (atomically): string, int64 or uint64."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        from recsys.io_utils import atomic_path

        ids = self.ids.tolist() if self.ids.dtype == object else self.ids
        table = pa.table({self.name: pa.array(ids)})
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp)

    @classmethod
    def load(cls, path: str | Path, name: str | None = None) -> Vocabulary:
        """Read a vocabulary written by :meth:`save`."""
        import pyarrow.parquet as pq

        from recsys.io_utils import arrow_to_numpy

        table = pq.ParquetFile(path).read()  # ParquetFile avoids importing pyarrow.dataset (~1 s)
        col = table.column(0)
        ids = np.asarray(col.to_pylist(), dtype=object) if col.type == "string" else arrow_to_numpy(col)
        return cls(ids, name or table.column_names[0])
