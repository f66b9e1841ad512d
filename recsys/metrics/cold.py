"""Metrics of the cold-item protocol: how well the items held out of training entirely are ranked.

The protocol (``--data.split.cold_items``, :func:`recsys.data.splits.cold_item_rows`) puts every interaction with
a set of items in test and none in train or valid. Every item of the catalogue is ranked for each user, the cold
items included, with the user's train and valid items excluded (as for any test ranking); the relevant items are
the user's cold test items only. An ID model has nothing to place a cold item by; a text model embeds it from its
text.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from recsys.metrics.ranking import ranking_metrics


def random_expectation(n_candidates: np.ndarray, n_relevant: np.ndarray, ks=(10, 20)) -> dict[str, float]:
    """Exact expected recall@k and ndcg@k of a uniformly random ranking, averaged over users.

    A random ranking of ``n`` candidates with ``r`` relevant puts a relevant item at each position with
    probability ``r / n``: E[recall@k] = min(k, n) / n and E[ndcg@k] = (r / n) Σ_{i ≤ min(k, n)} 1/log2(i + 1) /
    IDCG@k, IDCG@k = Σ_{i ≤ min(r, k)} 1/log2(i + 1) (the definitions of :mod:`recsys.metrics.ranking`).

    Shapes:
        n_candidates, n_relevant: [U] -> {"random_recall@k", "random_ndcg@k"} floats
    """
    n = np.asarray(n_candidates, dtype=np.float64)
    r = np.asarray(n_relevant, dtype=np.float64)
    kmax = int(max(ks))
    disc = np.cumsum(1.0 / np.log2(np.arange(2, kmax + 2)))
    out = {}
    for k in ks:
        reach = np.minimum(k, n).astype(np.int64)
        out[f"random_recall@{k}"] = float(np.mean(reach / n))
        ideal = disc[np.minimum(r, k).astype(np.int64) - 1]
        out[f"random_ndcg@{k}"] = float(np.mean((r / n) * disc[reach - 1] / ideal))
    return out


def cold_item_metrics(model, data, ks=(10, 20), chunk_size: int | None = None) -> dict[str, float]:
    """Ranking metrics on the cold items of a cold-item split, with the exact random baseline beside them.

    Args:
        model: a fitted :class:`recsys.recommender.Recommender`.
        data: ``PreparedData`` made with ``--data.split.cold_items``.
        ks: cut-offs.
        chunk_size: users per scoring chunk.

    Returns:
        ``{"users": n, "cold_items": n, "recall@20": ..., "ndcg@20": ..., ..., "random_recall@20": ...,
        "random_ndcg@20": ..., "ndcg@20_vs_random": ratio}``; empty when the data has no cold items or none is in
        a test row.
    """
    from recsys.metrics.evaluate import rank_split
    from recsys.recommender import score_function

    mask = data.cold_mask()
    if mask is None:
        return {}
    test = data.csr("test")
    cold = sp.csr_matrix(test.multiply(mask[None, :].astype(np.float32)))
    cold.eliminate_zeros()
    users_cold = np.flatnonzero(np.diff(cold.indptr) > 0)
    if len(users_cold) == 0:
        return {}
    score_fn = score_function(model, data, up_to="train+valid", exclude=data.exclude_for("test"))
    users, ranked = rank_split(score_fn, data, "test", max(ks), chunk_size)
    pick = np.isin(users, users_cold)
    out = {"users": int(pick.sum()), "cold_items": int(mask.sum())}
    out.update(ranking_metrics(ranked[pick], cold[users[pick]], ks))
    excluded = np.diff(data.exclude_for("test").indptr)[users[pick]]
    out.update(random_expectation(data.n_items - excluded, np.diff(cold.indptr)[users[pick]], ks))
    for k in ks:
        out[f"ndcg@{k}_vs_random"] = out[f"ndcg@{k}"] / out[f"random_ndcg@{k}"]
    return out
