"""Beyond-accuracy metrics of top-k lists: catalogue coverage, novelty and popularity bias.

All three read only the first k columns of ``ranked`` and ignore ``-1`` padding:

* ``item_coverage`` = |items appearing in any user's top-k| / n_items.
* ``novelty``       = mean over users of the mean self-information -log2(p_i) of their recommended items, with
  p_i = (train interactions of item i) / n_users.
* ``popularity_bias`` (ARP, average recommendation popularity) = mean over users of the mean train popularity
  (interaction count) of their recommended items.

Novelty and ARP average per user first, so a user with a short (padded) list weighs as much as any other;
with no padding this equals the plain mean over every recommended slot. Users whose top-k is all padding are
left out.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from recsys.metrics.ranking import _as_ranked_array

__all__ = ["item_coverage", "novelty", "popularity_bias"]


def _top_k(ranked: Any, k: int, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """Cut ``ranked`` to its first k columns and validate item rows.

    Shapes:
        ranked: ``[n_users, K]``; returns ``top`` ``[n_users, k]`` int64 with padding replaced by 0, and
        ``valid`` ``[n_users, k]`` bool (False where the slot was padding).
    """
    ranked = _as_ranked_array(ranked)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    if ranked.shape[1] < k:
        raise ValueError(f"ranked has only K={ranked.shape[1]} columns but k={k}")
    top = ranked[:, :k]
    if top.size:
        lo, hi = int(top.min()), int(top.max())
        if lo < -1 or hi >= n_items:
            raise ValueError(f"ranked item rows must lie in [-1, {n_items}) (-1 = padding), got range [{lo}, {hi}]")
    valid = top >= 0
    # Padding is pointed at item 0 so it can be used as an index; ``valid`` masks it out of every sum.
    return np.where(valid, top, 0), valid


def _per_user_mean(values: np.ndarray, valid: np.ndarray) -> float:
    """Average ``values`` within each user's valid slots, then across users with at least one valid slot.

    Shapes:
        values, valid: ``[n_users, k]``.
    """
    counts = valid.sum(axis=1)
    keep = counts > 0
    if not keep.any():
        raise ValueError("no user has a recommended item in the top k (all slots are -1 padding)")
    sums = np.where(valid, values, 0.0).sum(axis=1)
    return float(np.mean(sums[keep] / counts[keep]))


def _as_popularity(item_popularity: Any) -> np.ndarray:
    """Validate per-item train interaction counts as a 1-D float64 array.

    Shapes:
        item_popularity: ``[n_items]``.
    """
    if hasattr(item_popularity, "detach") and hasattr(item_popularity, "cpu"):
        item_popularity = item_popularity.detach().cpu().numpy()
    pop = np.asarray(item_popularity, dtype=np.float64)
    if pop.ndim != 1:
        raise ValueError(f"item_popularity must be 1-D [n_items], got shape {pop.shape}")
    if pop.size and (not np.all(np.isfinite(pop)) or pop.min() < 0):
        raise ValueError("item_popularity must hold finite, non-negative interaction counts")
    return pop


def item_coverage(ranked: Any, n_items: int, k: int) -> float:
    """Share of the catalogue that appears in at least one user's top-k list.

    Args:
        ranked: item rows in rank order; ``-1`` = no item.
        n_items: catalogue size (the denominator).
        k: cut-off.

    Shapes:
        ranked: ``[n_users, K]`` ints (numpy or torch), ``K >= k``.

    Returns:
        |union of top-k lists| / n_items, in [0, 1].
    """
    if isinstance(n_items, bool) or not isinstance(n_items, (int, np.integer)) or n_items < 1:
        raise ValueError(f"n_items must be a positive int, got {n_items!r}")
    top, valid = _top_k(ranked, k, int(n_items))
    seen = np.zeros(int(n_items), dtype=bool)
    seen[top[valid]] = True
    return float(seen.mean())


def novelty(ranked: Any, item_popularity: Any, k: int, *, n_users: int | None = None) -> float:
    """Mean self-information of recommended items (higher = less popular recommendations).

    Args:
        ranked: item rows in rank order; ``-1`` = no item.
        item_popularity: number of train interactions of each item.
        k: cut-off.
        n_users: number of train users, the denominator of p_i; defaults to ``ranked.shape[0]``.

    Shapes:
        ranked: ``[n_users, K]`` ints (numpy or torch), ``K >= k``.
        item_popularity: ``[n_items]``.

    Definition:
        p_i = max(pop_i, 1) / n_users, clipped to at most 1; novelty = mean over users of the mean of -log2(p_i)
        over their top-k items. Items never seen in training are treated as seen once so that their
        information stays finite (the largest value, log2(n_users)).
    """
    pop = _as_popularity(item_popularity)
    top, valid = _top_k(ranked, k, pop.size)
    n = top.shape[0] if n_users is None else n_users
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n_users must be a positive int, got {n!r}")
    # p > 1 only when users interact with an item repeatedly; clipping keeps information >= 0.
    p = np.minimum(np.maximum(pop, 1.0) / float(n), 1.0)
    info = -np.log2(p)
    return _per_user_mean(info[top], valid)


def popularity_bias(ranked: Any, item_popularity: Any, k: int) -> float:
    """Average recommendation popularity (ARP): mean train popularity of recommended items.

    Args:
        ranked: item rows in rank order; ``-1`` = no item.
        item_popularity: number of train interactions of each item.
        k: cut-off.

    Shapes:
        ranked: ``[n_users, K]`` ints (numpy or torch), ``K >= k``.
        item_popularity: ``[n_items]``.

    Definition:
        ARP = mean over users u of (sum over i in top-k(u) of pop_i) / |top-k(u)| (Abdollahpouri et al.).
    """
    pop = _as_popularity(item_popularity)
    top, valid = _top_k(ranked, k, pop.size)
    return _per_user_mean(pop[top], valid)
