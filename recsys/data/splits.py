"""Seeded, deterministic train/valid/test splits of an encoded log.

Every splitter returns an int8 label per interaction: 0 train, 1 valid, 2 test.
"""

from __future__ import annotations

import numpy as np

from recsys.errors import DataError

TRAIN, VALID, TEST = 0, 1, 2
SPLIT_NAMES = {"train": TRAIN, "valid": VALID, "test": TEST}
#: the split methods :func:`split_interactions` knows.
SPLIT_METHODS = ("auto", "random", "temporal", "loo", "global_temporal", "predefined")


def _rank_within_user(users: np.ndarray, order_key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Position of each interaction within its user's list ordered by ``order_key``, and the user's count."""
    order = np.lexsort((order_key, users))
    counts = np.bincount(users)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    pos = np.empty(len(users), dtype=np.int64)
    pos[order] = np.arange(len(users)) - starts[users[order]]
    return pos, counts[users]


def _ratio_counts(n: np.ndarray, ratios: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Per-user valid and test sizes.

    Valid and test get ``floor(ratio * n)`` each; a part whose share is between 0 and 1 interaction gets one,
    as long as the train part keeps more than one. This matches RecBole's ``RS`` split so numbers compare.
    """
    r_train, r_valid, r_test = ratios
    n_valid = np.floor(r_valid * n).astype(np.int64)
    n_test = np.floor(r_test * n).astype(np.int64)
    n_train = n - n_valid - n_test
    # RecBole walks from the last part to the first, topping up parts with a fractional share below one.
    for part, r in ((n_test, r_test), (n_valid, r_valid)):
        bump = (n_train > 1) & (r * n > 0) & (r * n < 1)
        part += bump
        n_train -= bump
    return n_valid, n_test


def _assign(pos: np.ndarray, count: np.ndarray, n_valid: np.ndarray, n_test: np.ndarray) -> np.ndarray:
    n_train = count - n_valid - n_test
    labels = np.full(len(pos), TRAIN, dtype=np.int8)
    labels[pos >= n_train] = VALID
    labels[pos >= n_train + n_valid] = TEST
    return labels


def random_split(users: np.ndarray, ratios=(0.8, 0.1, 0.1), seed: int = 2026) -> np.ndarray:
    """Per-user random split by ratio.

    Args:
        users: the user row of every interaction.
        ratios: train, valid, test shares.
        seed: the permutation seed.

    Shapes:
        users: [N] -> labels: [N] int8
    """
    rng = np.random.default_rng(seed)
    pos, count = _rank_within_user(users, rng.permutation(len(users)))
    n_valid, n_test = _ratio_counts(count, tuple(ratios))
    return _assign(pos, count, n_valid, n_test)


def temporal_split(users: np.ndarray, timestamps: np.ndarray, ratios=(0.8, 0.1, 0.1)) -> np.ndarray:
    """Per-user temporal split by ratio: each user's latest interactions form valid, then test.

    Ties in time keep file order.
    """
    pos, count = _rank_within_user(users, _time_key(timestamps))
    n_valid, n_test = _ratio_counts(count, tuple(ratios))
    return _assign(pos, count, n_valid, n_test)


def leave_one_out(users: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
    """Leave-one-out by time: the last interaction is test, the second-to-last valid, the rest train.

    A user with two interactions gets train + test; with one, train only.
    """
    pos, count = _rank_within_user(users, _time_key(timestamps))
    n_test = (count >= 2).astype(np.int64)
    n_valid = (count >= 3).astype(np.int64)
    return _assign(pos, count, n_valid, n_test)


def global_temporal_split(timestamps: np.ndarray, ratios=(0.8, 0.1, 0.1)) -> np.ndarray:
    """A global time cut: the earliest share trains, the next validates, the latest tests."""
    order = np.argsort(_time_key(timestamps), kind="stable")
    n = len(order)
    n_train = int(round(ratios[0] * n))
    n_valid = int(round(ratios[1] * n))
    labels = np.full(n, TEST, dtype=np.int8)
    labels[order[:n_train]] = TRAIN
    labels[order[n_train:n_train + n_valid]] = VALID
    return labels


def carve_valid(labels: np.ndarray, users: np.ndarray, fraction: float, seed: int = 2026) -> np.ndarray:
    """Move a seeded per-user share of each user's training interactions into the validation part.

    For a split that ships without one (the NGCF/LightGCN train/test files): early stopping then selects on data
    the test never sees. Per-user counts follow :func:`random_split`'s rounding, so every user keeps a training item.

    Args:
        labels: the split's labels (must have no validation interactions).
        users: the user row of every interaction.
        fraction: the share of each user's training interactions to move, in (0, 1).
        seed: the carve's seed.

    Shapes:
        labels, users: [N] -> [N] int8
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"data.split.valid_from_train must be in (0, 1), got {fraction}")
    labels = np.asarray(labels, dtype=np.int8).copy()
    if (labels == VALID).any():
        raise ValueError("data.split.valid_from_train needs a split without a validation part, and this one has "
                         f"{int((labels == VALID).sum())} validation interactions")
    train = np.flatnonzero(labels == TRAIN)
    if len(train) == 0:
        return labels
    sub = random_split(users[train], (1.0 - fraction, fraction, 0.0), seed)
    labels[train[sub == VALID]] = VALID
    return labels


def _time_key(timestamps: np.ndarray) -> np.ndarray:
    # Stable tie-break on file position: lexsort uses the last key first, so encode position into the key.
    ts = np.asarray(timestamps, dtype=np.float64)
    return np.lexsort((np.arange(len(ts)), ts)).argsort()


def check_method(method: str) -> str:
    """``method`` if it is a known split method, else a DataError listing them (a typo is not a missing column)."""
    if method not in SPLIT_METHODS:
        raise DataError(f"unknown split method {method!r} (--data.split.method); choose one of "
                        f"{', '.join(SPLIT_METHODS)}")
    return method


def resolve_method(method: str, shipped: bool) -> str:
    """The splitter ``method`` names: ``auto`` is ``predefined`` when the dataset ships a split, else ``random``.

    Raises:
        DataError: an unknown method (the message lists the known ones).
    """
    check_method(method)
    if method == "auto":
        return "predefined" if shipped else "random"
    return method


def split_interactions(method: str, users: np.ndarray, timestamps: np.ndarray | None, *, ratios=(0.8, 0.1, 0.1),
                       seed: int = 2026, predefined: np.ndarray | None = None) -> np.ndarray:
    """Dispatch to a splitter by name: ``auto``, ``random``, ``temporal``, ``loo``, ``global_temporal`` or
    ``predefined``; ``auto`` is the dataset's own split when it ships one (``predefined`` given), else ``random``."""
    method = resolve_method(method, predefined is not None)
    if method == "random":
        return random_split(users, ratios, seed)
    if method == "predefined":
        if predefined is None:
            raise DataError("split 'predefined' needs a dataset with a 'split' column")
        return predefined.astype(np.int8)
    if timestamps is None:
        raise DataError(f"split {method!r} needs timestamps, and the log has none")
    if method == "temporal":
        return temporal_split(users, timestamps, ratios)
    if method == "loo":
        return leave_one_out(users, timestamps)
    return global_temporal_split(timestamps, ratios)


def cold_item_rows(rule: float | str, n_items: int, item_table=None, seed: int = 2026) -> np.ndarray:
    """The item rows a cold-item protocol holds out entirely (sorted).

    Args:
        rule: a share of the catalogue drawn at random (``0.1``), or a condition on a numeric item side-table
            column, ``COLUMN>=VALUE``, ``COLUMN>VALUE``, ``COLUMN<=VALUE`` or ``COLUMN<VALUE`` (``year>=2000``:
            the movies released from 2000 on). Items with no value in the column are never cold.
        n_items: the catalogue size.
        item_table: the item side table aligned with item rows (row i describes item row i).
        seed: the draw's seed (a share only).

    Raises:
        DataError: a share outside (0, 1), a malformed condition, or a column the side table lacks or that is not
            numeric (the message names ``--data.split.cold_items``).
    """
    opt = "--data.split.cold_items"
    if isinstance(rule, (int, float)) and not isinstance(rule, bool):
        if not 0.0 < float(rule) < 1.0:
            raise DataError(f"{opt} must be a share in (0, 1) or a condition such as 'year>=2000', got {rule!r}")
        rng = np.random.default_rng([seed, 0xC01D])
        n = max(1, int(round(float(rule) * n_items)))
        return np.sort(rng.choice(n_items, size=n, replace=False)).astype(np.int64)
    import re

    m = re.fullmatch(r"\s*([A-Za-z_][\w.-]*)\s*(>=|<=|>|<)\s*(-?[\d.]+(?:[eE][-+]?\d+)?)\s*", str(rule))
    if m is None:
        raise DataError(f"{opt} must be a share in (0, 1) or a condition COLUMN>=VALUE (also >, <=, <) on a "
                        f"numeric item column, such as 'year>=2000'; got {rule!r}")
    column, op, value = m.group(1), m.group(2), float(m.group(3))
    if item_table is None or column not in item_table:
        have = [c for c in getattr(item_table, "columns", []) if c != "item"]
        raise DataError(f"{opt} {rule!r}: the item side table has no column {column!r}"
                        + (f" (it has {', '.join(map(str, have))})" if have else " (the dataset has no item table)"))
    import pandas as pd

    col = pd.to_numeric(item_table[column], errors="coerce")
    if col.notna().sum() == 0:
        raise DataError(f"{opt} {rule!r}: column {column!r} has no numeric value")
    x = col.to_numpy(dtype=np.float64, na_value=np.nan)
    with np.errstate(invalid="ignore"):
        hit = {">=": x >= value, ">": x > value, "<=": x <= value, "<": x < value}[op]
    return np.flatnonzero(hit & ~np.isnan(x)).astype(np.int64)
