"""The full-ranking evaluator: top-k over every item for each user with held-out positives, then metrics."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from recsys.metrics.ranking import ranking_metrics
from recsys.scoring.topk import ScoreFn, topk

if TYPE_CHECKING:
    from recsys.scoring.index import IndexSpec

log = logging.getLogger(__name__)


def rank_split(score_fn: ScoreFn, data, split: str = "test", k: int = 20, chunk_size: int | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """Top-k lists for the users who have held-out items in ``split``, with the protocol's exclusions.

    Train items are excluded when ranking for validation; train and valid items when ranking for test.

    Shapes:
        -> users [U'], ranked [U', k]
    """
    relevant = data.csr(split)
    users = np.flatnonzero(np.diff(relevant.indptr) > 0)
    ranked, _ = topk(score_fn, users, data.n_items, k, data.exclude_for(split), chunk_size)
    return users, ranked


def evaluate(model, data, split: str = "test", ks=(10, 20), chunk_size: int | None = None,
             per_user_out=None, index: IndexSpec | None = None, gallery=None) -> dict[str, float]:
    """Full-ranking metrics of a model on a split (``valid`` or ``test``).

    Args:
        model: a fitted :class:`recsys.recommender.Recommender` (a trained ``RecModel``, a baseline, ...).
        data: ``PreparedData``.
        split: ``valid`` or ``test``.
        ks: cut-offs.
        chunk_size: users per scoring chunk (from a memory budget when None).
        per_user_out: a Parquet path for per-user values (external user IDs), for significance tests.
        index: the item index to rank through (:func:`recsys.scoring.index.parse_index_spec`: a Matryoshka prefix,
            coarse-to-fine, a Hamming shortlist, low-rank truncation, ...); exact scoring when None.
        gallery: an old model's scorer-prepared item table (:meth:`recsys.runs.Run.item_table_for`) that the
            queries are scored against (backward-compatible upgrades).

    Returns:
        ``{"recall@20": ..., ...}``; empty (with a logged line) when no user has held-out items in ``split``, so a
        train/test benchmark without a validation part, or a refit on all data, runs to the end.

    Shapes:
        gallery: [n_items, D_gallery]
    """
    from recsys.recommender import score_function

    if data.csr(split).nnz == 0:
        log.info("no %s interactions: no %s metrics", split, split)
        return {}
    score_fn = score_function(model, data, up_to="train" if split == "valid" else "train+valid",
                              index=index, gallery=gallery, exclude=data.exclude_for(split))
    users, ranked = rank_split(score_fn, data, split, max(ks), chunk_size)
    if per_user_out is not None:
        write_per_user(per_user_out, data, users, ranked, split, ks)
    return ranking_metrics(ranked, data.csr(split)[users], ks)


def beyond_accuracy(model, data, split: str = "test", ks=(10, 20)) -> dict[str, float]:
    """Catalogue coverage, novelty and popularity bias (ARP) of the split's top-k lists.

    Kept apart from :func:`evaluate` so that ``metrics.json`` holds exactly the keys of ``ranking_metrics``.
    """
    from recsys.metrics.beyond import item_coverage, novelty, popularity_bias
    from recsys.recommender import score_function

    if data.csr(split).nnz == 0:
        return {}
    score_fn = score_function(model, data, up_to="train" if split == "valid" else "train+valid")
    _, ranked = rank_split(score_fn, data, split, max(ks))
    pop = data.item_popularity()
    out = {}
    for k in ks:
        out[f"coverage@{k}"] = item_coverage(ranked, data.n_items, k)
        out[f"novelty@{k}"] = novelty(ranked, pop, k, n_users=data.n_users)
        out[f"arp@{k}"] = popularity_bias(ranked, pop, k)
    return out


def write_per_user(path, data, users: np.ndarray, ranked: np.ndarray, split: str, ks=(10, 20)) -> None:
    """Per-user metric values with external user IDs, written atomically to Parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from recsys.io_utils import atomic_path
    from recsys.metrics.ranking import per_user_metrics

    pu = per_user_metrics(ranked, data.csr(split)[users], ks)
    ids = data.user_vocab.decode(users[pu["users"]])
    cols = {"user": ids.tolist() if ids.dtype == object else ids}
    cols.update({k: v for k, v in pu.items() if k != "users"})
    with atomic_path(path) as tmp:
        pq.write_table(pa.table(cols), tmp)
