"""Interaction logs: preprocessing (threshold, duplicates, k-core) with a drop report, and CSR matrices."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pandas and scipy load lazily: the scoring path imports this module and needs neither
    import pandas as pd
    import scipy.sparse as sp


@dataclass
class DropReport:
    """How many rows each preprocessing step removed, and why; nothing is dropped silently.

    Args:
        rows_in: rows before preprocessing.
        steps: (reason, rows dropped) per step.
        notes: what was kept but deserves a look (e.g. interactions with a rating <= 0 counted as positives).
    """

    rows_in: int = 0
    steps: list[tuple[str, int]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, reason: str, n: int) -> None:
        self.steps.append((reason, int(n)))

    def note(self, text: str) -> None:
        self.notes.append(text)

    @property
    def rows_out(self) -> int:
        return self.rows_in - sum(n for _, n in self.steps)

    def __str__(self) -> str:
        parts = [f"{n} {reason}" for reason, n in self.steps]
        text = f"{self.rows_in} rows in, {self.rows_out} kept; dropped: " + (", ".join(parts) if parts else "none")
        return text + "".join(f"; {n}" for n in self.notes)


def preprocess(df: pd.DataFrame, *, rating_threshold: float | None = None, min_user_interactions: int = 0,
               min_item_interactions: int = 0, duplicates: str = "latest") -> tuple[pd.DataFrame, DropReport]:
    """Filter an interaction log and report every dropped row.

    Every kept interaction is a positive. The rating policy is reported, never silent: with a threshold, the rows
    below it are counted as dropped, and the negative ratings and any rating <= 0 that the threshold still keeps
    are counted in a note; without one, the interactions with a rating <= 0 (a -5 "dislike", a 0 "not rated") are
    counted in a note saying they are positives.

    Args:
        df: columns ``user``, ``item`` and optionally ``rating``, ``timestamp``.
        rating_threshold: keep rows with ``rating >= threshold``; None keeps all (the default).
        min_user_interactions: iterative k-core: drop users with fewer interactions, repeated with the item rule
            until both hold.
        min_item_interactions: the item side of the k-core.
        duplicates: ``"latest"`` keeps the last (by timestamp, else by file order) of repeated (user, item) pairs;
            ``"first"`` the first; ``"keep"`` keeps all.
    """
    report = DropReport(rows_in=len(df))
    if rating_threshold is not None and "rating" not in df:
        raise ValueError("rating_threshold is set but the log has no rating column")
    if "rating" in df:
        ratings = df["rating"].to_numpy()
        keep = np.ones(len(df), dtype=bool) if rating_threshold is None else ratings >= rating_threshold
        n_negative = int((ratings < 0).sum())
        n_kept_nonpositive = int((keep & (ratings <= 0)).sum())
        if rating_threshold is not None:
            report.add(f"below rating threshold {rating_threshold}", (~keep).sum())
            if n_negative:
                report.note(f"{n_negative} negative ratings, {n_negative - int((keep & (ratings < 0)).sum())} of "
                            f"them below the threshold")
            if n_kept_nonpositive:
                report.note(f"{n_kept_nonpositive} interactions with rating <= 0 kept as positives by rating "
                            f"threshold {rating_threshold:g}")
            df = df[keep]
        elif n_kept_nonpositive:
            report.note(f"{n_kept_nonpositive} interactions with rating <= 0 counted as positives ({n_negative} "
                        "negative; --data.preprocess.rating_threshold drops ratings below it)")
    if duplicates != "keep":
        if duplicates not in ("latest", "first"):
            raise ValueError(f"duplicates must be 'latest', 'first' or 'keep', not {duplicates!r}")
        if "timestamp" in df:
            df = df.sort_values("timestamp", kind="stable")
        dup = df.duplicated(["user", "item"], keep="last" if duplicates == "latest" else "first")
        report.add(f"duplicate (user, item) pairs (kept {duplicates})", dup.sum())
        df = df[~dup]
    if min_user_interactions > 1 or min_item_interactions > 1:
        n_user_drop = n_item_drop = 0
        while True:
            uc = df["user"].map(df["user"].value_counts())
            ic = df["item"].map(df["item"].value_counts())
            bad_u = (uc < min_user_interactions).to_numpy()
            bad_i = (ic < min_item_interactions).to_numpy()
            if not (bad_u.any() or bad_i.any()):
                break
            n_user_drop += int(bad_u.sum())
            n_item_drop += int((bad_i & ~bad_u).sum())
            df = df[~(bad_u | bad_i)]
        report.add(f"users with < {min_user_interactions} interactions (k-core)", n_user_drop)
        report.add(f"items with < {min_item_interactions} interactions (k-core)", n_item_drop)
    return df.reset_index(drop=True), report


def to_csr(users: np.ndarray, items: np.ndarray, shape: tuple[int, int], values: np.ndarray | None = None
           ) -> sp.csr_matrix:
    """A user × item CSR matrix with sorted indices (binary unless ``values`` is given).

    Shapes:
        users, items: [N] int -> [n_users, n_items]
    """
    import scipy.sparse as sp

    data = np.ones(len(users), dtype=np.float32) if values is None else np.asarray(values, dtype=np.float32)
    m = sp.csr_matrix((data, (np.asarray(users), np.asarray(items))), shape=shape)
    m.sum_duplicates()
    if values is None:
        m.data[:] = 1.0
    m.sort_indices()
    return m
