"""From a raw dataset to :class:`PreparedData`: preprocessing, vocabularies, splits, aligned side tables."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from recsys.data.interactions import preprocess
from recsys.data.prepared import PreparedData
from recsys.data.splits import SPLIT_NAMES, split_interactions
from recsys.data.vocab import Vocabulary

log = logging.getLogger(__name__)


@dataclass
class Preprocess:
    """Interaction filtering, applied before the split.

    Args:
        rating_threshold: keep ratings ≥ this; None (default) keeps every interaction.
        min_user_interactions: iterative k-core on users (0 = off).
        min_item_interactions: iterative k-core on items (0 = off).
        duplicates: ``latest`` (default), ``first`` or ``keep`` for repeated (user, item) pairs.
    """

    rating_threshold: float | None = None
    min_user_interactions: int = 0
    min_item_interactions: int = 0
    duplicates: str = "latest"


@dataclass
class SplitSpec:
    """How to split the log.

    Args:
        method: ``random`` (per-user ratio), ``temporal`` (per-user ratio by time), ``loo`` (leave-one-out by
            time), ``global_temporal`` (one time cut) or ``predefined`` (the dataset's own split).
        ratios: train / valid / test shares for the ratio methods.
        seed: seed of the random split.
    """

    method: str = "random"
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 2026


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


def prepare(raw, preprocessing: Preprocess = Preprocess(), split: SplitSpec = SplitSpec()) -> PreparedData:
    """Preprocess, encode and split a ``RawDataset``; logs every dropped row.

    Args:
        raw: a ``recsys.datasets.RawDataset``.
        preprocessing: filtering options.
        split: the split to make.
    """
    df, report = preprocess(raw.interactions, rating_threshold=preprocessing.rating_threshold,
                            min_user_interactions=preprocessing.min_user_interactions,
                            min_item_interactions=preprocessing.min_item_interactions,
                            duplicates=preprocessing.duplicates)
    log.info("%s: %s", raw.name, report)
    if len(df) == 0:
        raise ValueError(f"no interactions left in {raw.name!r} after preprocessing ({report})")
    user_vocab = Vocabulary.from_values(df["user"].to_numpy(), "user")
    item_vocab = Vocabulary.from_values(df["item"].to_numpy(), "item")
    users = user_vocab.encode(df["user"].to_numpy())
    items = item_vocab.encode(df["item"].to_numpy())
    ts = df["timestamp"].to_numpy(np.int64) if "timestamp" in df else None
    predefined = None
    if "split" in df:
        predefined = df["split"].map(SPLIT_NAMES).to_numpy()
    labels = split_interactions(split.method, users, ts, ratios=split.ratios, seed=split.seed, predefined=predefined)
    data = PreparedData(user_vocab, item_vocab, users, items, labels, ts,
                        item_table=_align(raw.items, "item", item_vocab),
                        user_table=_align(raw.users, "user", user_vocab), name=raw.name)
    log.info("%s", data.summary())
    return data
