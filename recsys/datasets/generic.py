"""Load any interaction table (CSV/TSV/Parquet) plus optional item and user side tables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from recsys.data.io import read_interactions, read_side_table
from recsys.datasets.base import RawDataset
from recsys.errors import DataError

__all__ = ["load_generic"]


def _align_keys(side: pd.DataFrame, key: str, reference: pd.Series, label: str) -> pd.DataFrame:
    """Give side-table keys the interactions' ID dtype, so that joins on them match (e.g. "7" vs 7)."""
    keys = side[key]
    ref_numeric = pd.api.types.is_integer_dtype(reference)
    if ref_numeric and not pd.api.types.is_integer_dtype(keys):
        as_int = pd.to_numeric(keys, errors="coerce")
        bad = as_int.isna() | (as_int % 1 != 0)
        if bad.any():
            row = int(bad.to_numpy().nonzero()[0][0])
            raise DataError(f"key {keys.iloc[row]!r} is not an integer but the interaction IDs are", file=label,
                            column=key, row=row)
        side = side.copy()
        side[key] = as_int.astype("int64")
    elif not ref_numeric and pd.api.types.is_numeric_dtype(keys):
        side = side.copy()
        side[key] = keys.astype(str)
    return side


def load_generic(path: str | os.PathLike | pd.DataFrame, *, user: str = "user", item: str = "item",
                 rating: str | None = None, timestamp: str | None = None, split: str | None = None,
                 sep: str | None = None, items_path: str | os.PathLike | pd.DataFrame | None = None,
                 item_key: str | None = None, multi_valued: Mapping[str, str] | None = None,
                 users_path: str | os.PathLike | pd.DataFrame | None = None, user_key: str | None = None,
                 user_multi_valued: Mapping[str, str] | None = None, name: str | None = None) -> RawDataset:
    """Load an interaction file and optional side tables into a RawDataset.

    Args:
        path: interaction file (CSV/TSV/text/Parquet) or DataFrame.
        user: user-ID column in the interaction file.
        item: item-ID column in the interaction file.
        rating: rating column, if any.
        timestamp: timestamp column (unix seconds or ISO datetimes), if any.
        split: column holding a fixed train/valid/test split, if any.
        sep: field separator for text files (default: from the suffix); also used for the side tables.
        items_path: item side table, if any.
        item_key: key column of the item table (default: the same name as `item`).
        multi_valued: item columns holding several values, column -> separator (e.g. {"genres": "|"}).
        users_path: user side table, if any.
        user_key: key column of the user table (default: the same name as `user`).
        user_multi_valued: user columns holding several values, column -> separator.
        name: dataset name (default: the interaction file's stem, or "generic").

    Returns:
        RawDataset with canonical interaction columns and side tables keyed by "item" / "user".

    Raises:
        DataError: any validation failure, naming the file, column and row.
    """
    interactions = read_interactions(path, user=user, item=item, rating=rating, timestamp=timestamp, split=split,
                                     sep=sep)
    if name is None:
        name = Path(path).stem if not isinstance(path, pd.DataFrame) else "generic"
    meta = {"source": str(path) if not isinstance(path, pd.DataFrame) else "<DataFrame>"}
    items = users = None
    if items_path is not None:
        label = str(items_path) if not isinstance(items_path, pd.DataFrame) else "<items DataFrame>"
        items = read_side_table(items_path, key=item_key or item, key_as="item", multi_valued=multi_valued, sep=sep,
                                name=label)
        items = _align_keys(items, "item", interactions["item"], label)
        meta["items_source"] = label
        meta["items_without_attributes"] = int((~interactions["item"].drop_duplicates().isin(items["item"])).sum())
    if users_path is not None:
        label = str(users_path) if not isinstance(users_path, pd.DataFrame) else "<users DataFrame>"
        users = read_side_table(users_path, key=user_key or user, key_as="user", multi_valued=user_multi_valued,
                                sep=sep, name=label)
        users = _align_keys(users, "user", interactions["user"], label)
        meta["users_source"] = label
        meta["users_without_features"] = int((~interactions["user"].drop_duplicates().isin(users["user"])).sum())
    return RawDataset(name=name, interactions=interactions, items=items, users=users, meta=meta)
