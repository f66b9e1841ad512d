"""Paired significance tests and bootstrap confidence intervals over models' per-user metric values.

Use with :func:`recsys.metrics.per_user_metrics`: both models are evaluated on the same users, the per-user
values are aligned by user row (:func:`align_per_user`), and :func:`paired_test` compares them. Several models
against one baseline: :func:`compare_per_user` (bootstrap CIs, paired tests, Holm's correction, :func:`holm`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["align_per_user", "bootstrap_ci", "compare_per_user", "holm", "paired_test"]

_METHODS = ("ttest", "wilcoxon", "permutation")
#: index cells drawn per bootstrap / permutation chunk, so memory stays bounded on 100k-user test sets
_CHUNK_CELLS = 4_000_000


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


def paired_test(a: Any, b: Any, method: str = "ttest", *, n_permutations: int = 10_000,
                seed: int = 0) -> dict[str, float | int]:
    """Test whether two aligned per-user metric arrays differ in mean (t-test, permutation) or location (Wilcoxon).

    Args:
        a: per-user values of model A.
        b: per-user values of model B, same users in the same order as ``a``.
        method: ``"ttest"`` (paired Student t-test, ``scipy.stats.ttest_rel``), ``"wilcoxon"`` (signed-rank
            test, ``scipy.stats.wilcoxon``) or ``"permutation"`` (paired randomization test: the sign of each
            user's difference flipped at random, Monte Carlo over ``n_permutations`` draws), all two-sided.
        n_permutations: random sign flips of the permutation test (ignored by the others).
        seed: seed of the permutation test's sign flips.

    Shapes:
        a, b: ``[n]`` with n >= 2.

    Returns:
        ``{"mean_a", "mean_b", "diff" (= mean_a - mean_b), "statistic", "p_value", "n"}``. When every paired
        difference is zero both tests are undefined (0/0); the result then reports statistic 0.0 and
        p_value 1.0, i.e. no evidence of a difference. The permutation test's statistic is the mean difference and
        its p-value ``(1 + #{|flipped mean| >= |observed mean|}) / (1 + n_permutations)``, never 0.

    Raises:
        ValueError: lengths differ, fewer than 2 pairs, non-finite values, an unknown method or
            ``n_permutations < 1``.
    """
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    a = _as_1d_float(a, "a")
    b = _as_1d_float(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"a and b must be aligned per-user arrays of the same length, got {a.size} and {b.size}")
    if a.size < 2:
        raise ValueError(f"a paired test needs at least 2 pairs, got {a.size}")
    if method == "permutation" and n_permutations < 1:
        raise ValueError(f"n_permutations must be >= 1, got {n_permutations}")
    # scipy.stats takes about a second to import; only callers that test significance should pay for it.
    from scipy import stats

    mean_a, mean_b = float(a.mean()), float(b.mean())
    if np.all(a == b):
        statistic, p_value = 0.0, 1.0
    elif method == "ttest":
        res = stats.ttest_rel(a, b)
        statistic, p_value = float(res.statistic), float(res.pvalue)
    elif method == "permutation":
        statistic, p_value = _sign_flip_test(a - b, n_permutations, seed)
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


def _sign_flip_test(d: np.ndarray, n_permutations: int, seed: int) -> tuple[float, float]:
    """Mean difference and two-sided Monte Carlo p-value of the paired randomization (sign-flip) test.

    Shapes:
        d: ``[n]`` paired differences.
    """
    rng = np.random.default_rng(seed)
    observed = abs(float(d.mean()))
    # Flipped means equal to the observed one up to rounding must count as "as extreme": the identity flip
    # reproduces it exactly only in exact arithmetic.
    tol = 1e-12 * max(1.0, observed)
    hits, done = 0, 0
    per_chunk = max(1, _CHUNK_CELLS // d.size)
    while done < n_permutations:
        c = min(per_chunk, n_permutations - done)
        signs = rng.integers(0, 2, size=(c, d.size), dtype=np.int8) * 2 - 1
        hits += int(np.count_nonzero(np.abs(signs @ d) / d.size >= observed - tol))
        done += c
    return float(d.mean()), (1 + hits) / (1 + n_permutations)


def _bootstrap_counts(rng: np.random.Generator, c: int, n: int) -> np.ndarray:
    """How often each of ``n`` users is drawn in each of ``c`` resamples of size ``n`` (with replacement).

    Shapes:
        -> ``[c, n]`` float64, each row summing to n.
    """
    idx = rng.integers(0, n, size=(c, n)) + (np.arange(c) * n)[:, None]
    return np.bincount(idx.ravel(), minlength=c * n).reshape(c, n).astype(np.float64)


def bootstrap_ci(values: Any, n_resamples: int = 1000, confidence: float = 0.95,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and percentile-bootstrap confidence interval of per-user values, resampling users with replacement.

    Every column is resampled with the same draws of users, so columns of one call (several models or metrics on
    the same users) get intervals from one set of resamples, reproducible from ``seed`` alone.

    Args:
        values: per-user values, one row per user (one column per model / metric, or a 1-D array).
        n_resamples: bootstrap resamples.
        confidence: coverage of the interval, in (0, 1).
        seed: seed of the resampling.

    Shapes:
        values: ``[n]`` or ``[n, m]``; returns mean, lo, hi each ``[m]`` (``[]``-shaped scalars for 1-D input).

    Raises:
        ValueError: no users, non-finite values, ``n_resamples < 1`` or a confidence outside (0, 1).
    """
    arr = np.asarray(values.detach().cpu().numpy() if hasattr(values, "detach") else values, dtype=np.float64)
    one_d = arr.ndim == 1
    arr = arr[:, None] if one_d else arr
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise ValueError(f"values must be [n] or [n, m] with n >= 1, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("values contain NaN or infinite values")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    n = arr.shape[0]
    rng = np.random.default_rng(seed)
    means = np.empty((n_resamples, arr.shape[1]))
    per_chunk = max(1, _CHUNK_CELLS // n)
    for start in range(0, n_resamples, per_chunk):
        c = min(per_chunk, n_resamples - start)
        # Draw counts times values is the resample mean without materialising [c, n, m] gathered values.
        means[start:start + c] = _bootstrap_counts(rng, c, n) @ arr / n
    alpha = 1.0 - confidence
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2], axis=0)
    mean = arr.mean(axis=0)
    if one_d:
        return mean[0], lo[0], hi[0]
    return mean, lo, hi


def holm(p_values: Any) -> np.ndarray:
    """Holm-Bonferroni step-down adjusted p-values (controls the family-wise error rate over the family given).

    The i-th smallest of m p-values becomes ``max_{j <= i} min(1, (m - j + 1) p_(j))``; rejecting adjusted
    p-values below alpha is Holm's procedure at level alpha. NaN entries (comparisons not made) stay NaN and do
    not count towards m.

    Args:
        p_values: the family's raw p-values.

    Shapes:
        p_values: ``[m]``; returns ``[m]`` float64 in the same order.

    Raises:
        ValueError: a p-value outside [0, 1] or input that is not 1-D.
    """
    p = np.asarray(p_values, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"p_values must be 1-D, got shape {p.shape}")
    ok = ~np.isnan(p)
    if np.any((p[ok] < 0) | (p[ok] > 1)):
        raise ValueError("p-values must lie in [0, 1]")
    out = np.full(p.shape, np.nan)
    q = p[ok]
    order = np.argsort(q, kind="stable")
    m = q.size
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * q[order]))
    res = np.empty(m)
    res[order] = adjusted
    out[ok] = res
    return out


def compare_per_user(values: Any, baseline: int = 0, method: str = "ttest", n_resamples: int = 1000,
                     confidence: float = 0.95, seed: int = 0, n_permutations: int = 10_000) -> dict[str, Any]:
    """Several models on the same users: means with bootstrap CIs, and paired tests against a baseline, Holm-corrected.

    For each metric the family corrected by :func:`holm` is the comparisons of every other model with the
    baseline on that metric, so adding a metric to a report does not change another metric's p-values.

    Args:
        values: per-user values of each model and metric, users aligned across models (:func:`align_per_user`).
        baseline: index of the model the others are tested against.
        method: the paired test (:func:`paired_test`: ``ttest``, ``wilcoxon`` or ``permutation``).
        n_resamples: bootstrap resamples of the confidence intervals (:func:`bootstrap_ci`).
        confidence: interval coverage.
        seed: seed of the bootstrap (and of the permutation test).
        n_permutations: sign flips of the permutation test.

    Shapes:
        values: ``[r, n, m]`` (models, users, metrics), n >= 2. Returns ``mean``, ``lo``, ``hi``, ``diff`` (model
        minus baseline; 0 in the baseline's row), ``p`` (raw) and ``p_holm`` (NaN in the baseline's row), each
        ``[r, m]``, and ``n`` (users).

    Raises:
        ValueError: fewer than 2 users, a baseline out of range, or what :func:`paired_test` refuses.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 3 or v.shape[1] < 2:
        raise ValueError(f"values must be [models, users >= 2, metrics], got shape {v.shape}")
    r, n, m = v.shape
    if not 0 <= baseline < r:
        raise ValueError(f"baseline must index one of the {r} models, got {baseline}")
    # One [n, r*m] matrix, so every model and metric is resampled with the same draws of users.
    mean, lo, hi = (x.reshape(r, m) for x in bootstrap_ci(v.transpose(1, 0, 2).reshape(n, r * m), n_resamples,
                                                           confidence, seed))
    p = np.full((r, m), np.nan)
    for i in range(r):
        if i == baseline:
            continue
        for j in range(m):
            p[i, j] = paired_test(v[i, :, j], v[baseline, :, j], method, n_permutations=n_permutations,
                                  seed=seed)["p_value"]
    p_holm = np.stack([holm(p[:, j]) for j in range(m)], axis=1) if m else p.copy()
    return {"mean": mean, "lo": lo, "hi": hi, "diff": mean - mean[baseline], "p": p, "p_holm": p_holm, "n": n}
