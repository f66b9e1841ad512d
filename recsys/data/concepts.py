"""Concept vocabularies: the explicit, named dimensions of an explicit-concept space (SESA).

A vocabulary is a list of concept names plus the declared item→concept (and optionally user→concept) incidence
matrices. It is built from the prepared data, from one of three sources, or from several at once:

* multi-valued item attributes (MovieLens ``genres`` and ``tags``), cleaned (lower case, unified separators) and
  kept when at least ``min_items`` items carry them;
* the synthetic dataset's ``concepts`` column (the generator's named concepts);
* a user-supplied list of names (e.g. skills) and/or an item→concept or user→concept table (CSV or Parquet with
  columns ``item``/``user`` and ``concept``).

Values outside the vocabulary are counted and logged, never silently dropped without a trace.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from recsys.errors import DataError

log = logging.getLogger(__name__)

__all__ = ["Concepts", "ConceptVocabulary", "clean_concept"]

_SEPARATORS = re.compile(r"[\s_]+")
_EDGES = re.compile(r"^[^\w]+|[^\w]+$")


def clean_concept(value) -> str:
    """A concept's canonical name: lower case, blanks and underscores collapsed to one space, outer punctuation
    stripped ("Sci-Fi" and "sci-fi " are one concept; "Film_Noir" becomes "film noir"). Empty for missing values.
    """
    if value is None or (isinstance(value, float) and value != value):
        return ""
    s = _SEPARATORS.sub(" ", str(value).lower()).strip()
    return _EDGES.sub("", s)


def _as_list(v) -> list:
    if v is None or (isinstance(v, float) and v != v):
        return []
    if isinstance(v, (list, tuple, np.ndarray)):
        return list(v)
    return [v]


@dataclass
class ConceptVocabulary:
    """Concept names and the declared concepts of items (and users).

    Args:
        names: concept names; column k of the matrices is ``names[k]``.
        items: binary item × concept matrix of declared concepts.
        users: binary user × concept matrix of declared user concepts, or None.

    Shapes:
        items: [n_items, K]; users: [n_users, K]
    """

    names: list[str]
    items: sp.csr_matrix
    users: sp.csr_matrix | None = None

    def __len__(self) -> int:
        return len(self.names)

    def item_concepts(self, item: int) -> list[str]:
        """The declared concept names of one item row."""
        r = self.items
        return [self.names[k] for k in r.indices[r.indptr[item]:r.indptr[item + 1]]]


class Concepts:
    """Where a concept vocabulary comes from (a typed config, built against the prepared data by :meth:`build`).

    Args:
        columns: multi-valued (or single-valued) item-table columns whose values are concepts, e.g.
            ``["genres", "tags"]`` for MovieLens or ``["concepts"]`` for the synthetic dataset. Columns absent
            from the table are skipped (and logged), so one list serves several datasets; a DataError is raised
            when none is present.
        min_items: keep an attribute-derived concept only if at least this many items carry it (after cleaning).
        max_concepts: keep at most this many attribute-derived concepts, most frequent first (None = all).
        exclude: cleaned values that are bookkeeping, not concepts (MovieLens' "in netflix queue").
        names: a user-supplied concept list (a file with one name per line, or a list); these concepts are always
            kept, even when no item declares them (their embedding still comes from their name).
        item_table: a user-supplied item→concept table (CSV/Parquet, columns ``item`` and ``concept``); its
            concepts join the vocabulary. Unknown item IDs raise a DataError.
        user_table: a user→concept table (columns ``user`` and ``concept``): declared user concepts (e.g. a
            member's skills). Concepts not in the vocabulary are counted and logged.
        user_columns: user-table columns holding declared user concepts (e.g. ``["skills"]``).
    """

    def __init__(self, columns: Sequence[str] = ("genres", "tags"), min_items: int = 5,
                 max_concepts: int | None = None, exclude: Sequence[str] = ("in netflix queue",),
                 names: str | list[str] | None = None, item_table: str | None = None,
                 user_table: str | None = None, user_columns: Sequence[str] = ()) -> None:
        if min_items < 1:
            raise ValueError(f"min_items must be >= 1, got {min_items}")
        self.columns, self.min_items, self.max_concepts = list(columns), min_items, max_concepts
        self.exclude = {clean_concept(e) for e in exclude}
        self.names, self.item_table, self.user_table = names, item_table, user_table
        self.user_columns = list(user_columns)

    def build(self, data) -> ConceptVocabulary:
        """The vocabulary for ``data`` (a PreparedData with an item side table when ``columns`` is non-empty).

        Raises:
            DataError: a configured column or table is missing, or the vocabulary comes out empty.
        """
        item_sets: list[set[str]] = [set() for _ in range(data.n_items)]
        counts: Counter = Counter()
        if self.columns:
            table = data.item_table
            if table is None:
                raise DataError(f"concept columns {self.columns} need an item side table; this dataset has none")
            present = [c for c in self.columns if c in table.columns]
            if not present:
                raise DataError(f"none of the concept columns {self.columns} is in the item table; available: "
                                f"{list(table.columns)}")
            if len(present) < len(self.columns):
                log.info("concepts: item columns %s are absent and not used", sorted(set(self.columns) - set(present)))
            for col in present:
                for i, v in enumerate(table[col].tolist()):
                    item_sets[i].update(c for c in map(clean_concept, _as_list(v)) if c and c not in self.exclude)
            counts.update(c for s in item_sets for c in s)
        keep = [c for c, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if n >= self.min_items]
        if self.max_concepts is not None:
            keep = keep[:self.max_concepts]
        supplied = self._supplied_names()
        if self.item_table is not None:
            rows, values = self._pairs(self.item_table, "item", data.item_vocab)
            for r, c in zip(rows, values, strict=True):
                item_sets[r].add(c)
            supplied += [c for c in dict.fromkeys(values) if c not in supplied]
        names = list(dict.fromkeys([*keep, *supplied]))
        if not names:
            raise DataError(f"the concept vocabulary is empty (columns {self.columns}, min_items {self.min_items}, "
                            "no names or tables given)")
        index = {c: k for k, c in enumerate(names)}
        items = _incidence(item_sets, index, data.n_items)
        dropped = sum(counts.values()) - sum(counts[c] for c in names)
        log.info("concepts: %d (%d from item attributes, %d supplied); %d item-concept pairs, %d dropped as rare or "
                 "excluded", len(names), len(keep), len(names) - len(keep), items.nnz, dropped)
        return ConceptVocabulary(names, items, self._users(data, index))

    def _supplied_names(self) -> list[str]:
        if self.names is None:
            return []
        if isinstance(self.names, str):
            path = Path(self.names)
            if not path.is_file():
                raise DataError("concept names file not found", file=str(path))
            raw: Iterable = path.read_text().splitlines()
        else:
            raw = self.names
        return list(dict.fromkeys(c for c in map(clean_concept, raw) if c))

    @staticmethod
    def _pairs(path: str, key: str, vocab) -> tuple[np.ndarray, list[str]]:
        from recsys.data.io import read_table

        df = read_table(path)
        for col in (key, "concept"):
            if col not in df.columns:
                raise DataError(f"missing column {col!r}; available: {list(df.columns)}", file=str(path), column=col)
        rows = vocab.encode(df[key].to_numpy(), source=str(path))
        values = [clean_concept(v) for v in df["concept"].tolist()]
        blank = [i for i, v in enumerate(values) if not v]
        if blank:
            raise DataError("empty concept", file=str(path), column="concept", row=blank[0])
        return rows, values

    def _users(self, data, index: dict[str, int]) -> sp.csr_matrix | None:
        if self.user_table is None and not self.user_columns:
            return None
        user_sets: list[set[str]] = [set() for _ in range(data.n_users)]
        if self.user_columns:
            table = data.user_table
            if table is None:
                raise DataError(f"user concept columns {self.user_columns} need a user side table")
            for col in self.user_columns:
                if col not in table.columns:
                    raise DataError(f"no user column {col!r}; available: {list(table.columns)}", column=col)
                for u, v in enumerate(table[col].tolist()):
                    user_sets[u].update(c for c in map(clean_concept, _as_list(v)) if c)
        if self.user_table is not None:
            rows, values = self._pairs(self.user_table, "user", data.user_vocab)
            for r, c in zip(rows, values, strict=True):
                user_sets[r].add(c)
        unknown = sum(c not in index for s in user_sets for c in s)
        if unknown:
            log.warning("user concepts: %d declared user-concept pairs name concepts outside the vocabulary and are "
                        "not used", unknown)
        return _incidence(user_sets, index, data.n_users)


def _incidence(sets: list[set[str]], index: dict[str, int], n_rows: int) -> sp.csr_matrix:
    rows, cols = [], []
    for r, s in enumerate(sets):
        ks = sorted(index[c] for c in s if c in index)
        rows.extend([r] * len(ks))
        cols.extend(ks)
    return sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(n_rows, len(index)))
