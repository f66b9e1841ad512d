"""Vocabulary: the one mapping between external IDs and the contiguous rows that models see."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from recsys.errors import DataError


class Vocabulary:
    """A bijection between external IDs (ints or strings) and rows ``0..n-1``.

    Rows follow the sorted order of the IDs, so the mapping does not depend on the order of the input file.

    Args:
        ids: the distinct external IDs. Duplicates are an error.
        name: what the IDs are ("user", "item"), used in error messages and file names.
    """

    def __init__(self, ids, name: str = "id") -> None:
        ids = np.asarray(ids)
        if ids.dtype.kind in "OU":
            ids = ids.astype(str).astype(object)
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

        Args:
            values: external IDs.
            missing: ``"raise"`` (a DataError naming the first unknown ID and its position) or ``"ignore"``
                (unknown IDs map to -1).
            source: the file or option the values came from, for the error message.

        Shapes:
            values: [N] -> rows: [N] int64
        """
        values = np.asarray(values)
        if self.ids.dtype == object:
            values = values.astype(str).astype(object)
        elif values.dtype.kind in "OU":
            try:
                values = values.astype(self.ids.dtype)
            except ValueError:
                pos = 0
                raise DataError(f"unknown {self.name} ID {values[pos]!r}", file=source, column=self.name,
                                row=pos) from None
        if len(self._sorted) == 0:
            pos_in_sorted = np.zeros(len(values), dtype=np.int64)
            found = np.zeros(len(values), dtype=bool)
        else:
            pos_in_sorted = np.searchsorted(self._sorted, values)
            clipped = np.minimum(pos_in_sorted, len(self._sorted) - 1)
            found = self._sorted[clipped] == values
            pos_in_sorted = clipped
        rows = np.where(found, self._rows[pos_in_sorted], -1).astype(np.int64)
        if missing == "raise" and not found.all():
            pos = int(np.flatnonzero(~found)[0])
            bad = values[pos].item() if hasattr(values[pos], "item") else values[pos]
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
        """Write the IDs in row order as a one-column Parquet file (atomically)."""
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
