"""Readers for interaction and side tables with precise, fixable validation errors.

Every bad-input problem raises :class:`recsys.errors.DataError` naming the file, the column and the first
offending 0-based data row (header excluded), so that a user can open the file and fix it.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recsys.errors import DataError

__all__ = ["SPLIT_VALUES", "read_interactions", "read_side_table", "read_table"]

#: Allowed values of a fixed-split column.
SPLIT_VALUES = ("train", "valid", "test")
_SPLIT_ALIASES = {"train": "train", "training": "train", "valid": "valid", "val": "valid", "validation": "valid",
                  "dev": "valid", "test": "test", "testing": "test"}

_PARQUET_SUFFIXES = {".parquet", ".pq", ".parq"}
_SUFFIX_SEP = {".csv": ",", ".tsv": "\t", ".tab": "\t"}
# A separator character that never occurs in text data, used to turn multi-character separators such as "::"
# into one the fast C parser accepts.
_UNIT_SEP = "\x1f"

Source = str | os.PathLike | pd.DataFrame


def _label(source: Any, name: str | None) -> str:
    if name is not None:
        return name
    if isinstance(source, pd.DataFrame):
        return "<DataFrame>"
    return str(source)


def _sniff_text_sep(path: Path, encoding: str) -> str | None:
    """Guess the separator of a .txt/.dat file from its first line; None means runs of whitespace."""
    with open(path, encoding=encoding, errors="replace") as fh:
        first = fh.readline()
    for sep in ("::", "\t", ",", "|", ";"):
        if sep in first:
            return sep
    return None


def read_table(path: str | os.PathLike, sep: str | None = None, *, header: int | str | None = "infer",
               names: list[str] | None = None, encoding: str = "utf-8", quoting: int | None = None,
               dtype: dict[str, Any] | None = None) -> pd.DataFrame:
    """Read a CSV/TSV/text table or a Parquet file into a DataFrame.

    Only empty fields count as missing (so an ID such as "NA" stays a string). The separator is taken from `sep`,
    else from the suffix (.csv comma, .tsv tab, .txt/.dat sniffed from the first line: "::", tab, comma, "|", ";"
    or whitespace).

    Args:
        path: the file to read (.parquet/.pq for Parquet, anything else is read as delimited text).
        sep: the field separator; multi-character literal separators such as "::" are supported.
        header: as in pandas.read_csv ("infer", None for no header row, or the header line number).
        names: column names to use (implies that the file has no header unless `header` says otherwise).
        encoding: text encoding (e.g. "latin-1" for MovieLens 100k/1m).
        quoting: a csv.QUOTE_* constant; csv.QUOTE_NONE for files whose text fields contain stray quotes.
        dtype: column -> dtype for delimited text (e.g. {"zip": str} to keep leading zeros).

    Returns:
        The table, with pandas' dtype inference.

    Raises:
        DataError: the file is missing, unreadable or empty (0 bytes or a header without data rows).
    """
    path = Path(path)
    if not path.exists():
        raise DataError("file not found", file=str(path))
    if path.is_dir():
        raise DataError("expected a file but found a directory", file=str(path))
    if path.stat().st_size == 0:
        raise DataError("empty file (0 bytes)", file=str(path))
    suffix = path.suffix.lower()
    if sep is None and suffix in _PARQUET_SUFFIXES:
        try:
            df = pd.read_parquet(path)
        except Exception as exc:  # pyarrow raises many unrelated types; the user needs the file name
            raise DataError(f"cannot read Parquet file: {exc}", file=str(path)) from exc
    else:
        if sep is None:
            sep = _SUFFIX_SEP.get(suffix) or _sniff_text_sep(path, encoding)
        kwargs: dict[str, Any] = {"header": header, "names": names, "keep_default_na": False, "na_values": [""],
                                  "encoding": encoding, "dtype": dtype}
        if quoting is not None:
            kwargs["quoting"] = quoting
        try:
            if sep is None:
                df = pd.read_csv(path, sep=r"\s+", **kwargs)
            elif len(sep) > 1:
                # The python engine is ~10x slower, so rewrite the literal separator to one character instead.
                text = path.read_text(encoding=encoding).replace(sep, _UNIT_SEP)
                kwargs["encoding"] = None
                df = pd.read_csv(io.StringIO(text), sep=_UNIT_SEP, **kwargs)
            else:
                df = pd.read_csv(path, sep=sep, **kwargs)
        except pd.errors.EmptyDataError as exc:
            raise DataError("empty file (no header and no data)", file=str(path)) from exc
        except UnicodeDecodeError as exc:
            raise DataError(f"not {encoding} text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}): a binary "
                            "file, or text in another encoding", file=str(path)) from exc
        except (pd.errors.ParserError, ValueError) as exc:
            raise DataError(f"cannot parse delimited text: {exc}", file=str(path)) from exc
    if len(df) == 0:
        raise DataError("empty file (header only, no data rows)", file=str(path))
    return df


def _load(source: Source, sep: str | None, label: str) -> pd.DataFrame:
    if isinstance(source, pd.DataFrame):
        if len(source) == 0:
            raise DataError("empty file (DataFrame has no rows)", file=label)
        return source
    return read_table(source, sep=sep)


def _require_columns(df: pd.DataFrame, columns: list[str], label: str) -> None:
    for col in columns:
        if col not in df.columns:
            available = ", ".join(repr(str(c)) for c in df.columns)
            raise DataError(f"missing column {col!r}; available columns: [{available}]", file=label, column=col)


def _first(mask: np.ndarray | pd.Series) -> int | None:
    idx = np.flatnonzero(np.asarray(mask, dtype=bool))
    return int(idx[0]) if len(idx) else None


def _check_ids(series: pd.Series, label: str, column: str) -> pd.Series:
    """Reject missing or blank IDs; keep the dtype (int64 stays int64, text stays str)."""
    bad = series.isna().to_numpy()
    if not bad.any() and not pd.api.types.is_numeric_dtype(series):
        bad = series.astype(str).str.strip().eq("").to_numpy()
    row = _first(bad)
    if row is not None:
        raise DataError("missing or empty ID", file=label, column=column, row=row)
    if pd.api.types.is_float_dtype(series):
        # A float ID column without NaN comes from e.g. "3.0" in the file; integral values are integer IDs.
        values = series.to_numpy()
        if np.all(np.mod(values, 1) == 0):
            return series.astype(np.int64)
    if pd.api.types.is_integer_dtype(series):
        return series.astype(np.int64)
    if not pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_string_dtype(series):
        # Mixed Python objects (e.g. from a DataFrame source) would not compare or hash consistently.
        return series.astype(str)
    return series


def _to_numeric(series: pd.Series, label: str, column: str, what: str) -> pd.Series:
    values = pd.to_numeric(series, errors="coerce")
    row = _first(values.isna().to_numpy() | ~np.isfinite(values.to_numpy(dtype=np.float64, na_value=np.nan)))
    if row is not None:
        raise DataError(f"non-numeric {what} {series.iloc[row]!r}", file=label, column=column, row=row)
    return values


_EPOCH = pd.Timestamp("1970-01-01", tz="UTC")


def _datetimes_to_seconds(values: pd.Series) -> pd.Series:
    if values.dt.tz is None:
        values = values.dt.tz_localize("UTC")
    return (values - _EPOCH) // pd.Timedelta(seconds=1)


def _to_timestamp(series: pd.Series, label: str, column: str) -> pd.Series:
    """Unix seconds from int/float seconds or ISO datetime strings (naive ones are taken as UTC)."""
    if pd.api.types.is_datetime64_any_dtype(series):
        out = _datetimes_to_seconds(series)
    else:
        out = pd.to_numeric(series, errors="coerce")
        todo = out.isna().to_numpy() & series.notna().to_numpy()
        if todo.any():
            parsed = pd.to_datetime(series[todo].astype(str), errors="coerce", utc=True, format="ISO8601")
            seconds = _datetimes_to_seconds(parsed)
            out = out.astype("float64")
            out[todo] = seconds.to_numpy(dtype="float64", na_value=np.nan)
    values = out.to_numpy(dtype=np.float64, na_value=np.nan)
    row = _first(~np.isfinite(values))
    if row is not None:
        raise DataError(f"unparseable timestamp {series.iloc[row]!r} (expected unix seconds or an ISO datetime)",
                        file=label, column=column, row=row)
    return pd.Series(np.floor(values).astype(np.int64), index=series.index)


def _to_split(series: pd.Series, label: str, column: str) -> pd.Series:
    norm = series.astype(str).str.strip().str.lower().map(_SPLIT_ALIASES)
    row = _first(norm.isna().to_numpy())
    if row is not None:
        raise DataError(f"unknown split value {series.iloc[row]!r}; expected one of {list(SPLIT_VALUES)}",
                        file=label, column=column, row=row)
    return norm.astype(str)


def read_interactions(source: Source, *, user: str = "user", item: str = "item", rating: str | None = None,
                      timestamp: str | None = None, split: str | None = None, sep: str | None = None,
                      name: str | None = None) -> pd.DataFrame:
    """Read and validate an interaction table into canonical columns.

    Args:
        source: a path (CSV/TSV/text/Parquet) or a DataFrame.
        user: name of the user-ID column in the source.
        item: name of the item-ID column in the source.
        rating: name of the rating column, if any (must be numeric; becomes float32 "rating").
        timestamp: name of the timestamp column, if any (unix seconds or ISO datetimes; becomes int64 "timestamp").
        split: name of a column holding a fixed split ("train"/"valid"/"test"; "val"/"validation"/"dev" accepted).
        sep: field separator for text files (default: from the suffix).
        name: how to call the source in error messages (default: the path, or "<DataFrame>").

    Returns:
        A new DataFrame with columns user, item[, rating][, timestamp][, split] and a fresh RangeIndex.

    Raises:
        DataError: missing file/column, empty input, missing IDs, non-numeric rating or unparseable timestamp; the
            message names the file, the column as given and the first offending 0-based data row.
    """
    label = _label(source, name)
    df = _load(source, sep, label)
    wanted = [c for c in (user, item, rating, timestamp, split) if c is not None]
    _require_columns(df, wanted, label)
    df = df.reset_index(drop=True)
    out = {"user": _check_ids(df[user], label, user), "item": _check_ids(df[item], label, item)}
    if rating is not None:
        out["rating"] = _to_numeric(df[rating], label, rating, "rating").astype(np.float32)
    if timestamp is not None:
        out["timestamp"] = _to_timestamp(df[timestamp], label, timestamp)
    if split is not None:
        out["split"] = _to_split(df[split], label, split)
    return pd.DataFrame(out)


def _split_multi(series: pd.Series, separator: str) -> pd.Series:
    """Split "a|b|c" into ["a", "b", "c"] (stripped, blanks dropped); missing values become []."""
    text = series.astype(object).where(series.notna(), "").astype(str)
    parts = text.str.split(separator, regex=False)
    return pd.Series([[p.strip() for p in lst if p.strip()] for lst in parts], index=series.index, dtype=object)


def read_side_table(source: Source, *, key: str, key_as: str | None = None,
                    multi_valued: Mapping[str, str] | None = None, sep: str | None = None,
                    name: str | None = None) -> pd.DataFrame:
    """Read an item or user side table (one row per key plus attribute columns).

    Args:
        source: a path (CSV/TSV/text/Parquet) or a DataFrame.
        key: the key column in the source (e.g. "movieId").
        key_as: rename the key column to this (e.g. "item" or "user"); None keeps the name.
        multi_valued: column -> separator for columns holding several values (e.g. {"genres": "|"}); each becomes
            a list of str. Columns that already hold lists (Parquet) are kept as lists of str.
        sep: field separator for text files (default: from the suffix).
        name: how to call the source in error messages (default: the path, or "<DataFrame>").

    Returns:
        A new DataFrame with the key column first and a fresh RangeIndex.

    Raises:
        DataError: missing file/column, empty input, missing or duplicate keys (with the row of the first duplicate).
    """
    label = _label(source, name)
    df = _load(source, sep, label)
    multi_valued = dict(multi_valued or {})
    _require_columns(df, [key, *multi_valued], label)
    df = df.reset_index(drop=True).copy()
    df[key] = _check_ids(df[key], label, key)
    row = _first(df[key].duplicated(keep="first").to_numpy())
    if row is not None:
        raise DataError(f"duplicate key {df[key].iloc[row]!r}", file=label, column=key, row=row)
    for col, separator in multi_valued.items():
        first_valid = df[col].dropna()
        if len(first_valid) and isinstance(first_valid.iloc[0], (list, tuple, np.ndarray)):
            df[col] = pd.Series([[str(v) for v in x] if isinstance(x, (list, tuple, np.ndarray)) else []
                                 for x in df[col]], index=df.index, dtype=object)
        else:
            df[col] = _split_multi(df[col], separator)
    if key_as is not None and key_as != key:
        if key_as in df.columns:
            raise DataError(f"cannot rename key to {key_as!r}: a column of that name already exists", file=label,
                            column=key_as)
        df = df.rename(columns={key: key_as})
        key = key_as
    return df[[key, *[c for c in df.columns if c != key]]]
