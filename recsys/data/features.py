"""Feature pipeline: user and item side-table columns encoded once into jagged token lists per feature.

A feature is declared by a :class:`FeatureSpec` (the column, its kind, how numbers are bucketised, how many
embedding chunks it gets) and encoded by :func:`encode_features` into a :class:`JaggedFeature`: a sorted vocabulary
of string tokens, and per row a variable-length list of token indices stored as ``values`` + ``offsets``, the form
``nn.EmbeddingBag`` takes. Every kind reduces to tokens:

* ``categorical``: one token per row, the value's text (``"Action"``, ``"1995"``);
* ``multi``: one token per list element (genres, tags, concepts), pooled by the encoder;
* ``numeric``: the index of a quantile bucket (``"q3"``) or of an explicit boundary bucket;
* IDs are the pseudo-column ``@id`` (the external ID's text) and training counts the pseudo-column ``@count``
  (item popularity or user activity in the train split), bucketised like any number.

A missing value (None, NaN, an empty list, a row absent from the side table) becomes the token ``<missing>``, so
every row has at least one token and rows without features (cold users without a side-table row) still embed.
Tokens are strings, keyed for hashing by a stable digest (:mod:`recsys.data.hashing`); the vocabulary is only
used by encoders that index without hashing. Encoding depends only on the prepared data, so a run directory
reloaded with ``recsys score`` rebuilds identical features.

Coleman et al., "Unified Embedding: Battle-Tested Feature Representations for Web-Scale ML Systems", NeurIPS 2023,
embed exactly such categorical, multivalent and bucketised features (IDs included) through one shared table.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from recsys.data.hashing import stable_keys

__all__ = ["FeatureSpec", "JaggedFeature", "MISSING", "as_specs", "default_features", "describe", "encode_features",
           "encode_table"]

#: The token of a missing value.
MISSING = "<missing>"
KINDS = ("categorical", "multi", "numeric")
ID_COLUMN, COUNT_COLUMN = "@id", "@count"

# Columns the defaults know about. Free text (title, description) needs a text encoder, and the synthetic users'
# ``true_concepts`` is the generator's ground truth, so neither is a default feature.
_ITEM_MULTI = {"genres": 0, "tags": 16, "concepts": 0}
_ITEM_CATEGORICAL = ("category", "brand")
_ITEM_NUMERIC = ("year", "price")
_USER_CATEGORICAL = ("age_group", "country", "device", "gender", "occupation", "zip_prefix")
_USER_NUMERIC = ("age",)


@dataclass
class FeatureSpec:
    """One input feature of a side (users or items).

    Args:
        name: the feature's name, unique per side; it also salts the feature's hashes.
        column: the side-table column (None: ``name``); ``@id`` is the row's external ID and ``@count`` its number
            of training interactions (item popularity, user activity).
        kind: ``categorical`` (one value per row), ``multi`` (a list per row, pooled) or ``numeric`` (bucketised).
        buckets: numeric features: the number of quantile buckets (edges from the column's values).
        boundaries: numeric features: explicit bucket edges, used instead of quantiles.
        max_values: multi-valued features: keep the first ``max_values`` values of each row (0 keeps all).
        sep: multi-valued features stored as delimited strings: the delimiter (lists and arrays need none).
        num_chunks: how many lookups (each one table row wide) the feature gets in a unified embedding; None
            takes the encoder's ``num_chunks``.
    """

    name: str
    column: str | None = None
    kind: str = "categorical"
    buckets: int = 10
    boundaries: list[float] | None = None
    max_values: int = 0
    sep: str | None = None
    num_chunks: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"feature {self.name!r}: kind must be one of {KINDS}, not {self.kind!r}")
        if self.num_chunks is not None and self.num_chunks < 1:
            raise ValueError(f"feature {self.name!r}: num_chunks must be >= 1, got {self.num_chunks}")
        if self.kind == "numeric" and self.boundaries is None and self.buckets < 1:
            raise ValueError(f"feature {self.name!r}: buckets must be >= 1, got {self.buckets}")

    @property
    def source(self) -> str:
        return self.column or self.name


def as_specs(specs) -> list[FeatureSpec]:
    """Specs from dataclasses or plain dicts (a reloaded YAML config passes dicts); names must be unique."""
    out = [s if isinstance(s, FeatureSpec) else FeatureSpec(**dict(s)) for s in specs]
    names = [s.name for s in out]
    if len(set(names)) != len(names):
        raise ValueError(f"feature names must be unique, got {names}")
    return out


@dataclass
class JaggedFeature:
    """One feature's tokens for every row: a vocabulary plus a jagged (values, offsets) index list.

    Args:
        spec: the feature's declaration.
        vocab: distinct tokens, sorted.
        values: indices into ``vocab``, row after row.
        offsets: where each row's values start; row r owns ``values[offsets[r]:offsets[r + 1]]``.
        edges: numeric features: the bucket edges used (for inspection).

    Shapes:
        vocab: [V]; values: [nnz] int64; offsets: [n_rows + 1] int64
    """

    spec: FeatureSpec
    vocab: np.ndarray
    values: np.ndarray
    offsets: np.ndarray
    edges: np.ndarray | None = None
    _keys: np.ndarray | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def n_rows(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def single(self) -> bool:
        """True when every row has exactly one token (a plain lookup suffices; no pooling)."""
        return bool((self.lengths == 1).all())

    def keys(self) -> np.ndarray:
        """Stable 61-bit hash keys of the vocabulary (BLAKE2b of each token), computed once.

        Shapes:
            -> [V] uint64
        """
        if self._keys is None:
            self._keys = stable_keys(self.vocab)
        return self._keys

    def row_tokens(self, row: int) -> list[str]:
        """The tokens of one row (for inspection and tests)."""
        return [str(self.vocab[v]) for v in self.values[self.offsets[row]:self.offsets[row + 1]]]

    def padded(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-row padded indices and a mask (the per-sample-weights form of ``nn.EmbeddingBag``).

        Shapes:
            -> indices [n_rows, L] int64 (0 where padded), mask [n_rows, L] bool
        """
        lens = self.lengths
        width = int(lens.max()) if len(lens) else 0
        mask = np.arange(width)[None, :] < lens[:, None]
        idx = np.zeros(mask.shape, dtype=np.int64)
        idx[mask] = self.values
        return idx, mask


# ---------------------------------------------------------------------------------------------------- tokens
def _is_missing(v) -> bool:
    if v is None:
        return True
    try:
        import pandas as pd

        if v is pd.NA or v is pd.NaT:
            return True
    except ImportError:  # pragma: no cover - pandas is a dependency of side tables
        pass
    return isinstance(v, float | np.floating) and math.isnan(v)


def _token(v) -> str:
    # 1995, 1995.0 and np.int64(1995) are one value: integral floats print as integers.
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, bytes):
        v = v.decode("utf-8", "surrogateescape")
    return str(v)


def _as_list(cell, sep: str | None) -> list:
    if isinstance(cell, np.ndarray | list | tuple | set | frozenset):
        seq = list(cell)
    elif isinstance(cell, str):
        seq = [s.strip() for s in cell.split(sep)] if sep else [cell]
        seq = [s for s in seq if s]
    elif _is_missing(cell):
        seq = []
    else:
        seq = [cell]
    return [v for v in seq if not _is_missing(v)]


def _bucketise(values: np.ndarray, spec: FeatureSpec) -> tuple[list[str], np.ndarray]:
    """Bucket tokens of a numeric column (``q<k>``), and the edges: explicit ones, or quantiles of the values."""
    num = np.array([np.nan if _is_missing(v) else float(v) for v in values], dtype=np.float64)
    ok = ~np.isnan(num)
    if spec.boundaries is not None:
        edges = np.asarray(sorted(spec.boundaries), dtype=np.float64)
    elif ok.any():
        # Quantiles over rows, so buckets hold similar numbers of rows; tied edges collapse into one bucket.
        edges = np.unique(np.quantile(num[ok], np.linspace(0, 1, spec.buckets + 1)[1:-1]))
    else:
        edges = np.zeros(0)
    b = np.searchsorted(edges, np.where(ok, num, 0.0), side="right")
    return [f"q{k}" if o else MISSING for k, o in zip(b.tolist(), ok.tolist(), strict=True)], edges


def _row_tokens(cells, spec: FeatureSpec) -> tuple[list[list[str]], np.ndarray | None]:
    edges = None
    if spec.kind == "numeric":
        toks, edges = _bucketise(np.asarray(cells, dtype=object), spec)
        rows = [[t] for t in toks]
    elif spec.kind == "multi":
        rows = []
        for cell in cells:
            seq = list(dict.fromkeys(_token(v) for v in _as_list(cell, spec.sep)))  # de-duplicated, order kept
            if spec.max_values:
                seq = seq[:spec.max_values]
            rows.append(seq or [MISSING])
    else:
        rows = [[MISSING if _is_missing(c) else _token(c)] for c in cells]
    return rows, edges


def _jagged(rows: list[list[str]], spec: FeatureSpec, edges) -> JaggedFeature:
    lens = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    flat = np.array([t for r in rows for t in r], dtype=object)
    vocab, values = np.unique(flat.astype(str), return_inverse=True) if len(flat) else (np.zeros(0, str),
                                                                                         np.zeros(0, np.int64))
    return JaggedFeature(spec, vocab.astype(object), values.astype(np.int64).ravel(), offsets, edges)


# ---------------------------------------------------------------------------------------------------- encoding
def encode_table(table, specs, n_rows: int | None = None, ids=None, counts=None) -> dict[str, JaggedFeature]:
    """Encode the columns of a row-aligned side table.

    Args:
        table: a pandas DataFrame whose row i describes row i (or None when there is no side table).
        specs: :class:`FeatureSpec` list (or dicts).
        n_rows: number of rows (default: the table's length, or ``len(ids)``).
        ids: external IDs per row, for ``@id`` features.
        counts: training interactions per row, for ``@count`` features.

    Returns:
        ``{name: JaggedFeature}`` in the order of ``specs``.

    Raises:
        ValueError: a column that is not in the table, or rows that do not line up.
    """
    specs = as_specs(specs)
    if n_rows is None:
        n_rows = len(table) if table is not None else (len(ids) if ids is not None else len(counts))
    if table is not None and len(table) != n_rows:
        raise ValueError(f"side table has {len(table)} rows, expected {n_rows} (one per row, aligned)")
    out = {}
    for spec in specs:
        col = spec.source
        if col == ID_COLUMN:
            if ids is None:
                raise ValueError(f"feature {spec.name!r} reads the row IDs but none were given")
            cells = list(ids)
        elif col == COUNT_COLUMN:
            if counts is None:
                raise ValueError(f"feature {spec.name!r} reads training counts but none were given")
            cells = list(np.asarray(counts, dtype=np.float64))
        elif table is None:
            raise ValueError(f"feature {spec.name!r} reads column {col!r}, but there is no side table")
        elif col not in table.columns:
            raise ValueError(f"feature {spec.name!r} reads column {col!r}, which the side table lacks; "
                             f"columns: {list(table.columns)}")
        else:
            cells = table[col].tolist()
        if len(cells) != n_rows:
            raise ValueError(f"feature {spec.name!r} has {len(cells)} rows, expected {n_rows}")
        rows, edges = _row_tokens(cells, spec)
        out[spec.name] = _jagged(rows, spec, edges)
    return out


def _side(data, side: str):
    if side not in ("user", "item"):
        raise ValueError(f"side must be 'user' or 'item', not {side!r}")
    if side == "item":
        return data.item_table, data.item_vocab, data.n_items, data.item_popularity()
    return data.user_table, data.user_vocab, data.n_users, np.diff(data.train.indptr)


def encode_features(data, side: str, specs=None) -> dict[str, JaggedFeature]:
    """Encode one side of prepared data: its side table, external IDs and training counts.

    Args:
        data: ``PreparedData`` (its side tables are aligned with its rows).
        side: ``user`` or ``item``.
        specs: the features; :func:`default_features` when None.
    """
    table, vocab, n, counts = _side(data, side)
    specs = default_features(data, side) if specs is None else as_specs(specs)
    return encode_table(table, specs, n_rows=n, ids=np.asarray(vocab.ids), counts=counts)


def default_features(data, side: str, num_chunks: int = 1, buckets: int = 10,
                     id_chunks: int | None = None) -> list[FeatureSpec]:
    """Sensible features for the side tables this framework loads (MovieLens, synthetic, ml-100k/1m users).

    Items: ID, genres / tags (first 16) / concepts, category, brand, year and price buckets, popularity bucket.
    Users: ID, age group, country, device, gender, occupation, ZIP prefix, age bucket, activity bucket. Only the
    columns the side table has are used; ID and count features are always there.

    Args:
        data: ``PreparedData``.
        side: ``user`` or ``item``.
        num_chunks: chunks per feature in a unified embedding.
        buckets: quantile buckets per numeric feature.
        id_chunks: chunks for the ID feature (default ``num_chunks``).
    """
    table = _side(data, side)[0]
    cols = set(table.columns) if table is not None else set()
    specs = [FeatureSpec(f"{side}_id", ID_COLUMN, "categorical", num_chunks=id_chunks or num_chunks)]
    if side == "item":
        specs += [FeatureSpec(c, kind="multi", max_values=m, num_chunks=num_chunks)
                  for c, m in _ITEM_MULTI.items() if c in cols]
        specs += [FeatureSpec(c, num_chunks=num_chunks) for c in _ITEM_CATEGORICAL if c in cols]
        specs += [FeatureSpec(c, kind="numeric", buckets=buckets, num_chunks=num_chunks)
                  for c in _ITEM_NUMERIC if c in cols]
        specs.append(FeatureSpec("popularity", COUNT_COLUMN, "numeric", buckets=buckets, num_chunks=num_chunks))
    else:
        specs += [FeatureSpec(c, num_chunks=num_chunks) for c in _USER_CATEGORICAL if c in cols]
        specs += [FeatureSpec(c, kind="numeric", buckets=buckets, num_chunks=num_chunks)
                  for c in _USER_NUMERIC if c in cols]
        specs.append(FeatureSpec("activity", COUNT_COLUMN, "numeric", buckets=buckets, num_chunks=num_chunks))
    return specs


def describe(features: dict[str, JaggedFeature]) -> list[dict[str, Any]]:
    """One summary dict per feature: kind, vocabulary size, mean and max values per row."""
    return [{**{k: v for k, v in asdict(f.spec).items() if k in ("name", "column", "kind", "num_chunks")},
             "vocab": len(f.vocab), "mean_len": float(f.lengths.mean()) if f.n_rows else 0.0,
             "max_len": int(f.lengths.max()) if f.n_rows else 0} for f in features.values()]
