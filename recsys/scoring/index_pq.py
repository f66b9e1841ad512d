"""Product- and residual-quantized item indexes: ADC scoring of ``M`` codes per item, optional exact float re-rank.

``--index pq:M=8,K=256[,rerank=200]`` fits product codebooks by seeded k-means on the run's served item table when
the index is built (post-hoc: no retraining), ``--index rq:...`` residual ones; ``pq:stored=true`` /
``rq:stored=true`` serves the codes a :class:`recsys.encoders.ProductQuantization` model learned with the model.
A query is scored against every item by asymmetric distance computation (ADC): one look-up table of query ·
codeword per sub-space (or residual level), ``[M, K]`` per query, and an item's score is the sum of its ``M``
entries, so items are never dequantized. With ``rerank=S`` each query's ``S`` best ADC candidates are re-scored
exactly by the float item table (which the index then holds too).

Jégou, Douze & Schmid, "Product Quantization for Nearest Neighbor Search", IEEE TPAMI 2011 (PQ, ADC, re-ranking);
Chen, Guan & Wang, Sensors 2010 (residual quantization); Rajput et al., TIGER, NeurIPS 2023 (semantic IDs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import ClassVar, Literal

import torch
from torch import Tensor

from recsys.errors import DataError
from recsys.scoring.cascade import CascadeScore
from recsys.scoring.index import IndexSpec, ItemIndex, ServingTables, _register, _with_queries
from recsys.scoring.topk import RescoringScoreFunction, ScoreFunction

__all__ = ["ADCScore", "ProductQuantizedIndex", "ProductQuantizedSpec", "ResidualQuantizedSpec", "adc_tables"]

#: the two ways ``M`` codebooks combine (:data:`recsys.encoders.product_quantized.Kind`).
Kind = Literal["product", "residual"]


def adc_tables(queries: Tensor, codebooks: Tensor, kind: Kind) -> Tensor:
    """Per-query look-up tables: query (sub-vector) · codeword, for every codebook and codeword.

    Shapes:
        queries: [B, D]; codebooks: [M, K, D/M] (product) or [M, K, D] (residual) -> [B, M, K]
    """
    books = codebooks.to(queries.dtype)
    if kind == "product":
        return torch.einsum("bmd,mkd->bmk", queries.reshape(len(queries), books.shape[0], -1), books)
    return torch.einsum("bd,mkd->bmk", queries, books)


class ADCScore(RescoringScoreFunction):
    """ADC scores: ``Σ_m lut[row, m, codes[item, m]]`` (times the item's scale), ``block`` items at a time.

    Args:
        queries: the query table (scorer-prepared).
        codes: the items' codes.
        codebooks: product or residual codebooks.
        kind: ``"product"`` or ``"residual"``.
        scale: per-item factor (``1/‖dequantized item‖`` for cosine scorers) or None.

    Shapes:
        queries: [U, D]; codes: [N, M]; codebooks: [M, K, d]; scale: [N] -> rows [B] -> [B, N]
    """

    block = 65536

    def __init__(self, queries: Tensor, codes: Tensor, codebooks: Tensor, kind: Kind, scale: Tensor | None = None
                 ) -> None:
        self.queries, self.codes, self.codebooks, self.kind, self.scale = queries, codes, codebooks, kind, scale

    def _lut(self, rows: Tensor) -> Tensor:
        return adc_tables(self.queries[rows.to(self.queries.device)].float(), self.codebooks, self.kind)

    def __call__(self, rows: Tensor, out: Tensor | None = None) -> Tensor:
        lut = self._lut(rows)
        n, m_books = self.codes.shape
        result = out if out is not None else lut.new_empty((len(rows), n))
        for s in range(0, n, self.block):
            codes = self.codes[s:s + self.block].long()
            # Summed in float32 whatever the buffer's dtype: the low-precision shortlist re-scores with exact().
            acc = lut[:, 0].index_select(1, codes[:, 0])
            for m in range(1, m_books):
                acc += lut[:, m].index_select(1, codes[:, m])
            if self.scale is not None:
                acc *= self.scale[s:s + self.block]
            result[:, s:s + self.block] = acc.to(result)
        return result

    def exact(self, rows: Tensor, cand: Tensor) -> Tensor:
        lut = self._lut(rows)  # [B, M, K]
        codes = self.codes[cand.clamp(min=0).to(self.codes.device)].long().transpose(1, 2)  # [B, M, C]
        scores = torch.gather(lut, 2, codes.to(lut.device)).sum(1)
        return scores if self.scale is None else scores * self.scale[cand.clamp(min=0)]


class ProductQuantizedIndex(ItemIndex):
    """Items as ``M`` product or residual codes, ranked by ADC, optionally re-ranked by the float table.

    Args:
        codes: each item's code per codebook (held in ``⌈log2 K⌉`` bits each).
        codebooks: ``M`` codebooks of ``K`` codewords: sub-vectors (product) or full vectors (residual).
        kind: ``"product"`` (codewords concatenated) or ``"residual"`` (codewords summed).
        items: the float item table that re-ranks a shortlist (None: ADC scores alone).
        rerank: candidates per query the ADC pass keeps for the exact re-rank (needs ``items``).
        normalize: cosine scorer: dequantized items are scaled to unit norm (one float per item more).

    Shapes:
        codes: [N, M] integers in [0, K); codebooks: [M, K, D/M] or [M, K, D]; items: [N, D]; queries: [U, D]
    """

    def __init__(self, codes: Tensor, codebooks: Tensor, kind: Kind = "product", items: Tensor | None = None,
                 rerank: int | None = None, normalize: bool = False) -> None:
        from recsys.encoders.product_quantized import decode

        m_books, k, _ = codebooks.shape
        if codes.dim() != 2 or codes.shape[1] != m_books:
            raise ValueError(f"codes must be [N, {m_books}] (one per codebook), got {list(codes.shape)}")
        if len(codes) and (int(codes.min()) < 0 or int(codes.max()) >= k):
            raise ValueError(f"codes must lie in [0, {k}) (the codebooks' size)")
        if kind not in ("product", "residual"):
            raise ValueError(f"kind must be 'product' or 'residual', got {kind!r}")
        if (rerank is None) != (items is None):
            raise ValueError("re-ranking needs both 'rerank' (the shortlist size) and the float item table")
        self.codes, self.codebooks, self.kind, self.n_items = codes, codebooks, kind, codes.shape[0]
        self.items, self.rerank, self.scale = items, rerank, None
        if normalize:
            b = ADCScore.block
            norms = torch.cat([decode(codes[s:s + b], codebooks, kind).norm(dim=1) for s in range(0, len(codes), b)])
            self.scale = 1.0 / norms.clamp_min(1e-12)  # F.normalize's eps

    @property
    def dim(self) -> int:
        """The width of the vectors the codes stand for."""
        m_books, _, d = self.codebooks.shape
        return m_books * d if self.kind == "product" else d

    def dequantized(self) -> Tensor:
        """The items the codes stand for (scaled to unit norm for a cosine scorer), materialised whole.

        Shapes:
            -> [N, D]
        """
        from recsys.encoders.product_quantized import decode

        x = decode(self.codes, self.codebooks, self.kind)
        return x if self.scale is None else x * self.scale[:, None]

    def score_function(self, queries: Tensor | None = None, exclude=None) -> ScoreFunction:
        q = self._query_table(queries)
        if q.shape[1] != self.dim:
            raise ValueError(f"queries have {q.shape[1]} dimensions, the codes stand for {self.dim}")
        adc = ADCScore(q, self.codes, self.codebooks, self.kind, self.scale)
        if self.items is None:
            return adc
        return CascadeScore(lambda rows: adc(rows), q, self.items, self.rerank, exclude)

    def bytes_per_item(self) -> float:
        """Packed codes, ``M·⌈log2 K⌉/8``, plus 4 for a norm, plus the float row when it re-ranks."""
        m_books, k, _ = self.codebooks.shape
        extra = (0 if self.scale is None else 4) + (0 if self.items is None else
                                                    self.items.element_size() * self.items.shape[1])
        return m_books * max(1, math.ceil(math.log2(k))) / 8 + extra


@_register
@dataclass(frozen=True)
class ProductQuantizedSpec(IndexSpec):
    """``pq[:M=8,K=256,rerank=S,iters=20,seed=0]`` or ``pq:stored=true``: product-quantized items served by ADC.

    Args:
        M: sub-spaces (must divide the item width; 8 when None).
        K: codewords per sub-space (256 when None; 2..65536).
        rerank: re-score each query's ``rerank`` best ADC candidates with the float item table (ADC alone when
            None; the index then also holds the float table).
        iters: k-means iterations per codebook.
        seed: seed of the k-means fits (the index is deterministic for a given run and seed).
        stored: serve the codes a ``ProductQuantization`` model stored (its ``M``/``K``; no k-means, no re-rank:
            its float table is the dequantized codes).
    """

    kind: ClassVar[str] = "pq"
    #: how the codebooks combine.
    quantizer: ClassVar[Kind] = "product"
    M: int | None = None
    K: int | None = None
    rerank: int | None = None
    iters: int = 20
    seed: int = 0
    stored: bool = False

    def check(self) -> None:
        self._at_least(1, "M", "rerank", "iters")
        self._at_least(0, "seed")
        if self.K is not None and not 2 <= self.K <= 65536:
            raise self._fail(f"option 'K' must be in [2, 65536], got {self.K}")
        if self.stored:
            # The k-means options too: stored codes are not fitted here, so an iters or seed would be ignored.
            given = [n for n in ("M", "K", "rerank") if getattr(self, n) is not None]
            given += [f.name for f in fields(self)
                      if f.name in ("iters", "seed") and getattr(self, f.name) != f.default]
            if given:
                raise self._fail(f"stored=true serves the model's own codes: it takes no {', '.join(given)} "
                                 "(M and K come from its codebooks, which are not re-fitted; its float table is the "
                                 "dequantized codes)")

    def build(self, tables: ServingTables) -> ProductQuantizedIndex:
        from recsys.encoders.product_quantized import code_dtype, encode, train_codebooks

        if self.stored:
            return _with_queries(self._stored(tables), tables.queries)
        m_books, k, dim = self.M or 8, self.K or 256, tables.items.shape[1]
        if self.quantizer == "product" and dim % m_books:
            raise self._fail(f"option 'M'={m_books} must divide the model's {dim} dimensions")
        items = tables.items.float()
        books = train_codebooks(items, m_books, k, self.quantizer, self.iters, self.seed)
        codes = encode(items, books, self.quantizer).to(code_dtype(k))
        index = ProductQuantizedIndex(codes, books, self.quantizer, tables.items if self.rerank else None,
                                      self.rerank, tables.normalize)
        return _with_queries(index, tables.queries)

    def _stored(self, tables: ServingTables) -> ProductQuantizedIndex:
        codes, books = tables.pq_codes, tables.pq_codebooks
        if codes is None or books is None:
            raise DataError(f"index '{self.kind}:stored=true' needs a ProductQuantization model (this run stores "
                            "no product/residual codes)")
        m_books, _, d = books.shape
        # A product codebook holds D/M coordinates, a residual one all D; with M = 1 the two kinds coincide.
        stored = "residual" if m_books > 1 and d == tables.items.shape[1] else "product"
        if m_books == 1:
            stored = self.quantizer
        if stored != self.quantizer:
            other = "rq" if stored == "residual" else "pq"
            raise self._fail(f"this run stores {stored} codes: use '{other}:stored=true'")
        return ProductQuantizedIndex(codes, books, stored, normalize=tables.normalize)


@_register
@dataclass(frozen=True)
class ResidualQuantizedSpec(ProductQuantizedSpec):
    """``rq[:M=8,K=256,rerank=S,iters=20,seed=0]`` or ``rq:stored=true``: residual-quantized items served by ADC.

    The options are :class:`ProductQuantizedSpec`'s; ``M`` is the number of residual levels (any width works).
    """

    kind: ClassVar[str] = "rq"
    quantizer: ClassVar[Kind] = "residual"
