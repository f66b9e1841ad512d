"""Paired significance tests between two models' per-user metric values.

Use with :func:`recsys.metrics.per_user_metrics`: both models are evaluated on the same users, the per-user
values are aligned by user row (:func:`align_per_user`), and :func:`paired_test` compares them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["align_per_user", "paired_test"]

_METHODS = ("ttest", "wilcoxon")


def _as_1d_float(x: Any, name: str) -> np.ndarray:
    """Return ``x`` as a finite 1-D float64 array, or raise ValueError naming ``name``."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def paired_test(a: Any, b: Any, method: str = "ttest") -> dict[str, float | int]:
    """Test whether two aligned per-user metric arrays differ in mean (t-test) or location (Wilcoxon).

    Args:
        a: per-user values of model A.
        b: per-user values of model B, same users in the same order as ``a``.
        method: ``"ttest"`` (paired Student t-test, ``scipy.stats.ttest_rel``) or ``"wilcoxon"`` (signed-rank
            test, ``scipy.stats.wilcoxon``), both two-sided.

    Shapes:
        a, b: ``[n]`` with n >= 2.

    Returns:
        ``{"mean_a", "mean_b", "diff" (= mean_a - mean_b), "statistic", "p_value", "n"}``. When every paired
        difference is zero both tests are undefined (0/0); the result then reports statistic 0.0 and
        p_value 1.0, i.e. no evidence of a difference.

    Raises:
        ValueError: lengths differ, fewer than 2 pairs, non-finite values or an unknown method.
    """
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    a = _as_1d_float(a, "a")
    b = _as_1d_float(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"a and b must be aligned per-user arrays of the same length, got {a.size} and {b.size}")
    if a.size < 2:
        raise ValueError(f"a paired test needs at least 2 pairs, got {a.size}")
    # scipy.stats takes about a second to import; only callers that test significance should pay for it.
    from scipy import stats

    mean_a, mean_b = float(a.mean()), float(b.mean())
    if np.all(a == b):
        statistic, p_value = 0.0, 1.0
    elif method == "ttest":
        res = stats.ttest_rel(a, b)
        statistic, p_value = float(res.statistic), float(res.pvalue)
    else:
        res = stats.wilcoxon(a, b)
        statistic, p_value = float(res.statistic), float(res.pvalue)
    return {"mean_a": mean_a, "mean_b": mean_b, "diff": mean_a - mean_b, "statistic": statistic,
            "p_value": p_value, "n": int(a.size)}


def align_per_user(users_a: Any, values_a: Any, users_b: Any,
                   values_b: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keep the users evaluated for both models and line their values up by user row.

    Args:
        users_a: user rows of model A's values (e.g. ``per_user_metrics(...)["users"]``); no repeats.
        values_a: model A's per-user values, aligned with ``users_a``.
        users_b: user rows of model B's values; no repeats.
        values_b: model B's per-user values, aligned with ``users_b``.

    Shapes:
        users_a, values_a: ``[n_a]``; users_b, values_b: ``[n_b]``; returns ``users`` ``[n]`` int64 (sorted),
        ``a`` ``[n]`` and ``b`` ``[n]`` float64, n = |users_a ∩ users_b|.

    Raises:
        ValueError: a users/values length mismatch or a user listed twice.
    """
    ua = np.asarray(users_a, dtype=np.int64).ravel()
    ub = np.asarray(users_b, dtype=np.int64).ravel()
    va = _as_1d_float(values_a, "values_a")
    vb = _as_1d_float(values_b, "values_b")
    if ua.size != va.size or ub.size != vb.size:
        raise ValueError(f"users and values must have equal lengths, got a: {ua.size} vs {va.size}, "
                         f"b: {ub.size} vs {vb.size}")
    for name, u in (("users_a", ua), ("users_b", ub)):
        if np.unique(u).size != u.size:
            raise ValueError(f"{name} lists a user more than once")
    users, ia, ib = np.intersect1d(ua, ub, assume_unique=True, return_indices=True)
    return users.astype(np.int64), va[ia], vb[ib]
