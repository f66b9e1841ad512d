"""Top-k ranking metrics (recall, precision, NDCG, MRR, hit rate, MAP) over held-out positives.

Every evaluation in the package goes through :func:`per_user_metrics` / :func:`ranking_metrics`, so the
definitions live here once:

* ``hits@k``      = number of the first k ranked items that are relevant.
* ``recall@k``    = hits@k / |rel|.
* ``precision@k`` = hits@k / k.
* ``ndcg@k``      = DCG@k / IDCG@k with binary gains, DCG@k = sum over hit positions i <= k (1-based) of
  1 / log2(i + 1), IDCG@k = the same sum over positions 1 .. min(|rel|, k) (the LightGCN / RecBole definition).
* ``mrr@k``       = 1 / (rank of the first hit) if a hit occurs within the first k, else 0.
* ``hit@k``       = 1 if hits@k > 0, else 0.
* ``map@k``       = sum over i <= k of precision@i * rel_i, divided by min(|rel|, k).

Users with no relevant item are left out (their recall is undefined); a summary is the plain mean over the
remaining users.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp

__all__ = ["METRIC_NAMES", "hit_matrix", "per_user_metrics", "ranking_metrics"]

#: The metric families computed for every k, in the order their keys appear.
METRIC_NAMES: tuple[str, ...] = ("recall", "precision", "ndcg", "mrr", "hit", "map")

# Bounds the float64 temporaries to roughly this many (user, position) cells at a time, so that
# a million users with K = 100 does not need several GiB at once; each block is fully vectorised.
_BLOCK_CELLS = 1 << 22


def _as_ranked_array(ranked: Any) -> np.ndarray:
    """Turn a numpy array or torch tensor of item rows into a 2-D int64 numpy array.

    Args:
        ranked: integer array-like, numpy or torch (any device).

    Shapes:
        ranked: ``[n_users, K]``.
    """
    if hasattr(ranked, "detach") and hasattr(ranked, "cpu"):  # torch.Tensor, without importing torch
        ranked = ranked.detach().cpu().numpy()
    arr = np.asarray(ranked)
    if arr.ndim != 2:
        raise ValueError(f"ranked must be 2-D [n_users, K], got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"ranked must hold integer item rows, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def _as_ks(ks: int | Iterable[int]) -> tuple[int, ...]:
    """Validate the cut-offs and return them as a tuple of distinct positive ints in the given order."""
    if isinstance(ks, (int, np.integer)):
        ks = (int(ks),)
    out: list[int] = []
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"every k in ks must be a positive int, got {k!r}")
        if int(k) not in out:
            out.append(int(k))
    if not out:
        raise ValueError("ks must name at least one cut-off")
    return tuple(out)


def _canonical_csr(relevant: Any) -> sp.csr_array:
    """Return ``relevant`` as CSR with sorted, duplicate-free indices and no stored zeros.

    The caller's matrix is never modified; a copy is made only when it is not canonical already.
    """
    if not sp.issparse(relevant):
        raise ValueError(f"relevant must be a scipy sparse matrix/array [n_users, n_items], got {type(relevant)}")
    csr = sp.csr_array(relevant)  # shares the caller's arrays when it already is CSR
    if csr.has_canonical_format and (csr.nnz == 0 or bool(np.all(csr.data != 0))):
        return csr
    csr = sp.csr_array(relevant, copy=True)
    # Zeros go first and the rest become 1 before merging, so duplicates such as (+1, -1) still count once.
    csr.eliminate_zeros()
    csr.data = np.ones(csr.nnz, dtype=bool)
    csr.sum_duplicates()
    return csr


def hit_matrix(ranked: Any, relevant: Any) -> tuple[np.ndarray, np.ndarray]:
    """Mark which ranked items are relevant, and count relevant items per user.

    Membership is tested in one pass over all users: each (user, item) pair becomes the key
    ``user * n_items + item``; CSR with sorted indices lists its keys in increasing order, so a single
    ``np.searchsorted`` answers every lookup.

    Args:
        ranked: item rows in rank order; ``-1`` is padding and never a hit.
        relevant: held-out positives; any stored nonzero counts as relevant.

    Shapes:
        ranked: ``[n_users, K]`` ints (numpy or torch).
        relevant: ``[n_users, n_items]`` scipy sparse.
        returns: ``hits`` ``[n_users, K]`` bool and ``n_rel`` ``[n_users]`` int64.

    Raises:
        ValueError: on mismatched user counts, item rows outside ``[-1, n_items)``, or an item listed twice
            in one user's ranking (it would be counted twice and push recall above 1).
    """
    ranked = _as_ranked_array(ranked)
    rel = _canonical_csr(relevant)
    n_users, n_items = rel.shape
    if ranked.shape[0] != n_users:
        raise ValueError(f"ranked has {ranked.shape[0]} user rows but relevant has {n_users}")
    if ranked.size:
        lo, hi = int(ranked.min()), int(ranked.max())
        if lo < -1 or hi >= n_items:
            raise ValueError(f"ranked item rows must lie in [-1, {n_items}) (-1 = padding), got range [{lo}, {hi}]")
        _check_no_duplicates(ranked)
    if n_users and n_items and n_users > (np.iinfo(np.int64).max // n_items):
        raise ValueError(f"n_users * n_items = {n_users} * {n_items} overflows the int64 key space")

    n_rel = np.diff(rel.indptr).astype(np.int64)
    rel_keys = np.repeat(np.arange(n_users, dtype=np.int64) * n_items, n_rel) + rel.indices.astype(np.int64)
    valid = ranked >= 0
    query = np.arange(n_users, dtype=np.int64)[:, None] * n_items + ranked
    pos = np.searchsorted(rel_keys, query.ravel()).reshape(ranked.shape)
    np.minimum(pos, max(rel_keys.size - 1, 0), out=pos)  # queries past the last key would index out of range
    hits = (rel_keys[pos] == query) & valid if rel_keys.size else np.zeros(ranked.shape, dtype=bool)
    return hits, n_rel


def _check_no_duplicates(ranked: np.ndarray) -> None:
    """Raise if any user's list names the same (non-padding) item twice."""
    if ranked.shape[1] < 2:
        return
    srt = np.sort(ranked, axis=1)
    dup = (srt[:, 1:] == srt[:, :-1]) & (srt[:, 1:] >= 0)
    if dup.any():
        user = int(np.flatnonzero(dup.any(axis=1))[0])
        item = int(srt[user, 1:][dup[user]][0])
        raise ValueError(f"ranked row {user} lists item {item} more than once")


def _block_metrics(hits: np.ndarray, n_rel: np.ndarray, ks: Sequence[int]) -> dict[str, np.ndarray]:
    """Per-user metrics for one block of users that all have at least one relevant item.

    Shapes:
        hits: ``[n, kmax]`` bool; n_rel: ``[n]`` int64 (all > 0).
    """
    kmax = hits.shape[1]
    positions = np.arange(1, kmax + 1, dtype=np.float64)
    discounts = 1.0 / np.log2(positions + 1.0)
    hits_f = hits.astype(np.float64)
    cum_hits = np.cumsum(hits_f, axis=1)
    cum_dcg = np.cumsum(hits_f * discounts, axis=1)
    ideal_dcg = np.cumsum(discounts)
    # precision@i counted only where item i is a hit, then summed up to k (the AP numerator).
    cum_ap = np.cumsum(hits_f * cum_hits / positions, axis=1)
    any_hit = hits.any(axis=1)
    first = np.where(any_hit, hits.argmax(axis=1), kmax)  # 0-based rank of first hit, kmax = none
    n_rel_f = n_rel.astype(np.float64)

    out: dict[str, np.ndarray] = {}
    for k in ks:  # loop over cut-offs, not users
        h = cum_hits[:, k - 1]
        ideal_n = np.minimum(n_rel, k)
        out[f"recall@{k}"] = h / n_rel_f
        out[f"precision@{k}"] = h / k
        out[f"ndcg@{k}"] = cum_dcg[:, k - 1] / ideal_dcg[ideal_n - 1]
        out[f"mrr@{k}"] = np.where(first < k, 1.0 / (first + 1.0), 0.0)
        out[f"hit@{k}"] = (h > 0).astype(np.float64)
        out[f"map@{k}"] = cum_ap[:, k - 1] / ideal_n
    return out


def per_user_metrics(ranked: Any, relevant: Any, ks: int | Iterable[int] = (10, 20)) -> dict[str, np.ndarray]:
    """Compute every ranking metric per user, for users with at least one relevant item.

    Args:
        ranked: item rows in rank order, already filtered (e.g. training items removed); ``-1`` = no item.
        relevant: held-out positives; row u belongs to row u of ``ranked``; any stored nonzero is relevant.
        ks: cut-offs; each must be ``<= K``. Only the first ``max(ks)`` columns of ``ranked`` are read
            (and validated).

    Shapes:
        ranked: ``[n_users, K]`` ints (numpy array or torch tensor).
        relevant: ``[n_users, n_items]`` scipy sparse (CSR preferred).
        returns: ``"<metric>@<k>"`` -> ``[n_eval]`` float64 for every metric in
            :data:`METRIC_NAMES` and every k, and ``"users"`` -> ``[n_eval]`` int64 row indices of the
            evaluated users (those with ``|rel| >= 1``), in increasing order.

    Definitions: see the module docstring.

    Raises:
        ValueError: ``K < max(ks)``, malformed inputs, or no user has a relevant item.
    """
    ks = _as_ks(ks)
    ranked = _as_ranked_array(ranked)
    kmax = max(ks)
    if ranked.shape[1] < kmax:
        raise ValueError(f"ranked has only K={ranked.shape[1]} columns but ks asks for k={kmax}")
    # Positions past kmax cannot change any metric@k, so they are not even looked up.
    hits, n_rel = hit_matrix(ranked[:, :kmax], relevant)
    users = np.flatnonzero(n_rel > 0).astype(np.int64)
    if users.size == 0:
        raise ValueError("no user has a relevant item: ranking metrics are undefined (is the held-out split empty?)")
    hits = hits[users]
    n_rel = n_rel[users]

    step = max(1, _BLOCK_CELLS // kmax)
    blocks = [_block_metrics(hits[s:s + step], n_rel[s:s + step], ks) for s in range(0, users.size, step)]
    out = blocks[0] if len(blocks) == 1 else {key: np.concatenate([b[key] for b in blocks]) for key in blocks[0]}
    out["users"] = users
    return out


def ranking_metrics(ranked: Any, relevant: Any, ks: int | Iterable[int] = (10, 20)) -> dict[str, float]:
    """Mean of every ranking metric over users with at least one relevant item.

    Args:
        ranked: item rows in rank order, already filtered; ``-1`` = no item (never a hit).
        relevant: held-out positives; any stored nonzero is relevant.
        ks: cut-offs; each must be ``<= K``.

    Shapes:
        ranked: ``[n_users, K]`` ints (numpy array or torch tensor).
        relevant: ``[n_users, n_items]`` scipy sparse.

    Returns:
        ``{"recall@10": ..., "precision@10": ..., "ndcg@10": ..., "mrr@10": ..., "hit@10": ..., "map@10": ...,
        ...}`` as python floats, for every k in ``ks``. Definitions: see the module docstring.

    Raises:
        ValueError: ``K < max(ks)``, malformed inputs, or no user has a relevant item.
    """
    per_user = per_user_metrics(ranked, relevant, ks)
    return {key: float(np.mean(values)) for key, values in per_user.items() if key != "users"}
