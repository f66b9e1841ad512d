"""Prepared data: encoded log, split labels, CSR matrices and row-aligned side tables, saved with every run.

This is the context that models bind to (sizes, the training graph, item text) and that ``recsys score`` reloads
from a run directory without importing Lightning.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from recsys.data.interactions import to_csr
from recsys.data.splits import TEST, TRAIN, VALID
from recsys.data.vocab import Vocabulary

log = logging.getLogger(__name__)


@dataclass
class PreparedData:
    """An encoded, split interaction log.

    Args:
        user_vocab, item_vocab: external ID ↔ row maps.
        users, items: rows of every interaction.
        labels: 0 train, 1 valid, 2 test per interaction.
        timestamps: seconds, when the log has them.
        item_table: item side table aligned with item rows (row i describes item row i), or None.
        user_table: user side table aligned with user rows, or None.
        name: the dataset's name.
    """

    user_vocab: Vocabulary
    item_vocab: Vocabulary
    users: np.ndarray
    items: np.ndarray
    labels: np.ndarray
    timestamps: np.ndarray | None = None
    item_table: object = None
    user_table: object = None
    name: str = "data"
    _csr: dict = field(default_factory=dict, repr=False)

    @property
    def n_users(self) -> int:
        return len(self.user_vocab)

    @property
    def n_items(self) -> int:
        return len(self.item_vocab)

    def csr(self, split: str) -> sp.csr_matrix:
        """Binary user × item matrix of one split (``train``, ``valid``, ``test``) or of ``train+valid``."""
        if split not in self._csr:
            if split == "train+valid":
                mask = self.labels <= VALID
            else:
                mask = self.labels == {"train": TRAIN, "valid": VALID, "test": TEST}[split]
            self._csr[split] = to_csr(self.users[mask], self.items[mask], (self.n_users, self.n_items))
        return self._csr[split]

    @property
    def train(self) -> sp.csr_matrix:
        return self.csr("train")

    def exclude_for(self, split: str) -> sp.csr_matrix:
        """Items to exclude when ranking for a split: train for valid; train and valid for test."""
        return self.csr("train") if split == "valid" else self.csr("train+valid")

    def history(self, users: np.ndarray, up_to: str = "train", max_len: int = 50) -> np.ndarray:
        """Chronological item histories (most recent last), right-aligned and left-padded with -1.

        Args:
            users: user rows.
            up_to: ``train`` (for validation queries), ``train+valid`` (for test), or ``all``.
            max_len: keep the most recent items only.

        Shapes:
            users: [B] -> [B, max_len] int64
        """
        key = ("hist", up_to)
        if key not in self._csr:
            limit = {"train": TRAIN, "train+valid": VALID, "all": TEST}[up_to]
            mask = self.labels <= limit
            u, i = self.users[mask], self.items[mask]
            t = self.timestamps[mask] if self.timestamps is not None else np.arange(len(u))
            order = np.lexsort((np.arange(len(u)), t, u))
            indptr = np.concatenate([[0], np.cumsum(np.bincount(u, minlength=self.n_users))])
            self._csr[key] = (indptr, i[order])
        indptr, seq = self._csr[key]
        users = np.asarray(users)
        out = np.full((len(users), max_len), -1, dtype=np.int64)
        ends = indptr[users + 1]
        lens = np.minimum(ends - indptr[users], max_len)
        cols = np.arange(max_len)
        valid = cols[None, :] >= (max_len - lens)[:, None]
        src = ends[:, None] - (max_len - cols)[None, :]
        out[valid] = seq[src[valid]]
        return out

    def item_popularity(self) -> np.ndarray:
        """Training interactions per item."""
        return np.asarray(self.train.sum(axis=0)).ravel()

    def summary(self) -> str:
        counts = np.bincount(self.labels, minlength=3)
        return (f"{self.name}: {self.n_users} users, {self.n_items} items, {len(self.users)} interactions "
                f"(train {counts[0]}, valid {counts[1]}, test {counts[2]})")

    # Persistence: Parquet files under ``run_dir/data`` so a run is self-describing.
    def save(self, directory: str | Path) -> None:
        """Write vocabularies, the split and side tables (atomically, one file each)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        from recsys.io_utils import atomic_path

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.user_vocab.save(d / "user_vocab.parquet")
        self.item_vocab.save(d / "item_vocab.parquet")
        cols = {"user": self.users, "item": self.items, "split": self.labels}
        if self.timestamps is not None:
            cols["timestamp"] = self.timestamps
        with atomic_path(d / "split.parquet") as tmp:
            pq.write_table(pa.table(cols), tmp)
        for name, table in (("items", self.item_table), ("users", self.user_table)):
            if table is not None:
                with atomic_path(d / f"{name}.parquet") as tmp:
                    table.to_parquet(tmp, index=False)
        (d / "name.txt").write_text(self.name)

    @classmethod
    def load(cls, directory: str | Path, side_tables: bool = True) -> PreparedData:
        """Read what :meth:`save` wrote. Side tables (which need pandas) are optional."""
        import pyarrow.parquet as pq

        from recsys.io_utils import arrow_to_numpy

        d = Path(directory)
        t = pq.ParquetFile(d / "split.parquet").read()
        item_table = user_table = None
        if side_tables:
            import pandas as pd

            if (d / "items.parquet").exists():
                item_table = pd.read_parquet(d / "items.parquet")
            if (d / "users.parquet").exists():
                user_table = pd.read_parquet(d / "users.parquet")
        return cls(
            user_vocab=Vocabulary.load(d / "user_vocab.parquet", "user"),
            item_vocab=Vocabulary.load(d / "item_vocab.parquet", "item"),
            users=arrow_to_numpy(t.column("user")), items=arrow_to_numpy(t.column("item")),
            labels=arrow_to_numpy(t.column("split")),
            timestamps=arrow_to_numpy(t.column("timestamp")) if "timestamp" in t.column_names else None,
            item_table=item_table, user_table=user_table,
            name=(d / "name.txt").read_text() if (d / "name.txt").exists() else "data",
        )
