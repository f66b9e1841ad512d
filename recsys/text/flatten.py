"""Item text: flatten an item's key-value attributes into one "sentence" a language model can read.

``title: Toy Story genres: Animation Children Comedy year: 1995 tags: pixar`` — the attribute-flattening used by
text-based recommenders (Recformer, Li et al., KDD 2023; AlphaRec, Sheng et al., ICLR 2025). The same truncated
(key, value) pairs are exposed for models that need the structure (Recformer's key/value token types), and the
flattened text carries the character spans of every key and value.

Everything here is deterministic: the same table and options give byte-identical texts (the LM cache is keyed by
the text, so any drift would silently re-encode).
"""

from __future__ import annotations

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
    if table is None:
        raise ValueError("no side table: text encoders need data.item_table (a dataset with item attributes)")
    cols = [c for c in (attributes if attributes is not None else table.columns) if c in table.columns]
    if attributes is None:
        excluded = set(exclude)
        cols = [c for c in cols if c not in excluded]
    # Per column: display key, its length in words, the per-value word limit; then values formatted column-wise.
    specs = []
    for c in cols:
        key = (key_names or {}).get(c, str(c).replace("_", " "))
        specs.append((key, len(key.split()), _limit(max_words_per_attribute, c)))
    columns = [[format_value(v).split() for v in table[c].tolist()] for c in cols]
    total = max_words if max_words is not None else math.inf
    out: list[list[tuple[str, str]]] = []
    for r in range(len(table)):
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
        out.append(pairs)
    return out


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


def item_texts(table, attributes: Sequence[str] | None = None, **options) -> list[str]:
    """The flattened text of every row, e.g. ``title: Toy Story genres: Animation Children Comedy year: 1995``.

    Args:
        table: the side table (``data.item_table``).
        attributes: columns in text order (None = all but the row keys).
        options: ``max_words_per_attribute``, ``max_words``, ``exclude``, ``key_names`` (see
            :func:`item_attributes`).

    Shapes:
        table: [N rows] -> N strings
    """
    # Same text as flatten_pairs(...).text, without the spans (this runs over whole catalogues on every fit).
    return [" ".join(f"{k}: {v}" for k, v in pairs) for pairs in item_attributes(table, attributes, **options)]
