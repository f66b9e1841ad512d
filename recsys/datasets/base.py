"""The common in-memory form every dataset loader returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

__all__ = ["RawDataset"]


@dataclass
class RawDataset:
    """A dataset as loaded, before ID indexing, filtering or splitting.

    Args:
        name: dataset name (e.g. "ml-latest-small", "synthetic").
        interactions: columns "user", "item" (external IDs, int64 or str), optional "rating" (float32),
            "timestamp" (int64 unix seconds) and "split" ("train"/"valid"/"test") for datasets with a fixed split.
        items: one row per item: column "item" plus attributes (text as str, multi-valued as lists of str,
            numeric as numbers), or None.
        users: column "user" plus features (categorical as str, numeric as numbers), or None.
        meta: provenance (source, checksums, licence, citation) and, for synthetic data, the ground truth.
    """

    name: str
    interactions: pd.DataFrame
    items: pd.DataFrame | None = None
    users: pd.DataFrame | None = None
    meta: dict = field(default_factory=dict)

    @property
    def n_interactions(self) -> int:
        """Number of interaction rows."""
        return len(self.interactions)

    @property
    def n_users(self) -> int:
        """Number of distinct users with at least one interaction."""
        return int(self.interactions["user"].nunique())

    @property
    def n_items(self) -> int:
        """Number of distinct items with at least one interaction."""
        return int(self.interactions["item"].nunique())

    def summary(self) -> str:
        """One line with the name and the sizes, for logs."""
        parts = [f"{self.name}: {self.n_interactions} interactions", f"{self.n_users} users", f"{self.n_items} items"]
        if self.items is not None:
            parts.append(f"item table {len(self.items)} rows x {self.items.shape[1] - 1} attributes")
        if self.users is not None:
            parts.append(f"user table {len(self.users)} rows x {self.users.shape[1] - 1} features")
        return ", ".join(parts)
