"""Load any interaction table (CSV/TSV/Parquet, plain or compressed) plus optional item and user side tables."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recsys.data.io import is_canonical_int, read_interactions, read_side_table
from recsys.data.vocab import as_id_type
from recsys.datasets.base import RawDataset

__all__ = ["load_generic"]

log = logging.getLogger(__name__)


def _align_keys(side: pd.DataFrame, key: str, reference: pd.Series, label: str, what: str,
                meta: dict) -> pd.DataFrame:
    """Give side-table keys the interactions' ID type, exactly, and count the rows that name no known ID.

    A key matches an interaction ID when both are the same text or the same integer: ``"7"`` matches the integer
    ID 7, ``"007"`` does not (as ``'007'`` and ``'7'`` are two IDs in the interactions). Keys that cannot be of the
    interactions' type (text keys for integer IDs, an integer beyond the type's range) are dropped with the count.
    """
    keys = side[key]
    ref_dtype = reference.dtype
    if pd.api.types.is_integer_dtype(ref_dtype):
        if pd.api.types.is_integer_dtype(keys):
            converted, ok = as_id_type(keys.to_numpy(), ref_dtype)
        else:
            # Canonical integer text only, the rule that made the interaction IDs integers.
            text = keys.astype(str)
            canonical = is_canonical_int(text)
            converted, ok = as_id_type(np.where(canonical, text.to_numpy(dtype=object), "x"), ref_dtype)
            ok &= canonical
        unconvertible = int((~ok).sum())
        side = side[ok].copy()
        side[key] = converted[ok]
    else:
        unconvertible = 0
        if not pd.api.types.is_string_dtype(keys) or keys.dtype == object:
            side = side.copy()
            side[key] = keys.astype(str)
    side = side.reset_index(drop=True)
    known = side[key].isin(reference.drop_duplicates()).to_numpy()
    unknown = unconvertible + int((~known).sum())
    meta[f"{what}_rows_unknown"] = unknown
    if unknown:
        log.warning("%s: %d of %d rows name %ss that are not in the interactions (no row of the model uses them)",
                    label, unknown, len(keys), what)
    return side


def load_generic(path: str | os.PathLike | pd.DataFrame, *, user: str = "user", item: str = "item",
                 rating: str | None = None, timestamp: str | None = None, split: str | None = None,
                 sep: str | None = None, items_path: str | os.PathLike | pd.DataFrame | None = None,
                 item_key: str | None = None, multi_valued: Mapping[str, str] | None = None,
                 users_path: str | os.PathLike | pd.DataFrame | None = None, user_key: str | None = None,
                 user_multi_valued: Mapping[str, str] | None = None, name: str | None = None,
                 encoding: str = "utf-8", dtype: Mapping[str, Any] | None = None,
                 strip_ids: bool = True) -> RawDataset:
    """Load an interaction file and optional side tables into a RawDataset.

    IDs keep their identity: a text file's ID columns become integers only when every value is a canonical
    integer (``'007'`` and ``'7'`` stay two string IDs; IDs of 2**63 or more are uint64), Parquet and DataFrames
    keep their column types (see :mod:`recsys.data.io`). Compression follows the name (``.csv.gz``, ``.csv.bz2``,
    ``.csv.xz``, ``.csv.zst``). What the checks count (IDs with whitespace, side-table rows for unknown IDs,
    repeated side-table rows) is logged and kept in ``meta``.

    Args:
        path: interaction file (CSV/TSV/text/Parquet, optionally compressed) or DataFrame.
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
        encoding: text encoding of every text file (e.g. "latin-1"; default utf-8).
        dtype: per-column override for the interaction file, e.g. ``{"item": "str"}`` to keep integer-looking
            IDs as text, or ``{"item": "int"}`` to read "007" as 7; other columns take any pandas dtype.
        strip_ids: strip leading/trailing whitespace from text IDs and keys (default) or keep it; counted either
            way.

    Returns:
        RawDataset with canonical interaction columns and side tables keyed by "item" / "user".

    Raises:
        DataError: any validation failure, naming the file, column and row.
    """
    meta: dict[str, Any] = {}
    interactions = read_interactions(path, user=user, item=item, rating=rating, timestamp=timestamp, split=split,
                                     sep=sep, encoding=encoding, dtype=dtype, strip_ids=strip_ids, report=meta)
    if name is None:
        name = _stem(path) if not isinstance(path, pd.DataFrame) else "generic"
    meta["source"] = str(path) if not isinstance(path, pd.DataFrame) else "<DataFrame>"
    items = users = None
    if items_path is not None:
        label = str(items_path) if not isinstance(items_path, pd.DataFrame) else "<items DataFrame>"
        side_meta: dict[str, Any] = {}
        items = read_side_table(items_path, key=item_key or item, key_as="item", multi_valued=multi_valued, sep=sep,
                                name=label, encoding=encoding, strip_ids=strip_ids, report=side_meta)
        items = _align_keys(items, "item", interactions["item"], label, "item", meta)
        meta.update({f"items_{k}": v for k, v in side_meta.items()})
        meta["items_source"] = label
        meta["items_without_attributes"] = int((~interactions["item"].drop_duplicates().isin(items["item"])).sum())
    if users_path is not None:
        label = str(users_path) if not isinstance(users_path, pd.DataFrame) else "<users DataFrame>"
        side_meta = {}
        users = read_side_table(users_path, key=user_key or user, key_as="user", multi_valued=user_multi_valued,
                                sep=sep, name=label, encoding=encoding, strip_ids=strip_ids, report=side_meta)
        users = _align_keys(users, "user", interactions["user"], label, "user", meta)
        meta.update({f"users_{k}": v for k, v in side_meta.items()})
        meta["users_source"] = label
        meta["users_without_features"] = int((~interactions["user"].drop_duplicates().isin(users["user"])).sum())
    return RawDataset(name=name, interactions=interactions, items=items, users=users, meta=meta)


def _stem(path: str | os.PathLike) -> str:
    """The file's name without its format and compression suffixes: ``ratings`` for ``ratings.csv.gz``."""
    p = Path(path)
    if p.suffix.lower() in (".gz", ".bz2", ".xz", ".zst"):
        p = Path(p.stem)
    return p.stem
