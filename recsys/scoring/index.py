"""Serving as composable item indexes: one :class:`ItemIndex` interface for every way to rank a run's items.

An index holds one item representation (a float table, a Matryoshka prefix, low-rank factors, sign codes,
quantization codes, an inverted index, a faiss index) and offers

* ``search(queries, k, exclude)``: the top-k items of query vectors, and
* ``score_function(queries, exclude)``: a :class:`recsys.scoring.topk.ScoreFunction`, so evaluation and batch
  scoring keep one top-k engine (:func:`recsys.scoring.topk.iter_topk`, with its exclusions and user chunks);
  ``search`` is that engine over the query rows.

The CLI names an index by one spec string, ``KIND[:OPTION=VALUE,...]``, parsed by :func:`parse_index_spec` into a
typed :class:`IndexSpec` (one dataclass per kind; its fields are the options) whose ``build(tables)`` makes the
index from what a run stores (:class:`ServingTables`)::

    exact                                   brute-force inner product over the stored tables
    prefix:dim=32                           the first 32 coordinates (re-normalised for cosine scorers)
    prefix:dim=32,coarse=8,shortlist=200    shortlist 200 by the first 8 coordinates, re-rank at 32
    hamming:shortlist=200                   shortlist by Hamming distance of the sign bits, re-rank in float
    hamming:codes_only=true                 rank by Hamming distance alone
    lowrank:rank=8                          a low-rank model truncated to rank 8 (no retraining)
    quantized                               latent-quantization codes, scored against their codebook
    pq:M=8,K=256,rerank=200                 product quantization (k-means at build time), ADC, float re-rank
    rq:M=8,K=256 / pq:stored=true           residual quantization; a ProductQuantization model's own codes
                                            (:mod:`recsys.scoring.index_pq`)
    seismic:n_postings=2000,query_cut=10    the Seismic inverted index (non-negative concept vectors)
    faiss:flat                              faiss exact inner product (``faiss:ivf,nlist=N,nprobe=P``,
                                            ``faiss:hnsw,m=32``, ``faiss:binary[,shortlist=200]``: sign codes;
                                            :mod:`recsys.scoring.faiss_index`, ``pip install 'recsys[ann]'``)

Combinations that cannot work are not expressible (a ``shortlist`` needs a ``coarse`` pass; ``codes_only`` takes
no re-rank ``dim``; ``seismic`` has no prefix option); bad specs raise a one-line ``ValueError``.
"""

from __future__ import annotations

import json
import math
import re
import typing
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import ClassVar, Literal

import numpy as np
import torch
from torch import Tensor

from recsys.errors import DataError
from recsys.scoring.cascade import (
    CascadeScore,
    HammingScore,
    hamming_similarities,
    pack_bits,
    prefix_cascade_fn,
    prefix_table,
)
from recsys.scoring.topk import (
    CandidateScoreFunction,
    RescoringScoreFunction,
    ScoreFunction,
    gemm_score_fn,
    topk,
)

__all__ = [
    "DenseIndex", "ExactSpec", "FaissSpec", "HammingIndex", "HammingSpec", "IndexSpec", "ItemIndex",
    "LowRankIndex", "LowRankSpec", "PrefixSpec", "QuantizedIndex", "QuantizedScore", "QuantizedSpec",
    "SearchScore", "SeismicItemIndex", "SeismicSpec", "ServingTables", "parse_index_spec",
]


# ---------------------------------------------------------------------------------------------------- tables
@dataclass
class ServingTables:
    """What a run stores for serving: the scorer-prepared tables plus the extras some indexes need.

    Args:
        queries: scorer-prepared query table (``tables.queries`` of ``model.pt``).
        items: scorer-prepared item table.
        normalize: the scorer is cosine: truncated tables (prefix, low rank, dequantized codes) are re-normalised.
        concepts: names of the dimensions of an explicit-concept model (SESA).
        query_factors, item_factors, basis: a low-rank model's raw factors ``A`` and basis ``B`` (before the
            scorer): the full-rank tables are ``prepare(A @ B)``.
        codes, codebook: a latent-quantization model's item codes into its *sorted* per-dimension codebook:
            the item table is ``prepare(codebook[d, codes[:, d]])``.
        pq_codes, pq_codebooks: a product/residual-quantization model's item codes and its ``M`` codebooks
            (:mod:`recsys.scoring.index_pq`).

    Shapes:
        queries: [U, D]; items: [N, D]; query_factors: [U, r]; item_factors: [N, r]; basis: [r, D];
        codes: [N, D] integers in [0, L); codebook: [D, L]; pq_codes: [N, M] integers in [0, K);
        pq_codebooks: [M, K, D/M] (product) or [M, K, D] (residual)
    """

    queries: Tensor
    items: Tensor
    normalize: bool = False
    concepts: list[str] | None = None
    query_factors: Tensor | None = None
    item_factors: Tensor | None = None
    basis: Tensor | None = None
    codes: Tensor | None = None
    codebook: Tensor | None = None
    pq_codes: Tensor | None = None
    pq_codebooks: Tensor | None = None

    #: the payload ``extras`` (``recsys.runs.ModelPayload.extras``) each optional table is stored under.
    EXTRAS: ClassVar[tuple[str, ...]] = ("query_factors", "item_factors", "basis", "codes", "codebook",
                                          "pq_codes", "pq_codebooks")

    @classmethod
    def from_payload(cls, payload, file: str | None = None) -> ServingTables:
        """The serving tables of a run's payload: a ``recsys.runs.ModelPayload`` or its ``model.pt`` dict.

        The optional tables are read from the payload's ``extras`` under the names of :attr:`EXTRAS`.

        Raises:
            DataError: the payload stores no embedding tables (a baseline such as EASE).
        """
        if isinstance(payload, dict):
            t = payload.get("tables") or {}
            queries, items, extras = t.get("queries"), t.get("items"), payload.get("extras") or {}
            scorer, concepts = payload.get("scorer"), payload.get("concepts")
            # Version-1 payloads store the scorer and the concept names as JSON strings.
            scorer = json.loads(scorer) if isinstance(scorer, str) else scorer
            concepts = json.loads(concepts) if isinstance(concepts, str) else concepts
        else:
            queries, items, extras = payload.queries, payload.items, payload.extras or {}
            scorer, concepts = payload.scorer, payload.concepts
        if queries is None or items is None:
            raise DataError("this run stores no embedding tables (not an embedding model)", file=file)
        return cls(queries, items, bool((scorer or {}).get("normalize", False)), list(concepts) if concepts else None,
                   **{name: extras.get(name) for name in cls.EXTRAS})


# ---------------------------------------------------------------------------------------------------- indexes
class ItemIndex(ABC):
    """Top-k retrieval over one item representation.

    Attributes:
        n_items: catalogue size.
        queries: the run's query table in this index's query space, set by :meth:`IndexSpec.build` (the query
            factors for :class:`LowRankIndex`, the scorer-prepared queries otherwise); None for an index made by
            hand, whose methods then need explicit ``queries``.
    """

    n_items: int
    queries: Tensor | None = None

    @abstractmethod
    def score_function(self, queries: Tensor | None = None, exclude=None) -> ScoreFunction:
        """A score function over the rows of ``queries`` (default :attr:`queries`) for ``iter_topk``.

        Args:
            queries: query vectors in this index's query space; row ``j`` is user row ``j`` of ``iter_topk``.
            exclude: CSR (``indptr``, ``indices``) of items per query row that a shortlisting index must not take
                in its dense form (``iter_topk`` passes its own exclusions to the candidates).

        Shapes:
            queries: [U, D]
        """

    @abstractmethod
    def bytes_per_item(self) -> float:
        """Bytes per item of what the index holds (shared parts such as a basis or codebook are not counted)."""

    def search(self, queries: Tensor, k: int, exclude=None, chunk_size: int | None = None
               ) -> tuple[Tensor, Tensor]:
        """The top ``k`` items of each query, best first.

        Args:
            queries: query vectors in this index's query space.
            k: list length.
            exclude: CSR of items never to return, one row per query (e.g. :class:`recsys.scoring.topk.RowSets`).
            chunk_size: queries per chunk (from a memory budget when None).

        Shapes:
            queries: [B, D] -> (items [B, k] int64, -1 where fewer qualify; scores [B, k] float32, -inf there)
        """
        items, scores = topk(self.score_function(queries, exclude), np.arange(len(queries)), self.n_items, k,
                             exclude, chunk_size)
        return torch.from_numpy(items), torch.from_numpy(scores)

    def _query_table(self, queries: Tensor | None) -> Tensor:
        if queries is not None:
            return queries
        if self.queries is None:
            raise ValueError(f"{type(self).__name__} was built without a query table: pass queries")
        return self.queries


class DenseIndex(ItemIndex):
    """A float item table scored by inner product: exact, at a Matryoshka prefix, or coarse-to-fine.

    Args:
        items: scorer-prepared item table.
        dim: serve the first ``dim`` coordinates (all when None).
        coarse: shortlist by the first ``coarse`` coordinates, then re-rank at ``dim``.
        shortlist: candidates per query kept by the coarse pass.
        normalize: re-normalise prefixes (cosine scorers).

    Shapes:
        items: [N, D]; queries: [U, D]
    """

    def __init__(self, items: Tensor, dim: int | None = None, coarse: int | None = None, shortlist: int = 200,
                 normalize: bool = False) -> None:
        if coarse is not None and not 1 <= coarse < (dim or items.shape[1]):
            raise ValueError(f"coarse must be in [1, {dim or items.shape[1]}), got {coarse}")
        self.dim, self.coarse, self.shortlist, self.normalize = dim, coarse, shortlist, normalize
        self.items = prefix_table(items, dim, normalize)
        self.n_items = items.shape[0]

    def score_function(self, queries: Tensor | None = None, exclude=None) -> ScoreFunction:
        q = prefix_table(self._query_table(queries), self.dim, self.normalize)
        if self.coarse is not None:
            return prefix_cascade_fn(q, self.items, self.coarse, self.shortlist, exclude, self.normalize)
        return gemm_score_fn(q, self.items)

    def bytes_per_item(self) -> float:
        return float(self.items.element_size() * self.items.shape[1])


class HammingIndex(ItemIndex):
    """Sign-bit codes: a Hamming shortlist re-ranked by the float table, or the codes alone.

    Args:
        items: scorer-prepared item table; the signs of its (prefix) coordinates are the codes.
        shortlist: candidates per query kept by the Hamming pass (unused with ``codes_only``).
        dim: the float prefix that re-ranks (all coordinates when None).
        bits: codes from the first ``bits`` coordinates of that prefix (all when None).
        codes_only: rank by Hamming distance alone (the float table is not kept).
        normalize: re-normalise prefixes (cosine scorers).

    Shapes:
        items: [N, D]; queries: [U, D]
    """

    def __init__(self, items: Tensor, shortlist: int = 200, dim: int | None = None, bits: int | None = None,
                 codes_only: bool = False, normalize: bool = False) -> None:
        fine = prefix_table(items, dim, normalize)
        self.bits = min(bits or fine.shape[1], fine.shape[1])
        self.item_bits = pack_bits(fine[:, :self.bits])
        self.fine = None if codes_only else fine
        self.shortlist, self.dim, self.normalize, self.n_items = shortlist, dim, normalize, items.shape[0]

    def score_function(self, queries: Tensor | None = None, exclude=None) -> ScoreFunction:
        q = prefix_table(self._query_table(queries), self.dim, self.normalize)
        q_bits, i_bits = pack_bits(q[:, :self.bits]), self.item_bits
        if self.fine is None:
            return HammingScore(q_bits, i_bits)
        return CascadeScore(lambda rows: hamming_similarities(q_bits[rows.cpu().numpy()], i_bits), q, self.fine,
                            self.shortlist, exclude)

    def bytes_per_item(self) -> float:
        fine = 0 if self.fine is None else self.fine.element_size() * self.fine.shape[1]
        return float(self.item_bits.shape[1] + fine)


class LowRankIndex(ItemIndex):
    """A low-rank model ``E = A·B`` served at rank ``k``: ``A[:, :k] · B[:k]``, without materialising ``E``.

    Scores are ``q_k G a_k`` with the ``[k, k]`` Gram matrix ``G = B_k B_kᵀ``, so the index holds ``k`` floats
    per item. With ``normalize`` (cosine scorers) each side is divided by the norm of its rank-``k`` embedding
    ``‖a_k B_k‖ = √(a_k G a_kᵀ)``, the cosine of the truncated embeddings.

    Args:
        item_factors: the items' raw factors ``A`` (before the basis and the scorer).
        basis: the shared basis ``B``.
        rank: served rank ``k`` (the full ``r`` when None).
        normalize: cosine scorer.

    Shapes:
        item_factors: [N, r]; basis: [r, D]; queries: the queries' factors [U, r]
    """

    def __init__(self, item_factors: Tensor, basis: Tensor, rank: int | None = None, normalize: bool = False
                 ) -> None:
        r = basis.shape[0]
        if item_factors.shape[1] != r:
            raise ValueError(f"item factors have rank {item_factors.shape[1]}, the basis {r}")
        k = rank or r
        if not 1 <= k <= r:
            raise ValueError(f"rank must be in [1, {r}], got {k}")
        self.rank, self.normalize, self.n_items = k, normalize, item_factors.shape[0]
        self.gram = basis[:k] @ basis[:k].T
        self.items = self._scaled(item_factors[:, :k])

    def _scaled(self, a: Tensor) -> Tensor:
        if not self.normalize:
            return a.contiguous()
        norm = ((a @ self.gram) * a).sum(1).clamp_min(0).sqrt().clamp_min(1e-12)  # F.normalize's eps
        return a / norm[:, None]

    def score_function(self, queries: Tensor | None = None, exclude=None) -> ScoreFunction:
        q = self._scaled(self._query_table(queries)[:, :self.rank])
        return gemm_score_fn(q @ self.gram, self.items)

    def bytes_per_item(self) -> float:
        return float(self.items.element_size() * self.rank)


class QuantizedIndex(ItemIndex):
    """Latent-quantization codes: item ``i`` is ``codebook[d, codes[i, d]]`` per dimension ``d``.

    Items are dequantized a block at a time inside the GEMM, so the float table is never held whole.

    Args:
        codes: per-dimension code indices (held one byte each).
        codebook: the per-dimension scalar codebooks.
        normalize: cosine scorer: dequantized items are scaled to unit norm (one float per item more).

    Shapes:
        codes: [N, D] integers in [0, L); codebook: [D, L]; queries: [U, D] (scorer-prepared)
    """

    def __init__(self, codes: Tensor, codebook: Tensor, normalize: bool = False) -> None:
        levels = codebook.shape[1]
        if codes.shape[1] != codebook.shape[0]:
            raise ValueError(f"codes have {codes.shape[1]} dimensions, the codebook {codebook.shape[0]}")
        if levels > 256 or (len(codes) and (int(codes.min()) < 0 or int(codes.max()) >= levels)):
            raise ValueError(f"codes must lie in [0, {levels}) with at most 256 levels")
        self.codes, self.codebook, self.n_items = codes.to(torch.uint8), codebook, codes.shape[0]
        self.scale = None
        if normalize:
            b = QuantizedScore.block
            norms = torch.cat([dequantize(self.codes[s:s + b], codebook).norm(dim=1) for s in range(0, len(codes), b)])
            self.scale = 1.0 / norms.clamp_min(1e-12)  # F.normalize's eps

    def score_function(self, queries: Tensor | None = None, exclude=None) -> QuantizedScore:
        return QuantizedScore(self._query_table(queries), self.codes, self.codebook, self.scale)

    def bytes_per_item(self) -> float:
        """Packed code bytes, ``D·⌈log2 L⌉/8`` (as ``LatentQuantization.bytes_per_item``), plus 4 for a norm."""
        bits = max(1, math.ceil(math.log2(self.codebook.shape[1])))
        return self.codes.shape[1] * bits / 8 + (0 if self.scale is None else 4)


def dequantize(codes: Tensor, codebook: Tensor) -> Tensor:
    """Code values: ``codebook[d, codes[..., d]]``.

    Shapes:
        codes: [..., D]; codebook: [D, L] -> [..., D]
    """
    return codebook[torch.arange(codebook.shape[0], device=codes.device), codes.long()]


class QuantizedScore(RescoringScoreFunction):
    """``queries[rows] · dequantize(codes)ᵀ``, dequantizing ``block`` items at a time.

    Shapes:
        queries: [U, D]; codes: [N, D]; codebook: [D, L]; scale: [N] or None
    """

    block = 8192

    def __init__(self, queries: Tensor, codes: Tensor, codebook: Tensor, scale: Tensor | None = None) -> None:
        self.queries, self.codes, self.codebook, self.scale = queries, codes, codebook, scale

    def _items(self, idx) -> Tensor:
        x = dequantize(self.codes[idx], self.codebook)
        return x if self.scale is None else x * self.scale[idx].unsqueeze(-1)

    def __call__(self, rows: Tensor, out: Tensor | None = None) -> Tensor:
        n = self.codes.shape[0]
        result = out if out is not None else self.queries.new_empty((len(rows), n))
        q = self.queries[rows].to(result.dtype)
        for s in range(0, n, self.block):
            result[:, s:s + self.block] = q @ self._items(slice(s, s + self.block)).to(result.dtype).T
        return result

    def exact(self, rows: Tensor, cand: Tensor) -> Tensor:
        return torch.einsum("bd,bcd->bc", self.queries[rows].float(), self._items(cand.clamp(min=0)).float())


class SearchScore(CandidateScoreFunction):
    """The score function of a search index: each chunk's rows are searched for the engine's ``k``.

    Its dense form searches for every item: exact scores of all items the index reaches, ``-inf`` elsewhere.

    Args:
        search: ``search(queries, k, exclude, rows) -> (ids [B, k] int64, -1 = none; scores [B, k])`` (numpy).
        queries: the query table, indexed by user row.
        n_items: catalogue size.
        exclude: CSR the dense form masks.

    Shapes:
        queries: [U, D]; candidates: rows [B] -> ([B, k], [B, k])
    """

    def __init__(self, search: Callable, queries: np.ndarray, n_items: int, exclude=None) -> None:
        super().__init__(n_items, exclude)
        self.search, self.queries = search, queries

    def candidates(self, rows: Tensor, k: int, exclude) -> tuple[Tensor, Tensor]:
        r = rows.cpu().numpy()
        ids, scores = self.search(self.queries[r], k, exclude, r)
        return torch.from_numpy(ids).to(rows.device), torch.from_numpy(scores).to(rows.device)


class SeismicItemIndex(ItemIndex):
    """The Seismic blocked inverted index (:class:`recsys.retrieval.SeismicIndex`) over non-negative vectors.

    Args:
        items: non-negative (explicit concept) item vectors.
        **options: :class:`recsys.retrieval.SeismicIndex` options (``n_postings``, ``query_cut``, ...).

    Shapes:
        items: [N, K]; queries: [U, K]
    """

    def __init__(self, items: Tensor, **options) -> None:
        from recsys.retrieval import SeismicIndex

        self.index = SeismicIndex(**options).build(items)
        self.n_items = items.shape[0]

    def score_function(self, queries: Tensor | None = None, exclude=None) -> SearchScore:
        q = self._query_table(queries).detach().cpu().float().numpy()
        return SearchScore(lambda qs, k, ex, rows: self.index.search_batch(qs, k, ex, rows), q, self.n_items,
                           exclude)

    def bytes_per_item(self) -> float:
        return self.index.bytes_per_item()


def __getattr__(name: str):
    """``FaissIndex`` and ``FaissBinaryIndex`` live in :mod:`recsys.scoring.faiss_index` (which imports this module)."""
    if name in ("FaissIndex", "FaissBinaryIndex"):
        from recsys.scoring import faiss_index

        return getattr(faiss_index, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---------------------------------------------------------------------------------------------------- specs
SPECS: dict[str, type[IndexSpec]] = {}


def _register(cls: type[IndexSpec]) -> type[IndexSpec]:
    SPECS[cls.kind] = cls
    return cls


@dataclass(frozen=True)
class IndexSpec(ABC):
    """A parsed index spec: the kind is the class, the options are its fields (see :func:`parse_index_spec`)."""

    kind: ClassVar[str]
    #: the option a bare first value sets (``faiss:hnsw`` is ``faiss:index=hnsw``).
    positional: ClassVar[str | None] = None

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Raise a one-line ``ValueError`` for option values or combinations that cannot work."""
        return

    @abstractmethod
    def build(self, tables: ServingTables) -> ItemIndex:
        """The index over a run's tables, its :attr:`ItemIndex.queries` set to the run's query table.

        Raises:
            DataError: the run does not store the tables this kind needs.
        """

    def __str__(self) -> str:
        # The positional option comes first, bare and even at its default: it names the variant (``faiss:flat``).
        opts = []
        for f in sorted(fields(self), key=lambda f: f.name != self.positional):
            v = getattr(self, f.name)
            if f.name == self.positional:
                opts.append(_format(v))
            elif v != f.default:
                opts.append(f"{f.name}={_format(v)}")
        return self.kind + (":" + ",".join(opts) if opts else "")

    def tag(self) -> str:
        """The spec as a file-name part, e.g. ``prefix_dim_32_coarse_8``."""
        return re.sub(r"[^A-Za-z0-9.]+", "_", str(self)).strip("_")

    def _fail(self, message: str) -> ValueError:
        return ValueError(f"index '{self.kind}': {message}")

    def _at_least(self, low: int, *names: str) -> None:
        for name in names:
            v = getattr(self, name)
            if v is not None and v < low:
                raise self._fail(f"option '{name}' must be >= {low}, got {v}")

    def _fits(self, tables: ServingTables, name: str) -> None:
        v, d = getattr(self, name), tables.items.shape[1]
        if v is not None and v > d:
            raise self._fail(f"option '{name}'={v} exceeds the model's {d} dimensions")


@_register
@dataclass(frozen=True)
class ExactSpec(IndexSpec):
    """``exact``: brute-force inner product over the stored tables."""

    kind: ClassVar[str] = "exact"

    def build(self, tables: ServingTables) -> DenseIndex:
        return _with_queries(DenseIndex(tables.items), tables.queries)


@_register
@dataclass(frozen=True)
class PrefixSpec(IndexSpec):
    """``prefix:dim=D[,coarse=C,shortlist=S]``: a Matryoshka prefix, optionally coarse-to-fine.

    Args:
        dim: served coordinates (all when None).
        coarse: shortlist by the first ``coarse`` coordinates (< ``dim``), then re-rank at ``dim``.
        shortlist: candidates per user kept by the coarse pass (200 when None; needs ``coarse``).
    """

    kind: ClassVar[str] = "prefix"
    dim: int | None = None
    coarse: int | None = None
    shortlist: int | None = None

    def check(self) -> None:
        self._at_least(1, "dim", "coarse", "shortlist")
        if self.dim is None and self.coarse is None:
            raise self._fail("needs option 'dim' and/or 'coarse' ('exact' serves every coordinate)")
        if self.shortlist is not None and self.coarse is None:
            raise self._fail("option 'shortlist' needs option 'coarse' (only a coarse pass shortlists)")
        if self.coarse is not None and self.dim is not None and self.coarse >= self.dim:
            raise self._fail(f"option 'coarse'={self.coarse} must be below 'dim'={self.dim}")

    def build(self, tables: ServingTables) -> DenseIndex:
        self._fits(tables, "dim")
        if self.coarse is not None and self.coarse >= (self.dim or tables.items.shape[1]):
            raise self._fail(f"option 'coarse'={self.coarse} must be below the model's "
                             f"{tables.items.shape[1]} dimensions")
        index = DenseIndex(tables.items, self.dim, self.coarse, self.shortlist or 200, tables.normalize)
        return _with_queries(index, tables.queries)


@_register
@dataclass(frozen=True)
class HammingSpec(IndexSpec):
    """``hamming[:shortlist=S,dim=D,bits=B]`` or ``hamming:codes_only=true[,bits=B]``: sign-bit codes.

    Args:
        shortlist: candidates per user kept by the Hamming pass (200 when None).
        dim: the float prefix that re-ranks (all coordinates when None); codes come from its signs.
        bits: codes from the first ``bits`` coordinates (all of the prefix when None).
        codes_only: rank by Hamming distance alone: no re-ranking, so no ``shortlist`` or ``dim``.
    """

    kind: ClassVar[str] = "hamming"
    shortlist: int | None = None
    dim: int | None = None
    bits: int | None = None
    codes_only: bool = False

    def check(self) -> None:
        self._at_least(1, "shortlist", "dim", "bits")
        if self.codes_only and (self.shortlist is not None or self.dim is not None):
            raise self._fail("codes_only=true ranks by the codes alone: it takes no 'shortlist' or 'dim' "
                             "(use 'bits' for shorter codes)")
        if self.bits is not None and self.dim is not None and self.bits > self.dim:
            raise self._fail(f"option 'bits'={self.bits} exceeds 'dim'={self.dim}")

    def build(self, tables: ServingTables) -> HammingIndex:
        self._fits(tables, "dim")
        self._fits(tables, "bits")
        index = HammingIndex(tables.items, self.shortlist or 200, self.dim, self.bits, self.codes_only,
                             tables.normalize)
        return _with_queries(index, tables.queries)


@_register
@dataclass(frozen=True)
class LowRankSpec(IndexSpec):
    """``lowrank[:rank=K]``: a low-rank model truncated to rank ``K`` (its full rank when None)."""

    kind: ClassVar[str] = "lowrank"
    rank: int | None = None

    def check(self) -> None:
        self._at_least(1, "rank")

    def build(self, tables: ServingTables) -> LowRankIndex:
        if tables.query_factors is None or tables.item_factors is None or tables.basis is None:
            raise DataError("index 'lowrank' needs a low-rank model (this run stores no factor tables)")
        r = tables.basis.shape[0]
        if self.rank is not None and self.rank > r:
            raise self._fail(f"option 'rank'={self.rank} exceeds the model's rank {r}")
        index = LowRankIndex(tables.item_factors, tables.basis, self.rank, tables.normalize)
        return _with_queries(index, tables.query_factors)


@_register
@dataclass(frozen=True)
class QuantizedSpec(IndexSpec):
    """``quantized``: latent-quantization item codes scored against their codebook."""

    kind: ClassVar[str] = "quantized"

    def build(self, tables: ServingTables) -> QuantizedIndex:
        if tables.codes is None or tables.codebook is None:
            raise DataError("index 'quantized' needs a latent-quantization model (this run stores no item codes)")
        return _with_queries(QuantizedIndex(tables.codes, tables.codebook, tables.normalize), tables.queries)


@_register
@dataclass(frozen=True)
class SeismicSpec(IndexSpec):
    """``seismic[:n_postings=P,block_size=B,summary_energy=E,query_cut=C,heap_factor=H]``: the inverted index.

    The options are :class:`recsys.retrieval.SeismicIndex`'s (``n_postings=none`` keeps every posting).
    """

    kind: ClassVar[str] = "seismic"
    n_postings: int | None = 4096
    block_size: int = 32
    summary_energy: float = 1.0
    query_cut: int | None = None
    heap_factor: float = 1.0

    def check(self) -> None:
        self._at_least(1, "n_postings", "block_size", "query_cut")
        for name in ("summary_energy", "heap_factor"):
            if not 0 < getattr(self, name) <= 1:
                raise self._fail(f"option '{name}' must be in (0, 1], got {getattr(self, name)}")

    def build(self, tables: ServingTables) -> SeismicItemIndex:
        if bool((tables.items < 0).any()):
            raise DataError("index 'seismic' needs non-negative item vectors (an explicit-concept model such as "
                            "SESA); this run's item table has negative entries")
        options = {f.name: getattr(self, f.name) for f in fields(self)}
        return _with_queries(SeismicItemIndex(tables.items, **options), tables.queries)


@_register
@dataclass(frozen=True)
class FaissSpec(IndexSpec):
    """``faiss[:flat|ivf|hnsw|binary,...]``: a faiss index (:mod:`recsys.scoring.faiss_index`; ``[ann]`` extra).

    Args:
        index: ``flat`` (exact inner product), ``ivf`` (inverted lists, k-means trained on the item table),
            ``hnsw`` (graph) or ``binary`` (sign-bit codes, Hamming distance).
        nlist, nprobe: ``ivf`` only: lists (√N when None) and lists visited per query (8 when None).
        m, ef_search: ``hnsw`` only: neighbours per node (32 when None) and the search beam (64 when None).
        shortlist: ``binary`` only: re-rank each query's ``shortlist`` nearest codes by the float inner product
            (codes alone when None).
    """

    kind: ClassVar[str] = "faiss"
    positional: ClassVar[str | None] = "index"
    #: the faiss index kind each option belongs to.
    OWNERS: ClassVar[dict[str, str]] = {"nlist": "ivf", "nprobe": "ivf", "m": "hnsw", "ef_search": "hnsw",
                                        "shortlist": "binary"}
    index: Literal["flat", "ivf", "hnsw", "binary"] = "flat"
    nlist: int | None = None
    nprobe: int | None = None
    m: int | None = None
    ef_search: int | None = None
    shortlist: int | None = None

    def check(self) -> None:
        self._at_least(1, *self.OWNERS)
        for name, owner in self.OWNERS.items():
            if getattr(self, name) is not None and self.index != owner:
                raise self._fail(f"option '{name}' applies to index={owner} only, not index={self.index}")

    def build(self, tables: ServingTables) -> ItemIndex:
        # Imported here: faiss_index subclasses this module's ItemIndex, and faiss itself is optional.
        from recsys.scoring.faiss_index import FaissBinaryIndex, FaissIndex

        if self.index == "binary":
            return _with_queries(FaissBinaryIndex(tables.items, self.shortlist), tables.queries)
        index = FaissIndex(tables.items, self.index, self.nlist, self.nprobe, self.m, self.ef_search)
        return _with_queries(index, tables.queries)


def _with_queries(index: ItemIndex, queries: Tensor) -> ItemIndex:
    index.queries = queries
    return index


def parse_index_spec(spec: str) -> IndexSpec:
    """Parse ``KIND[:OPTION=VALUE,...]`` into its typed :class:`IndexSpec` (see the module docstring).

    Values are typed by the kind's fields: integers, floats, ``true``/``false``, ``none`` for an optional value,
    or one of a fixed set of names. ``str(parse_index_spec(s))`` is the canonical spec (defaults left out).

    Raises:
        ValueError: one line naming the unknown kind or option, or the bad value and what is allowed.
    """
    kind, _, rest = str(spec).strip().partition(":")
    kind = kind.strip().lower()
    if kind not in SPECS:
        raise ValueError(f"unknown index kind {kind!r}; allowed: {', '.join(SPECS)}")
    cls = SPECS[kind]
    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    values: dict[str, object] = {}
    tokens = [t.strip() for t in rest.split(",")] if rest.strip() else []
    for pos, token in enumerate(tokens):
        name, eq, value = token.partition("=")
        if not eq:
            if pos != 0 or cls.positional is None:
                allowed = ", ".join(names) or "none"
                raise ValueError(f"index '{kind}': expected OPTION=VALUE, got {token!r}; options: {allowed}")
            name, value = cls.positional, token
        name = name.strip().replace("-", "_")
        if name not in names:
            raise ValueError(f"index '{kind}' has no option {name!r}; allowed: {', '.join(names) or 'none'}")
        if name in values:
            raise ValueError(f"index '{kind}': option {name!r} given twice")
        values[name] = _convert(kind, name, value.strip(), hints[name])
    return cls(**values)


def _convert(kind: str, name: str, value: str, tp) -> object:
    """``value`` as the field type ``tp`` (``int``, ``float``, ``bool``, a ``Literal``, or one of them | None)."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) is Literal:
        if value.lower() in args:
            return value.lower()
        raise ValueError(f"index '{kind}': option '{name}' must be one of {', '.join(args)}, got {value!r}")
    if type(None) in args:
        if value.lower() == "none":
            return None
        tp = next(a for a in args if a is not type(None))
    if tp is bool:
        if value.lower() in ("true", "1", "yes"):
            return True
        if value.lower() in ("false", "0", "no"):
            return False
        raise ValueError(f"index '{kind}': option '{name}' must be true or false, got {value!r}")
    try:
        return tp(value)
    except ValueError:
        what = {int: "an integer", float: "a number"}[tp]
        raise ValueError(f"index '{kind}': option '{name}' must be {what}, got {value!r}") from None


def _format(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return "none" if v is None else str(v)


# The product/residual-quantized kinds live in their own module, which registers them here (it imports this one).
from recsys.scoring import index_pq as _index_pq  # noqa: E402,F401
