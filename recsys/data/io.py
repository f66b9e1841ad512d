"""Readers for interaction and side tables with precise, fixable validation errors.

Every bad-input problem raises :class:`recsys.errors.DataError` naming the file, the column and the first
offending 0-based data row (header excluded), so that a user can open the file and fix it.

ID columns keep their identity. A text file (CSV/TSV/.txt/.dat, compressed or not) records no types, so its ID
columns are read as text and become integers only when every value is a canonical integer (``7``, ``-3``; not
``007``, ``+7``, ``7.0`` or `` 7``): ``'007'`` and ``'7'`` stay two IDs. Integers that do not fit ``int64`` but fit
``uint64`` (all non-negative, below 2**64) are ``uint64``; anything wider, or negative IDs mixed with IDs of 2**63
or more, is an error that suggests reading the column as text. Parquet files and DataFrames keep their own column
types. ``dtype={"item": "str"}`` (or ``"int"``) overrides the rule for one column.
"""

from __future__ import annotations

import bz2
import codecs
import gzip
import io
import logging
import lzma
import os
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recsys.errors import DataError, MissingDependencyError, UsageError

__all__ = ["SPLIT_VALUES", "is_canonical_int", "read_interactions", "read_side_table", "read_table"]

log = logging.getLogger(__name__)

#: Allowed values of a fixed-split column.
SPLIT_VALUES = ("train", "valid", "test")
_SPLIT_ALIASES = {"train": "train", "training": "train", "valid": "valid", "val": "valid", "validation": "valid",
                  "dev": "valid", "test": "test", "testing": "test"}

_PARQUET_SUFFIXES = {".parquet", ".pq", ".parq"}
_SUFFIX_SEP = {".csv": ",", ".tsv": "\t", ".tab": "\t"}
#: Compression inferred from the last suffix (``ratings.csv.gz``): pandas' name for it.
_COMPRESSION = {".gz": "gzip", ".bz2": "bz2", ".xz": "xz", ".zst": "zstd"}
# A separator character that never occurs in text data, used to turn multi-character separators such as "::"
# into one the fast C parser accepts.
_UNIT_SEP = "\x1f"
# How much of a text file is inspected up front (separator, NUL bytes, UTF-16 marks).
_SAMPLE_BYTES = 1 << 16
# Canonical integer text: what the integer prints as. "007", "+7", "-0" and "7.0" are not canonical.
_CANONICAL_INT = r"0|-?[1-9][0-9]*"
_ANY_INT = r"[+-]?[0-9]+"
# C0 controls and DEL: never part of a real ID (a newline inside a quoted field, or a binary file).
_CONTROL = r"[\x00-\x1f\x7f]"
# Invisible format characters (zero-width spaces and joiners, LRM/RLM, bidi embeddings and isolates, BOM): kept,
# but counted, since two IDs that print alike can differ by one.
_INVISIBLE = "[\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]"
_STR_NAMES = {"str", "string", "object", "text"}
_INT_NAMES = {"int", "integer", "int64", "uint64", "int32", "int16", "int8", "uint32", "uint16", "uint8"}

Source = str | os.PathLike | pd.DataFrame


def _label(source: Any, name: str | None) -> str:
    if name is not None:
        return name
    if isinstance(source, pd.DataFrame):
        return "<DataFrame>"
    return str(source)


def _compression(path: Path) -> str | None:
    """pandas' compression name for the file's last suffix (``.gz`` gzip, ...), or None for plain files."""
    return _COMPRESSION.get(path.suffix.lower())


def _inner_suffix(path: Path) -> str:
    """The format suffix under any compression suffix: ``.csv`` for ``ratings.csv.gz``."""
    if _compression(path) is not None:
        return Path(path.stem).suffix.lower()
    return path.suffix.lower()


def _open_bytes(path: Path, compression: str | None):
    """A binary file object over the (decompressed) content."""
    if compression is None:
        return open(path, "rb")
    if compression == "gzip":
        return gzip.open(path, "rb")
    if compression == "bz2":
        return bz2.open(path, "rb")
    if compression == "xz":
        return lzma.open(path, "rb")
    try:
        import zstandard
    except ImportError:
        raise MissingDependencyError(f"{path} is zstd-compressed: pip install zstandard (or decompress it)") from None
    return zstandard.open(path, "rb")


_DECOMPRESS_ERRORS = (OSError, EOFError, zlib.error, lzma.LZMAError)


def _read_sample(path: Path, compression: str | None) -> bytes:
    """The first bytes of the decompressed content; a corrupt or truncated archive is a one-line DataError."""
    try:
        with _open_bytes(path, compression) as fh:
            return fh.read(_SAMPLE_BYTES)
    except MissingDependencyError:
        raise
    except _DECOMPRESS_ERRORS as exc:
        raise DataError(f"cannot decompress ({compression}): {exc}", file=str(path)) from exc


def _check_text_sample(sample: bytes, path: Path, encoding: str) -> None:
    """Refuse a binary file, or UTF-16/32 text read as a byte encoding, before pandas makes a confusing error."""
    wide = codecs.lookup(encoding).name.startswith(("utf-16", "utf-32"))
    if wide:
        return
    if sample.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise DataError("UTF-16 text (it starts with a UTF-16 byte-order mark): pass encoding: utf-16 "
                        "(--option encoding=utf-16, or data.options in a config)", file=str(path))
    nul = sample.find(b"\x00")
    if nul >= 0:
        line = sample.count(b"\n", 0, nul) + 1
        raise DataError(f"a binary file, not delimited text (NUL byte at offset {nul}, line {line})", file=str(path))


def _decode_error(path: Path, compression: str | None, encoding: str) -> DataError:
    """Where the file stops being ``encoding`` text: line and byte, with the option that reads it."""
    decoder = codecs.getincrementaldecoder(encoding)()
    line, offset = 1, 0
    with _open_bytes(path, compression) as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                bad = chunk[exc.start]
                line += chunk.count(b"\n", 0, exc.start)
                return DataError(f"not {encoding} text: byte 0x{bad:02x} at offset {offset + exc.start} (line {line})"
                                 f"; a binary file, or text in another encoding: pass e.g. encoding: latin-1 "
                                 "(--option encoding=latin-1, or data.options in a config)", file=str(path))
            line += chunk.count(b"\n")
            offset += len(chunk)
    return DataError(f"not {encoding} text; pass the file's encoding (e.g. --option encoding=latin-1)",
                     file=str(path))


def _sniff_text_sep(sample: str) -> str | None:
    """Guess the separator of a .txt/.dat file from its first line; None means runs of whitespace."""
    lines = sample.splitlines()
    first = lines[0] if lines else ""
    for sep in ("::", "\t", ",", "|", ";"):
        if sep in first:
            return sep
    return None


def _check_header(sample: str, sep: str | None, path: Path) -> None:
    """Refuse a header that names a column twice: pandas would rename the second "user.1" and read the first."""
    import csv

    lines = sample.lstrip("\ufeff").splitlines()
    first = lines[0] if lines else ""
    if sep is None:
        names = first.split()
    elif len(sep) > 1:
        names = first.split(sep)
    else:
        names = next(csv.reader([first], delimiter=sep), [])
    seen: set[str] = set()
    for name in (n.strip() for n in names):
        if name and name in seen:
            raise DataError(f"the header names column {name!r} twice; rename one", file=str(path), column=name)
        seen.add(name)


def _check_encoding(encoding: str) -> None:
    try:
        codecs.lookup(encoding)
    except (LookupError, TypeError):
        raise UsageError(f"unknown text encoding {encoding!r} (the encoding option); e.g. utf-8, latin-1, cp1252, "
                         "utf-16") from None


def _read_csv_fast(path: Path, sep: str, kwargs: dict[str, Any]) -> pd.DataFrame | None:
    """pandas' pyarrow engine (text ID columns in 0.1 s per 2M rows, not 0.8 s), or None to use the C parser.

    Anything unusual (ragged rows, an integer column with empty fields, bad bytes) makes pyarrow raise, and the C
    parser then reads the file again: its errors name the line, and its type inference is the reference.
    """
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return None
    fast = dict(kwargs)
    fast["dtype"] = {c: "string[pyarrow]" if t is str else t for c, t in (kwargs.get("dtype") or {}).items()} or None
    try:
        df = pd.read_csv(path, sep=sep, engine="pyarrow", **fast)
    except Exception:  # pyarrow's many error types: the C parser's re-read reports the problem
        return None
    return df


def read_table(path: str | os.PathLike, sep: str | None = None, *, header: int | str | None = "infer",
               names: list[str] | None = None, encoding: str = "utf-8", quoting: int | None = None,
               dtype: dict[str, Any] | None = None) -> pd.DataFrame:
    """Read a CSV/TSV/text table (plain or compressed) or a Parquet file into a DataFrame.

    Only empty fields count as missing (so an ID such as "NA" stays a string). The separator is taken from `sep`,
    else from the suffix under any compression suffix (.csv comma, .tsv tab, .txt/.dat sniffed from the first
    line: "::", tab, comma, "|", ";" or whitespace). Compression is inferred from the last suffix: .gz, .bz2, .xz,
    .zst (the last needs the ``zstandard`` package). A UTF-8 byte-order mark is dropped; CRLF line ends are read
    as LF.

    Args:
        path: the file to read (.parquet/.pq for Parquet, anything else is read as delimited text).
        sep: the field separator; multi-character literal separators such as "::" are supported.
        header: as in pandas.read_csv ("infer", None for no header row, or the header line number).
        names: column names to use (implies that the file has no header unless `header` says otherwise).
        encoding: text encoding (e.g. "latin-1" for MovieLens 100k/1m).
        quoting: a csv.QUOTE_* constant; csv.QUOTE_NONE for files whose text fields contain stray quotes.
        dtype: column -> dtype for delimited text (e.g. {"zip": str} to keep leading zeros).

    Returns:
        The table, with pandas' dtype inference for the columns `dtype` does not name.

    Raises:
        DataError: the file is missing, a directory or not a regular file, unreadable, binary, not in `encoding`,
            a corrupt archive, or empty (0 bytes or a header without data rows).
        MissingDependencyError: a .zst file without the ``zstandard`` package.
        UsageError: an unknown `encoding`.
    """
    path = Path(path)
    _check_encoding(encoding)
    if not path.exists():
        raise DataError("file not found", file=str(path))
    if path.is_dir():
        raise DataError("expected a file but found a directory", file=str(path))
    if not path.is_file():
        raise DataError("not a regular file (a device, FIFO or socket)", file=str(path))
    if path.stat().st_size == 0:
        raise DataError("empty file (0 bytes)", file=str(path))
    compression = _compression(path)
    suffix = _inner_suffix(path)
    if sep is None and suffix in _PARQUET_SUFFIXES and compression is None:
        try:
            df = pd.read_parquet(path)
        except Exception as exc:  # pyarrow raises many unrelated types; the user needs the file name
            raise DataError(f"cannot read Parquet file: {' '.join(str(exc).split())[:300]}", file=str(path)) from exc
    else:
        sample = _read_sample(path, compression)
        if not sample:
            raise DataError(f"empty file (0 bytes after {compression} decompression)", file=str(path))
        _check_text_sample(sample, path, encoding)
        if sep is None:
            sep = _SUFFIX_SEP.get(suffix) or _sniff_text_sep(sample.decode(encoding, errors="replace"))
        if header == "infer" and names is None:
            _check_header(sample.decode(encoding, errors="replace"), sep, path)
        kwargs: dict[str, Any] = {"header": header, "names": names, "keep_default_na": False, "na_values": [""],
                                  "encoding": encoding, "dtype": dtype, "compression": compression}
        if quoting is not None:
            kwargs["quoting"] = quoting
        try:
            if sep is None:
                df = pd.read_csv(path, sep=r"\s+", **kwargs)
            elif len(sep) > 1:
                # The python engine is ~10x slower, so rewrite the literal separator to one character instead.
                with _open_bytes(path, compression) as fh:
                    text = fh.read().decode(encoding).replace(sep, _UNIT_SEP)
                kwargs["encoding"] = kwargs["compression"] = None
                df = pd.read_csv(io.StringIO(text), sep=_UNIT_SEP, **kwargs)
            else:
                df = _read_csv_fast(path, sep, kwargs) if quoting is None else None
                if df is None:
                    df = pd.read_csv(path, sep=sep, **kwargs)
        except pd.errors.EmptyDataError as exc:
            raise DataError("empty file (no header and no data)", file=str(path)) from exc
        except UnicodeDecodeError as exc:
            raise _decode_error(path, compression, encoding) from exc
        except (pd.errors.ParserError, ValueError) as exc:
            raise DataError(f"cannot parse delimited text: {' '.join(str(exc).split())}", file=str(path)) from exc
        except _DECOMPRESS_ERRORS as exc:
            raise DataError(f"cannot decompress ({compression}): {exc}", file=str(path)) from exc
    if len(df) == 0:
        raise DataError("empty file (header only, no data rows)", file=str(path))
    return df


def _load(source: Source, sep: str | None, label: str, *, encoding: str = "utf-8",
          dtype: Mapping[str, Any] | None = None, text_columns: tuple[str, ...] = ()) -> tuple[pd.DataFrame, bool]:
    """The source as a DataFrame, and whether it came from a text file (whose ID columns were read as text).

    Args:
        text_columns: columns to read as text from a text file (the ID columns), unless `dtype` names them.
    """
    if isinstance(source, pd.DataFrame):
        if len(source) == 0:
            raise DataError("empty file (DataFrame has no rows)", file=label)
        return source, False
    path = Path(source)
    from_text = sep is not None or _inner_suffix(path) not in _PARQUET_SUFFIXES or _compression(path) is not None
    read_dtype = {c: str for c in text_columns}
    for col, kind in (dtype or {}).items():
        if col not in text_columns:  # ID columns are read as text and converted by _ids
            read_dtype[col] = kind
    return read_table(path, sep=sep, encoding=encoding, dtype=read_dtype or None), from_text


def _require_columns(df: pd.DataFrame, columns: list[str], label: str) -> None:
    for col in columns:
        if col not in df.columns:
            available = ", ".join(repr(str(c)) for c in df.columns)
            raise DataError(f"missing column {col!r}; available columns: [{available}]", file=label, column=col)


def _plain(value: Any) -> Any:
    """A numpy scalar as the Python value it holds, so messages show 1.5, not np.float64(1.5)."""
    return value.item() if isinstance(value, np.generic) else value


def _first(mask: np.ndarray | pd.Series) -> int | None:
    idx = np.flatnonzero(np.asarray(mask, dtype=bool))
    return int(idx[0]) if len(idx) else None


def is_canonical_int(text: pd.Series) -> np.ndarray:
    """Which values are canonical integer text (``7``, ``-3``, ``0``; not ``007``, ``+7``, ``-0``, ``7.0``).

    Shapes:
        text: [N] str -> [N] bool
    """
    return text.astype(str).str.fullmatch(f"(?:{_CANONICAL_INT})").to_numpy(dtype=bool)


def _id_mode(dtype: Mapping[str, Any] | None, column: str) -> str:
    """``auto``, ``str`` or ``int``: how the `dtype` option asks for an ID column to be read."""
    kind = (dtype or {}).get(column)
    if kind is None or kind == "auto":
        return "auto"
    name = kind.__name__ if isinstance(kind, type) else str(kind)
    name = name.lower()
    if name in _STR_NAMES:
        return "str"
    if name in _INT_NAMES:
        return "int"
    raise UsageError(f"dtype of ID column {column!r} must be str or int (or auto), not {kind!r} (the dtype option)")


def _to_int_ids(values: list[int] | pd.Series, label: str, column: str, row_of=int) -> pd.Series:
    """Integer IDs at their width: int64 when they fit, else uint64, else a DataError that suggests text.

    Args:
        row_of: maps a position in `values` to the data row that errors name.
    """
    series = values if isinstance(values, pd.Series) else pd.Series(values, dtype=object)
    for dtype in (np.int64, np.uint64):
        try:
            return pd.Series(series.astype(dtype).to_numpy(), index=series.index)
        except (OverflowError, ValueError, TypeError):
            continue
    ints = [int(v) for v in series.tolist()]
    hint = f"read the column as text: dtype: {{{column}: str}} (--option 'dtype={{{column}: str}}')"
    rows = np.array([row_of(i) for i in range(len(ints))], dtype=np.int64)

    def first(flags: list[bool]) -> int:
        return int(rows[np.asarray(flags, dtype=bool)].min())

    wide = [v >= 2**64 or v < -2**63 for v in ints]
    if any(wide):
        row = first(wide)
        value = ints[int(np.flatnonzero(rows == row)[0])]
        raise DataError(f"ID {value} is beyond the 64-bit integer range; {hint}", file=label, column=column, row=row)
    huge = [v >= 2**63 for v in ints]
    row = first(huge)
    value = ints[int(np.flatnonzero(rows == row)[0])]
    neg = first([v < 0 for v in ints])
    raise DataError(f"ID {value} needs unsigned 64 bits but the column also has negative IDs (first at row {neg}), "
                    f"so no integer type holds both; {hint}", file=label, column=column, row=row)


def _text_ids(text: pd.Series, label: str, column: str, mode: str, from_text: bool, strip: bool,
              notes: dict) -> pd.Series:
    """Validate and convert text IDs (see the module docstring); counts go to `notes`.

    The checks run on the distinct values (an ID column has far fewer of them than rows), then map back.
    """
    codes, uniques = pd.factorize(text, sort=False)
    # factorize numbers values in order of first appearance: a value's first row is its code's first position.
    first_rows = np.full(len(uniques), -1, dtype=np.int64)
    first_rows[codes[::-1]] = np.arange(len(codes) - 1, -1, -1)
    counts = np.bincount(codes, minlength=len(uniques))
    u = pd.Series(uniques, dtype=str)

    def first_row(mask: np.ndarray) -> int:
        return int(first_rows[mask].min())

    stripped = u.str.strip()
    blank = stripped.eq("").to_numpy()
    if blank.any():
        raise DataError("missing or empty ID", file=label, column=column, row=first_row(blank))
    control = u.str.contains(_CONTROL, regex=True).to_numpy()
    if control.any():
        row = first_row(control)
        value = text.iloc[row]
        char = next(c for c in value if ord(c) < 32 or ord(c) == 127)
        raise DataError(f"ID {value!r} contains the control character U+{ord(char):04X}; IDs must be printable (a "
                        "newline inside a quoted field, or a damaged file?)", file=label, column=column, row=row)
    padded = (stripped != u).to_numpy()
    if padded.any():
        row = first_row(padded)
        notes["whitespace"] = (int(counts[padded].sum()), row, text.iloc[row], strip)
        if strip:
            u = stripped
    invisible = u.str.contains(_INVISIBLE, regex=True).to_numpy()
    if invisible.any():
        row = first_row(invisible)
        notes["invisible"] = (int(counts[invisible].sum()), row, text.iloc[row])
    if mode == "str" or (mode == "auto" and not from_text):
        return pd.Series(u.to_numpy()[codes], index=text.index, dtype=str)
    is_int = u.str.fullmatch(_ANY_INT).to_numpy(dtype=bool) if mode == "int" else is_canonical_int(u)
    if mode == "auto" and not is_int.all():
        return pd.Series(u.to_numpy()[codes], index=text.index, dtype=str)
    if not is_int.all():
        row = first_row(~is_int)
        raise DataError(f"ID {text.iloc[row]!r} is not an integer (dtype int was asked for this column)",
                        file=label, column=column, row=row)
    values = u if mode == "auto" else pd.Series([int(v) for v in u.tolist()], dtype=object)
    ints = _to_int_ids(values, label, column, row_of=lambda i: int(first_rows[i]))
    return pd.Series(ints.to_numpy()[codes], index=text.index)


def _ids(series: pd.Series, label: str, column: str, *, from_text: bool = False,
         dtype: Mapping[str, Any] | None = None, strip: bool = True, notes: dict | None = None) -> pd.Series:
    """An ID column, validated, with its identity kept (see the module docstring).

    Args:
        series: the column as read.
        label: the source, for messages.
        column: the column's name in the source.
        from_text: whether it was read as text from a text file (canonical integers then become integers).
        dtype: the per-column override (``str``, ``int`` or ``auto``).
        strip: strip leading/trailing whitespace from text IDs (counted either way).
        notes: filled with ``whitespace`` / ``invisible`` counts, for the caller to report.

    Raises:
        DataError: missing, blank, control characters, booleans, non-integer numbers, mixed types, out of range.
    """
    notes = {} if notes is None else notes
    mode = _id_mode(dtype, column)
    row = _first(series.isna().to_numpy())
    if row is not None:
        raise DataError("missing or empty ID", file=label, column=column, row=row)
    if pd.api.types.is_bool_dtype(series):
        raise DataError(f"boolean IDs ({_plain(series.iloc[0])!r}); IDs must be integers or strings", file=label,
                        column=column, row=0)
    if pd.api.types.is_integer_dtype(series):
        out = series.astype(np.uint64 if series.dtype == np.uint64 else np.int64)
        return out.astype(str) if mode == "str" else out
    if pd.api.types.is_float_dtype(series):
        values = series.to_numpy(dtype=np.float64)
        row = _first((np.mod(values, 1) != 0) | ~np.isfinite(values))
        if row is not None:
            raise DataError(f"non-integer numeric ID {_plain(values[row])!r}; IDs must be integers or strings",
                            file=label, column=column, row=row)
        row = _first(np.abs(values) >= 2.0**53)
        if row is not None:
            raise DataError(f"ID {_plain(values[row])!r} is stored as a float, which cannot hold integers beyond 2**53 "
                            "exactly; store the column as integers or text", file=label, column=column, row=row)
        out = series.astype(np.int64)
        return out.astype(str) if mode == "str" else out
    if pd.api.types.is_string_dtype(series) and not series.dtype == object:
        return _text_ids(series, label, column, mode, from_text, strip, notes)
    # An object column (a DataFrame, or Parquet): one Python type throughout, strings or integers.
    values = series.tolist()
    kinds = np.array(["str" if isinstance(v, str) else
                      "int" if isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) else
                      type(v).__name__ for v in values])
    row = _first((kinds != "str") & (kinds != "int"))
    if row is not None:
        raise DataError(f"unsupported ID value {values[row]!r} of type {kinds[row]}; IDs must be integers or strings",
                        file=label, column=column, row=row)
    if (kinds == "int").all():
        out = _to_int_ids([int(v) for v in values], label, column)
        out.index = series.index
        return out.astype(str) if mode == "str" else out
    if (kinds == "str").all():
        return _text_ids(series, label, column, mode, from_text, strip, notes)
    first_int, first_str = _first(kinds == "int"), _first(kinds == "str")
    raise DataError(f"mixed ID types: an integer at row {first_int} and a string at row {first_str} (7 and '7' "
                    "would be one ID or two); use one type", file=label, column=column, row=max(first_int, first_str))


def _report_id_notes(notes: dict, label: str, column: str, report: dict | None) -> None:
    """Log (and record in `report`) what the ID checks counted, once per column."""
    if "whitespace" in notes:
        n, row, example, stripped = notes["whitespace"]
        action = "stripped" if stripped else "kept (strip_ids: false), so ' u1' and 'u1' are two IDs"
        log.warning("%s: %d %s IDs had leading/trailing whitespace, %s (first at row %d: %r)", label, n, column,
                    action, row, example)
        if report is not None:
            report[f"{column}_ids_with_whitespace"] = n
    if "invisible" in notes:
        n, row, example = notes["invisible"]
        log.warning("%s: %d %s IDs contain invisible format characters (zero-width, bidi marks), kept as written "
                    "(first at row %d: %r)", label, n, column, row, example)
        if report is not None:
            report[f"{column}_ids_with_invisible_characters"] = n


def _to_numeric(series: pd.Series, label: str, column: str, what: str) -> pd.Series:
    if pd.api.types.is_bool_dtype(series):
        raise DataError(f"boolean {what} column; expected numbers", file=label, column=column, row=0)
    try:
        values = pd.to_numeric(series, errors="coerce")
    except (TypeError, ValueError):  # lists or other non-scalars from a Parquet/DataFrame column
        values = pd.Series([v if isinstance(v, (int, float, np.number)) and not isinstance(v, bool) else np.nan
                            for v in series.tolist()], index=series.index, dtype=np.float64)
    floats = values.to_numpy(dtype=np.float64, na_value=np.nan)
    row = _first(~np.isfinite(floats))
    if row is not None:
        value = _plain(series.iloc[row])
        if np.isinf(floats[row]):
            problem = f"non-finite {what} {value!r}"
        elif isinstance(value, float) and np.isnan(value):
            problem = f"missing {what} (an empty field, or NaN)"
        else:
            problem = f"non-numeric {what} {value!r}"
        raise DataError(problem, file=label, column=column, row=row)
    return values


_EPOCH = pd.Timestamp("1970-01-01", tz="UTC")


def _datetimes_to_seconds(values: pd.Series) -> pd.Series:
    if values.dt.tz is None:
        values = values.dt.tz_localize("UTC")
    return (values - _EPOCH) // pd.Timedelta(seconds=1)


def _to_timestamp(series: pd.Series, label: str, column: str) -> pd.Series:
    """Unix seconds from int/float seconds or ISO datetime strings (naive ones are taken as UTC)."""
    if pd.api.types.is_bool_dtype(series):
        raise DataError("boolean timestamp column; expected unix seconds or ISO datetimes", file=label,
                        column=column, row=0)
    if pd.api.types.is_datetime64_any_dtype(series):
        out = _datetimes_to_seconds(series)
    else:
        try:
            out = pd.to_numeric(series, errors="coerce")
        except (TypeError, ValueError):  # lists or other non-scalars from a Parquet/DataFrame column
            out = pd.Series(np.nan, index=series.index)
        todo = out.isna().to_numpy() & series.notna().to_numpy()
        if todo.any():
            parsed = pd.to_datetime(series[todo].astype(str), errors="coerce", utc=True, format="ISO8601")
            seconds = _datetimes_to_seconds(parsed)
            out = out.astype("float64")
            out[todo] = seconds.to_numpy(dtype="float64", na_value=np.nan)
    values = out.to_numpy(dtype=np.float64, na_value=np.nan)
    row = _first(~np.isfinite(values))
    if row is not None:
        raise DataError(f"unparseable timestamp {_plain(series.iloc[row])!r} (expected unix seconds or an ISO "
                        "datetime)", file=label, column=column, row=row)
    # Beyond int64 seconds the cast would wrap silently (and no calendar reaches 2.9e11 years).
    row = _first(np.abs(values) >= 2.0**62)
    if row is not None:
        raise DataError(f"timestamp {_plain(series.iloc[row])!r} is out of range (expected unix seconds)", file=label,
                        column=column, row=row)
    return pd.Series(np.floor(values).astype(np.int64), index=series.index)


def _to_split(series: pd.Series, label: str, column: str) -> pd.Series:
    norm = series.astype(str).str.strip().str.lower().map(_SPLIT_ALIASES)
    row = _first(norm.isna().to_numpy())
    if row is not None:
        raise DataError(f"unknown split value {_plain(series.iloc[row])!r}; expected one of {list(SPLIT_VALUES)}",
                        file=label, column=column, row=row)
    return norm.astype(str)


def _header_repeats(df: pd.DataFrame, columns: list[str], label: str) -> None:
    """Refuse a data row that repeats the header (two files concatenated): its values would become IDs."""
    mask = np.ones(len(df), dtype=bool)
    for col in columns:
        mask &= df[col].astype(str).str.strip().eq(str(col)).to_numpy(dtype=bool)
    row = _first(mask)
    if row is not None:
        raise DataError(f"data row {row} repeats the header ({', '.join(map(str, columns))}): were two files "
                        "concatenated? Remove the repeated header line", file=label, column=columns[0], row=row)


def read_interactions(source: Source, *, user: str = "user", item: str = "item", rating: str | None = None,
                      timestamp: str | None = None, split: str | None = None, sep: str | None = None,
                      name: str | None = None, encoding: str = "utf-8", dtype: Mapping[str, Any] | None = None,
                      strip_ids: bool = True, report: dict | None = None) -> pd.DataFrame:
    """Read and validate an interaction table into canonical columns.

    ID columns keep their identity (see the module docstring): from a text file they are read as text and become
    integers (int64, or uint64 beyond 2**63) only when every value is a canonical integer. Leading/trailing
    whitespace in text IDs is stripped (or kept with ``strip_ids=False``) and counted in a warning.

    Args:
        source: a path (CSV/TSV/text, optionally .gz/.bz2/.xz/.zst, or Parquet) or a DataFrame.
        user: name of the user-ID column in the source.
        item: name of the item-ID column in the source.
        rating: name of the rating column, if any (must be numeric; becomes float32 "rating").
        timestamp: name of the timestamp column, if any (unix seconds or ISO datetimes; becomes int64 "timestamp").
        split: name of a column holding a fixed split ("train"/"valid"/"test"; "val"/"validation"/"dev" accepted).
        sep: field separator for text files (default: from the suffix).
        name: how to call the source in error messages (default: the path, or "<DataFrame>").
        encoding: text encoding of a text file (e.g. "latin-1").
        dtype: per-column override: ``str``/``int`` for an ID column, any pandas dtype for the others.
        strip_ids: strip leading/trailing whitespace from text IDs (True) or keep it (False); counted either way.
        report: a dict to fill with what the checks counted (e.g. ``user_ids_with_whitespace``).

    Returns:
        A new DataFrame with columns user, item[, rating][, timestamp][, split] and a fresh RangeIndex.

    Raises:
        DataError: missing file/column, empty input, missing IDs, IDs out of the 64-bit range, a repeated header,
            non-numeric rating or unparseable timestamp; the message names the file, the column as given and the
            first offending 0-based data row.
    """
    label = _label(source, name)
    df, from_text = _load(source, sep, label, encoding=encoding, dtype=dtype, text_columns=(user, item))
    wanted = [c for c in (user, item, rating, timestamp, split) if c is not None]
    _require_columns(df, wanted, label)
    df = df.reset_index(drop=True)
    if from_text:
        _header_repeats(df, [user, item], label)
    out = {}
    for role, col in (("user", user), ("item", item)):
        notes: dict = {}
        out[role] = _ids(df[col], label, col, from_text=from_text, dtype=dtype, strip=strip_ids, notes=notes)
        _report_id_notes(notes, label, col, report)
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




def _duplicate_keys(df: pd.DataFrame, key: str, label: str, report: dict | None) -> pd.DataFrame:
    """Drop exact repeats of a row (counted); refuse two different rows for one key (which one would be right?)."""
    dup = df[key].duplicated(keep=False).to_numpy()
    if not dup.any():
        return df
    # Lists (Parquet) are not hashable: compare rows by their text.
    sig = df[dup].astype(str).agg("\x1f".join, axis=1)
    first_sig = sig.groupby(df.loc[dup, key].to_numpy()).transform("first")
    conflict = (sig != first_sig).to_numpy()
    if conflict.any():
        row = int(np.flatnonzero(dup)[np.flatnonzero(conflict)[0]])
        value = _plain(df[key].iloc[row])
        first = int(np.flatnonzero((df[key] == value).to_numpy())[0])
        raise DataError(f"duplicate key {value!r} with a different row than row {first}; keep one row per key",
                        file=label, column=key, row=row)
    repeats = df[key].duplicated(keep="first").to_numpy()
    n = int(repeats.sum())
    log.warning("%s: %d rows repeat an earlier row exactly (same key, same values), dropped (first at row %d)", label,
                n, _first(repeats))
    if report is not None:
        report["duplicate_rows_dropped"] = n
    return df[~repeats].reset_index(drop=True)


def read_side_table(source: Source, *, key: str, key_as: str | None = None,
                    multi_valued: Mapping[str, str] | None = None, sep: str | None = None,
                    name: str | None = None, encoding: str = "utf-8", dtype: Mapping[str, Any] | None = None,
                    strip_ids: bool = True, report: dict | None = None) -> pd.DataFrame:
    """Read an item or user side table (one row per key plus attribute columns).

    The key column follows the ID rules of :func:`read_interactions`. A row repeated exactly is dropped (counted);
    two different rows for one key are an error. Text attributes are kept as written (unicode, control
    characters and newlines inside quoted fields included).

    Args:
        source: a path (CSV/TSV/text, optionally compressed, or Parquet) or a DataFrame.
        key: the key column in the source (e.g. "movieId").
        key_as: rename the key column to this (e.g. "item" or "user"); None keeps the name.
        multi_valued: column -> separator for columns holding several values (e.g. {"genres": "|"}); each becomes
            a list of str. Columns that already hold lists (Parquet) are kept as lists of str.
        sep: field separator for text files (default: from the suffix).
        name: how to call the source in error messages (default: the path, or "<DataFrame>").
        encoding: text encoding of a text file.
        dtype: per-column override (``str``/``int`` for the key, any pandas dtype for the others).
        strip_ids: strip leading/trailing whitespace from text keys (counted either way).
        report: a dict to fill with what the checks counted.

    Returns:
        A new DataFrame with the key column first and a fresh RangeIndex.

    Raises:
        DataError: missing file/column, empty input, missing keys or conflicting rows for one key (with the row of
            the first conflicting one).
    """
    label = _label(source, name)
    df, from_text = _load(source, sep, label, encoding=encoding, dtype=dtype, text_columns=(key,))
    multi_valued = dict(multi_valued or {})
    _require_columns(df, [key, *multi_valued], label)
    df = df.reset_index(drop=True).copy()
    notes: dict = {}
    df[key] = _ids(df[key], label, key, from_text=from_text, dtype=dtype, strip=strip_ids, notes=notes)
    _report_id_notes(notes, label, key, report)
    df = _duplicate_keys(df, key, label, report)
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
