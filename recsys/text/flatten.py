"""Item text: flatten an item's key-value attributes into one "sentence" a language model can read.

``title: Toy Story genres: Animation Children Comedy year: 1995 tags: pixar`` — the attribute-flattening used by
text-based recommenders (Recformer, Li et al., KDD 2023; AlphaRec, Sheng et al., ICLR 2025). The same truncated
(key, value) pairs are exposed for models that need the structure (Recformer's key/value token types), and the
flattened text carries the character spans of every key and value.

Everything here is deterministic: the same table and options give byte-identical texts (the LM cache is keyed by
the text, so any drift would silently re-encode).
"""

from __future__ import annotations

import contextlib
import gc
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["FlatText", "DEFAULT_EXCLUDE", "format_value", "item_attributes", "flatten_pairs", "flatten_table",
           "item_texts"]

#: Columns never used as text by default: row keys, not descriptions.
DEFAULT_EXCLUDE = ("item", "user")


@dataclass(frozen=True)
class FlatText:
    """One flattened item.

    Args:
        text: ``"key: value key: value ..."``.
        pairs: the (key, value) pairs after truncation, in text order.
        spans: per pair, ``(key_start, key_end, value_start, value_end)`` character offsets into ``text``
            (``text[key_start:key_end] == key``), for mapping tokenizer offsets to key/value token types.
    """

    text: str
    pairs: tuple[tuple[str, str], ...]
    spans: tuple[tuple[int, int, int, int], ...]


# pandas' missing-value singletons, recognised by type name: importing pandas here would make ``import recsys.text``
# cost seconds, and tables reach these functions already built.
_PANDAS_MISSING = ("NAType", "NaTType")


def _is_missing(v) -> bool:
    if v is None:
        return True
    if isinstance(v, (float, np.floating)):
        return math.isnan(v)
    return type(v).__name__ in _PANDAS_MISSING


def format_value(v) -> str:
    """A value as text: lists and arrays joined by spaces, integral floats without ``.0``, missing values as "".

    Whitespace is collapsed so word truncation and the text are stable.
    """
    if type(v) is str:  # the common case first: this runs once per cell of the catalogue
        return " ".join(v.split())
    if _is_missing(v):
        return ""
    if isinstance(v, (list, tuple, np.ndarray)):
        return " ".join(s for s in map(format_value, v) if s)
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v)).lower()
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        f = float(v)
        if math.isinf(f):
            return ""
        return str(int(f)) if f.is_integer() and abs(f) < 1e15 else f"{f:g}"
    return " ".join(str(v).split())


def value_words(v) -> list[str]:
    """``format_value(v).split()``, with fast paths for the common cell types (strings, lists of strings)."""
    if type(v) is str:
        return v.split()
    if isinstance(v, (list, tuple, np.ndarray)):
        try:
            return " ".join(v).split()  # a list of strings: one join, one split
        except TypeError:  # numbers, missing values or nested lists inside
            pass
    return format_value(v).split()


def _limit(spec: int | Mapping[str, int] | None, key: str) -> int | None:
    if isinstance(spec, Mapping):
        return spec.get(key)
    return spec


def item_attributes(table, attributes: Sequence[str] | None = None, exclude: Iterable[str] = DEFAULT_EXCLUDE,
                    max_words_per_attribute: int | Mapping[str, int] | None = 32, max_words: int | None = 128,
                    key_names: Mapping[str, str] | None = None) -> list[list[tuple[str, str]]]:
    """Per row of a side table, its (key, value) pairs after truncation; the structure Recformer needs.

    Args:
        table: a pandas DataFrame (e.g. ``data.item_table``); row i describes item row i.
        attributes: columns to use, in this order (the order of the text); None = every column except
            ``exclude``, in table order. Columns named here but missing from the table are skipped.
        exclude: columns left out when ``attributes`` is None.
        max_words_per_attribute: keep the first N whitespace words of each value (an int for all, a dict per
            attribute, None for no limit).
        max_words: total budget in words (keys included); attributes are taken in order and the one that crosses
            the budget is cut, the rest dropped. The LM's tokenizer still truncates at its own ``max_length``.
        key_names: display names for columns (default: the column name with ``_`` as a space).

    Returns:
        one list of (key, value) pairs per row; missing and empty values are skipped.
    """
    with _gc_paused():
        specs, columns = _columns(table, attributes, exclude, max_words_per_attribute, key_names)
        total = max_words if max_words is not None else math.inf
        return [_row_pairs(specs, columns, r, total) for r in range(len(table))]


@contextlib.contextmanager
def _gc_paused():
    # Flattening allocates ~10 small lists per item and no reference cycles; left on, the collector runs full
    # passes over the process's whole heap (torch, pandas, Lightning) meanwhile, which triples the time.
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _columns(table, attributes, exclude, max_words_per_attribute, key_names):
    """Per used column: (display key, its length in words, the value word limit), and its cells' word lists."""
    if table is None:
        raise ValueError("no side table: text encoders need data.item_table (a dataset with item attributes)")
    cols = [c for c in (attributes if attributes is not None else table.columns) if c in table.columns]
    if attributes is None:
        excluded = set(exclude)
        cols = [c for c in cols if c not in excluded]
    specs = []
    for c in cols:
        key = (key_names or {}).get(c, str(c).replace("_", " "))
        specs.append((key, len(key.split()), _limit(max_words_per_attribute, c)))
    columns = [[value_words(v) for v in table[c].tolist()] for c in cols]
    return specs, columns


def _row_pairs(specs, columns, r: int, total: float) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    budget = total
    for (key, key_len, lim), values in zip(specs, columns):
        words = values[r]
        if not words:
            continue
        room = budget - key_len
        if room <= 0:
            break
        n = len(words) if lim is None else min(lim, len(words))
        n = int(min(room, n))
        pairs.append((key, " ".join(words[:n])))
        budget = room - n
    return pairs


def flatten_pairs(pairs: Sequence[tuple[str, str]], sep: str = ": ") -> FlatText:
    """``key: value key: value`` with the character span of every key and value."""
    parts, spans, pos = [], [], 0
    for key, value in pairs:
        if parts:
            parts.append(" ")
            pos += 1
        ks = pos
        parts += [key, sep, value]
        vs = ks + len(key) + len(sep)
        pos = vs + len(value)
        spans.append((ks, ks + len(key), vs, pos))
    return FlatText("".join(parts), tuple(map(tuple, pairs)), tuple(spans))


def flatten_table(table, attributes: Sequence[str] | None = None, **options) -> list[FlatText]:
    """Flatten every row of a side table (see :func:`item_attributes` for the options)."""
    return [flatten_pairs(p) for p in item_attributes(table, attributes, **options)]


def item_texts(table, attributes: Sequence[str] | None = None, exclude: Iterable[str] = DEFAULT_EXCLUDE,
               max_words_per_attribute: int | Mapping[str, int] | None = 32, max_words: int | None = 128,
               key_names: Mapping[str, str] | None = None) -> list[str]:
    """The flattened text of every row, e.g. ``title: Toy Story genres: Animation Children Comedy year: 1995``.

    Args:
        table: the side table (``data.item_table``).
        attributes: columns in text order (None = all but the row keys).
        exclude, max_words_per_attribute, max_words, key_names: see :func:`item_attributes`.

    Shapes:
        table: [N rows] -> N strings
    """
    # Same text as flatten_pairs(...).text, built column by column: this runs over the whole catalogue on every
    # fit, so the per-row budget walk is done only for rows whose untruncated total exceeds the budget.
    with _gc_paused():
        specs, columns = _columns(table, attributes, exclude, max_words_per_attribute, key_names)
        total = max_words if max_words is not None else math.inf
        n = len(table)
        segments, lengths = [], np.zeros(n, dtype=np.int64)
        for (key, key_len, lim), values in zip(specs, columns):
            cut = values if lim is None else [w[:lim] for w in values]
            segments.append([f"{key}: {' '.join(w)}" if w else "" for w in cut])
            lengths += np.fromiter((key_len + len(w) if w else 0 for w in cut), dtype=np.int64, count=n)
        texts = [" ".join(filter(None, row)) for row in zip(*segments)] if segments else [""] * n
        for r in np.flatnonzero(lengths > total):
            texts[r] = " ".join(f"{k}: {v}" for k, v in _row_pairs(specs, columns, int(r), total))
        return texts
