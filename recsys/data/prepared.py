"""Prepared data: from a raw dataset to an encoded log with split labels, CSR matrices and row-aligned side tables.

:func:`prepare` preprocesses, encodes and splits a ``RawDataset`` (:class:`Preprocess`, :class:`SplitSpec`) into a
:class:`PreparedData`, the context that models bind to (sizes, the training graph, item text). It is saved with every
run, and ``recsys score`` reloads it from a run directory without importing Lightning.
"""

from __future__ import annotations

import logging
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import scipy.sparse as sp

from recsys.data.interactions import preprocess, to_csr
from recsys.data.splits import SPLIT_NAMES, TEST, TRAIN, VALID, carve_valid, resolve_method, split_interactions
from recsys.data.vocab import Vocabulary
from recsys.errors import DataError, UsageError

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
        split_note: how the split was made (shown in the summary).
        cold_items: the item rows held out entirely by a cold-item protocol (``--data.split.cold_items``): every
            interaction with them is in test, none in train or valid, and training never samples them as
            negatives; None without the protocol.
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
    split_note: str = ""
    cold_items: np.ndarray | None = None
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

    def split_sizes(self) -> dict[str, int]:
        """Interactions per split part."""
        counts = np.bincount(self.labels, minlength=3)
        return {"train": int(counts[TRAIN]), "valid": int(counts[VALID]), "test": int(counts[TEST])}

    def has_split(self, split: str) -> bool:
        """Whether some user has held-out interactions in ``split`` (``valid`` or ``test``)."""
        return self.split_sizes()[split] > 0

    def summary(self) -> str:
        c = self.split_sizes()
        note = f"; {self.split_note}" if self.split_note else ""
        return (f"{self.name}: {self.n_users} users, {self.n_items} items, {len(self.users)} interactions "
                f"(train {c['train']}, valid {c['valid']}, test {c['test']}{note})")

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
        if self.cold_items is not None:
            with atomic_path(d / "cold_items.parquet") as tmp:
                pq.write_table(pa.table({"item": np.asarray(self.cold_items, dtype=np.int64)}), tmp)
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
            cold_items=(arrow_to_numpy(pq.read_table(d / "cold_items.parquet").column("item"))
                        if (d / "cold_items.parquet").exists() else None),
        )

    def cold_mask(self) -> np.ndarray | None:
        """Per item row, whether it is held out by the cold-item protocol (None without it).

        Shapes:
            -> [n_items] bool
        """
        if self.cold_items is None:
            return None
        mask = np.zeros(self.n_items, dtype=bool)
        mask[self.cold_items] = True
        return mask


@dataclass
class Preprocess:
    """Interaction filtering, applied before the split.

    Args:
        rating_threshold: keep ratings ≥ this; None (default) keeps every interaction. Every kept interaction is
            a positive, so the preprocessing report counts the ratings <= 0 that are kept (without a threshold, a
            -5 counts as a positive and is reported as one) and the negative ratings.
        min_user_interactions: iterative k-core on users (0 = off).
        min_item_interactions: iterative k-core on items (0 = off).
        duplicates: ``latest`` (default), ``first`` or ``keep`` for repeated (user, item) pairs.
    """

    rating_threshold: float | None = None
    min_user_interactions: int = 0
    min_item_interactions: int = 0
    duplicates: str = "latest"

    def __post_init__(self) -> None:
        # Refused when the options are read, before any data is loaded.
        if self.duplicates not in ("latest", "first", "keep"):
            raise DataError(f"--data.preprocess.duplicates must be latest, first or keep, not {self.duplicates!r}")
        for name in ("min_user_interactions", "min_item_interactions"):
            if getattr(self, name) < 0:
                raise DataError(f"--data.preprocess.{name} must be >= 0 (0 = off), got {getattr(self, name)}")
        if self.rating_threshold is not None and not np.isfinite(self.rating_threshold):
            # NaN would drop every row (no comparison holds), -inf keep every one: neither is a threshold.
            raise UsageError(f"--data.preprocess.rating_threshold must be a finite number or null, got "
                             f"{self.rating_threshold}")


#: the split methods of ``--data.split.method`` (see :class:`SplitSpec`).
SplitMethod = Literal["auto", "random", "temporal", "loo", "global_temporal", "predefined"]


@dataclass
class SplitSpec:
    """How to split the log.

    Args:
        method: ``auto`` (default: the dataset's own split when it ships one, as the NGCF/LightGCN train/test files
            do, else ``random``), ``random`` (per-user ratio), ``temporal`` (per-user ratio by time), ``loo``
            (leave-one-out by time), ``global_temporal`` (one time cut) or ``predefined`` (the dataset's own split).
        ratios: train / valid / test shares for the ratio methods.
        seed: seed of the random split and of ``valid_from_train``.
        valid_from_train: a share of each user's training interactions (e.g. 0.1) moved into a validation part,
            for a split without one; 0 keeps the split as it is.
        cold_items: the cold-item protocol: hold a set of items out entirely (every interaction with them goes to
            test, none to train or valid; the rest is split by ``method`` as usual) and rank the full catalogue,
            them included. A share of the catalogue drawn with ``seed`` (``0.1``), or a condition on a numeric item
            column (``year>=2000``). None (default) is off. ``recsys fit`` then also writes ``cold_metrics.json``
            (:func:`recsys.metrics.cold.cold_item_metrics`).
    """

    method: SplitMethod = "auto"
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 2026
    valid_from_train: float = 0.0
    cold_items: float | str | None = None

    def __post_init__(self) -> None:
        # Refused when the options are read (exit status 2), before any data is loaded or a run directory made.
        methods = typing.get_args(SplitMethod)
        if self.method not in methods:
            import difflib

            close = difflib.get_close_matches(str(self.method), methods, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise UsageError(f"--data.split.method must be one of {', '.join(methods)}, got {self.method!r}{hint}")
        ratios = tuple(self.ratios)
        if len(ratios) != 3 or any(not 0.0 <= r <= 1.0 for r in ratios):
            raise UsageError(f"--data.split.ratios must be three shares (train, valid, test) in [0, 1], got "
                             f"{list(ratios)}")
        if abs(sum(ratios) - 1.0) > 1e-6:
            raise UsageError(f"--data.split.ratios must sum to 1 (train, valid, test), got {list(ratios)} "
                             f"(sum {sum(ratios):g})")
        if ratios[0] == 0.0:
            raise UsageError(f"--data.split.ratios: the train share must be above 0, got {list(ratios)}")
        if not 0.0 <= self.valid_from_train < 1.0:
            raise UsageError(f"--data.split.valid_from_train must be in [0, 1) (0 = off), got "
                             f"{self.valid_from_train}")
        if isinstance(self.cold_items, (int, float)) and not isinstance(self.cold_items, bool) \
                and not 0.0 < self.cold_items < 1.0:
            raise UsageError(f"--data.split.cold_items must be a share in (0, 1), a condition such as "
                             f"'year>=2000', or null, got {self.cold_items!r}")


def _align(table, key: str, vocab: Vocabulary):
    """Reorder a side table so that row i describes vocabulary row i (missing rows are NaN)."""
    if table is None or key not in table:
        return None
    t = table.drop_duplicates(key, keep="last").set_index(key)
    ids = vocab.ids
    try:
        t.index = t.index.astype(ids.dtype) if ids.dtype != object else t.index.astype(str)
    except (TypeError, ValueError):
        t.index = t.index.astype(str)
        ids = ids.astype(str)
    missing = int((~np.isin(ids, t.index.to_numpy())).sum())
    if missing:
        log.info("%d of %d %ss have no side-table row", missing, len(ids), key)
    return t.reindex(ids).reset_index(names=key)


def _split_note(split: SplitSpec, shipped: bool) -> str:
    method = resolve_method(split.method, shipped)
    if method == "predefined":
        return "split: the dataset's own"
    if method in ("random", "temporal", "global_temporal"):
        r = "/".join(f"{x:g}" for x in split.ratios)
        seed = f", seed {split.seed}" if method == "random" else ""
        return f"split: {method} {r}{seed}" + (" (the dataset's own split ignored)" if shipped else "")
    return f"split: {method}" + (" (the dataset's own split ignored)" if shipped else "")


def _check_fits(raw, preprocessing: Preprocess, split: SplitSpec) -> None:
    """Refuse options the dataset cannot satisfy, naming the option (the splitters' own checks cannot)."""
    columns = raw.interactions.columns
    if preprocessing.rating_threshold is not None and "rating" not in columns:
        raise DataError(f"--data.preprocess.rating_threshold is set but {raw.name!r} has no rating column")
    method = resolve_method(split.method, "split" in columns)
    if method == "predefined" and "split" not in columns:
        raise DataError(f"--data.split.method predefined needs a dataset with its own split, and {raw.name!r} has "
                        "none")
    if method in ("temporal", "loo", "global_temporal") and "timestamp" not in columns:
        raise DataError(f"--data.split.method {method} needs timestamps, and {raw.name!r} has none")


def _check_split_feasible(labels: np.ndarray, users: np.ndarray, split: SplitSpec, method: str, name: str) -> None:
    """Refuse a split that leaves nothing to train on, or holds out nothing when the split asks for held-out parts.

    Checked before anything is trained or written: a run either has the parts its split promises, or fails here.
    A split that holds out nothing by design (``--data.split.ratios [1,0,0]``, the refit on all data) passes, and
    so does one with a test part but no validation part (trained without early stopping, as documented).

    Raises:
        DataError: no training interaction, or valid and test both empty although the split asks for them.
    """
    counts = np.bincount(labels, minlength=3)
    most = int(np.bincount(users).max()) if len(users) else 0
    if counts[TRAIN] == 0:
        raise DataError(f"the {method!r} split of {name!r} leaves no training interaction (valid {counts[VALID]}, "
                        f"test {counts[TEST]}): give training a share, e.g. --data.split.ratios [0.8,0.1,0.1]")
    wants_held_out = method in ("loo", "predefined") or split.ratios[1] > 0 or split.ratios[2] > 0
    if wants_held_out and counts[VALID] == 0 and counts[TEST] == 0:
        # Every per-user splitter keeps a user's only interaction in training.
        why = ("every user has fewer than 2 interactions" if most < 2
               else f"the {method!r} split of {name!r} holds nothing out")
        raise DataError(f"valid and test are empty: {why}, so nothing could be evaluated; use data with longer "
                        "user histories, --data.split.method global_temporal, or --data.split.ratios [1,0,0] to "
                        "train on everything without evaluation")


def prepare(raw, preprocessing: Preprocess = Preprocess(), split: SplitSpec = SplitSpec()) -> PreparedData:
    """Preprocess, encode and split a ``RawDataset``; logs every dropped row.

    Args:
        raw: a ``recsys.datasets.RawDataset``.
        preprocessing: filtering options.
        split: the split to make.

    Raises:
        DataError: an option the dataset cannot satisfy (a split that needs timestamps, ...), or preprocessing
            left no interaction.
    """
    _check_fits(raw, preprocessing, split)
    df, report = preprocess(raw.interactions, rating_threshold=preprocessing.rating_threshold,
                            min_user_interactions=preprocessing.min_user_interactions,
                            min_item_interactions=preprocessing.min_item_interactions,
                            duplicates=preprocessing.duplicates)
    if len(df) == 0:
        # The report is in the message: logged as well, it would print twice.
        raise DataError(f"no interactions left in {raw.name!r} after preprocessing ({report}); relax "
                        "--data.preprocess.*")
    log.info("%s: %s", raw.name, report)
    user_vocab = Vocabulary.from_values(df["user"].to_numpy(), "user")
    item_vocab = Vocabulary.from_values(df["item"].to_numpy(), "item")
    users = user_vocab.encode(df["user"].to_numpy())
    items = item_vocab.encode(df["item"].to_numpy())
    ts = df["timestamp"].to_numpy(np.int64) if "timestamp" in df else None
    predefined = None
    if "split" in df:
        predefined = df["split"].map(SPLIT_NAMES).to_numpy()
    item_table = _align(raw.items, "item", item_vocab)
    cold = None
    keep = slice(None)
    if split.cold_items is not None:
        from recsys.data.splits import cold_item_rows

        cold = cold_item_rows(split.cold_items, len(item_vocab), item_table, split.seed)
        if len(cold) == 0 or len(cold) == len(item_vocab):
            raise DataError(f"--data.split.cold_items {split.cold_items!r} selects {len(cold)} of "
                            f"{len(item_vocab)} items of {raw.name!r}: the protocol needs some cold and some warm "
                            "items")
        keep = ~np.isin(items, cold)
    labels = np.full(len(users), TEST, dtype=np.int8)
    labels[keep] = split_interactions(split.method, users[keep], None if ts is None else ts[keep],
                                      ratios=split.ratios, seed=split.seed,
                                      predefined=None if predefined is None else predefined[keep])
    note = _split_note(split, predefined is not None)
    if cold is not None:
        note += (f"; cold items {split.cold_items!r}: {len(cold)} items held out entirely, their "
                 f"{int((~keep).sum())} interactions all in test")
    if split.valid_from_train:
        if (labels == VALID).any():
            raise DataError(f"--data.split.valid_from_train carves a validation part from training, and the "
                            f"{resolve_method(split.method, predefined is not None)!r} split of {raw.name!r} "
                            "already has one: set it to 0, or split without one (e.g. --data.split.ratios "
                            "[0.8,0,0.2])")
        labels = carve_valid(labels, users, split.valid_from_train, split.seed)
        note += f", validation carved from train ({split.valid_from_train:g} per user, seed {split.seed})"
    _check_split_feasible(labels, users, split, resolve_method(split.method, predefined is not None), raw.name)
    data = PreparedData(user_vocab, item_vocab, users, items, labels, ts, item_table=item_table,
                        user_table=_align(raw.users, "user", user_vocab), name=raw.name, split_note=note,
                        cold_items=cold)
    # The summary is not logged here: the commands print it once (``recsys fit``, ``recsys data``).
    return data
