"""Dense × sparse weight factorization (DSFormer): ``W ≈ D·S``, a dense low-rank factor times a k-sparse one.

A ``[m, n]`` weight is stored as a dense ``D [m, r]`` and a sparse ``S [r, n]`` with exactly ``k`` non-zeros per
column, so each column of ``W`` is a combination of ``k`` of the ``r`` dense atoms (a learned dictionary): ``m·r +
n·k`` values instead of ``m·n``, and, unlike a plain rank-``r`` factorization, the ``n`` side costs ``k < r`` values
per column. ``S`` is trained dense and masked to its ``k`` largest-magnitude entries per column in every forward
pass, with a straight-through estimator (the mask is treated as the identity backward), so entries outside the
current support still receive gradients and can enter it: DSFormer's straight-through factorizer.

Two uses here:

* :class:`DenseSparseLinear`, a drop-in ``nn.Linear`` (AlphaRec's mapping MLP: :func:`dense_sparse_mapping`, and
  :class:`DenseSparseAlphaRec`, which builds its mapping from it);
* :class:`DenseSparseTable`, an encoder wrapper for embedding tables (MF's user and item tables, a graph encoder's
  output): the transposed table ``Eᵀ [dim, rows] = D [dim, r] · S [r, rows]``, i.e. every row is a ``k``-sparse code
  over a dense dictionary of ``r`` atoms. :func:`dense_sparse_scores` scores against the codes without
  materialising the table.

Chand, Prabhu & Kumar, "DSFormer: Effective Compression of Text-Transformers by Dense-Sparse Weight
Factorization", arXiv:2312.13211, 2023; straight-through estimator: Bengio et al., 2013.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recsys.capabilities import ExplicitConcepts
from recsys.encoders.base import TwoSidedEncoder
from recsys.encoders.choices import check_choice, check_size
from recsys.encoders.language import AlphaRec
from recsys.encoders.wrapper import EncoderWrapper
from recsys.errors import UsageError

__all__ = ["DenseSparseAlphaRec", "DenseSparseLinear", "DenseSparseTable", "dense_sparse_mapping",
           "dense_sparse_scores", "index_bytes", "sparsify_ste", "topk_mask"]

#: which sides of a two-sided encoder :class:`DenseSparseTable` codes sparsely.
SparseSides = Literal["both", "item"]


def _check_nonzeros(owner: str, name: str, k: int, rank: int) -> None:
    check_size(owner, name, k)
    if k > rank:
        raise UsageError(f"{owner} {name} must be <= rank ({rank}), got {k}")


def topk_mask(x: Tensor, k: int, dim: int) -> Tensor:
    """True at the ``k`` largest-magnitude entries of ``x`` along ``dim`` (ties broken by ``torch.topk``).

    Shapes:
        x: [...] -> [...] bool, exactly ``k`` True per slice along ``dim``
    """
    idx = x.detach().abs().topk(k, dim=dim).indices
    return torch.zeros_like(x, dtype=torch.bool).scatter_(dim, idx, True)


def sparsify_ste(x: Tensor, k: int, dim: int) -> Tensor:
    """``x`` with all but its top-``k`` magnitudes along ``dim`` zeroed forward; the identity backward.

    Straight-through: the gradient reaches every entry, so an entry outside the support can grow into it.

    Shapes:
        x: [...] -> [...]
    """
    if k >= x.shape[dim]:
        return x
    sparse = x * topk_mask(x, k, dim)
    return x + (sparse - x).detach()


def index_bytes(rank: int) -> int:
    """Bytes of one stored non-zero's position among ``rank`` atoms (uint8, uint16 or int32)."""
    return 1 if rank <= 256 else 2 if rank <= 65536 else 4


class DenseSparseLinear(nn.Module):
    """``y = x·(D·S)ᵀ + b`` with a dense ``D [out, r]`` and a ``k``-sparse-per-column ``S [r, in]``.

    Args:
        in_features: input size ``n`` (the columns of ``W [out, in]``, each a combination of ``k`` atoms).
        out_features: output size ``m`` (the atoms' length).
        rank: number of dense atoms ``r``.
        nonzeros_per_column: ``k``, the non-zeros of each column of ``S`` (1..rank; ``k = r`` is a plain low-rank
            layer).
        bias: learn an additive bias, as ``nn.Linear``.

    Shapes:
        x: [..., in_features] -> [..., out_features]
    """

    def __init__(self, in_features: int, out_features: int, rank: int, nonzeros_per_column: int,
                 bias: bool = True) -> None:
        super().__init__()
        name = type(self).__name__
        for option, value in (("in_features", in_features), ("out_features", out_features), ("rank", rank)):
            check_size(name, option, value)
        _check_nonzeros(name, "nonzeros_per_column", nonzeros_per_column, rank)
        self.in_features, self.out_features, self.rank, self.nonzeros = in_features, out_features, rank, \
            nonzeros_per_column
        # Scaled so that the product has nn.Linear's weight variance 1/(3·in): the k surviving entries of a column of
        # S are unit-variance (roughly: top-k by magnitude are a bit larger), each atom entry has variance 1/(3·in·k).
        self.dense = nn.Parameter(torch.randn(out_features, rank) / math.sqrt(3 * in_features * nonzeros_per_column))
        self.sparse = nn.Parameter(torch.randn(rank, in_features))
        self.bias = nn.Parameter(torch.empty(out_features).uniform_(-1, 1) / math.sqrt(in_features)) if bias else None

    def sparse_factor(self) -> Tensor:
        """``S`` masked to its top-``k`` entries per column (straight-through gradient to the dense ``S``).

        Shapes:
            -> [rank, in_features], ``k`` non-zeros per column
        """
        return sparsify_ste(self.sparse, self.nonzeros, dim=0)

    def weight(self) -> Tensor:
        """The effective dense weight ``D·S`` (for inspection and tests; ``forward`` never forms it).

        Shapes:
            -> [out_features, in_features]
        """
        return self.dense @ self.sparse_factor()

    def forward(self, x: Tensor) -> Tensor:
        # x·Sᵀ first: [.., r] intermediates, so the cost is that of a rank-r layer, not of the [out, in] weight.
        return F.linear(F.linear(x, self.sparse_factor()), self.dense, self.bias)

    def parameter_count(self) -> int:
        """Stored values: ``out·r`` dense, ``in·k`` sparse non-zeros, and the bias (positions not counted)."""
        return self.out_features * self.rank + self.in_features * self.nonzeros + \
            (self.out_features if self.bias is not None else 0)

    def stored_bytes(self) -> int:
        """float32 values plus the non-zeros' positions (:func:`index_bytes`)."""
        return 4 * self.parameter_count() + self.in_features * self.nonzeros * index_bytes(self.rank)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
                f"nonzeros_per_column={self.nonzeros}, bias={self.bias is not None}")


def dense_sparse_mapping(mapping: nn.Module, rank: int, nonzeros_per_column: int) -> nn.Module:
    """``mapping`` with every ``nn.Linear`` replaced by a freshly initialised :class:`DenseSparseLinear` of the same
    shape and bias (for AlphaRec's ``make_mapping`` output: its linear probe or its MLP); a container is converted in
    place and returned, a bare ``nn.Linear`` is returned converted.

    A layer the factorization would not shrink (``out·r + in·k >= out·in``) is kept dense.

    Args:
        mapping: an ``nn.Linear`` or a module containing some (an ``nn.Sequential`` MLP).
        rank: atoms ``r`` of each factorized layer.
        nonzeros_per_column: ``k`` of each factorized layer.
    """
    _check_nonzeros("dense_sparse_mapping", "nonzeros_per_column", nonzeros_per_column, rank)

    def convert(layer: nn.Linear) -> nn.Module:
        m, n = layer.out_features, layer.in_features
        if m * rank + n * nonzeros_per_column >= m * n:
            return layer
        return DenseSparseLinear(layer.in_features, layer.out_features, rank, nonzeros_per_column,
                                 bias=layer.bias is not None)

    if isinstance(mapping, nn.Linear):
        return convert(mapping)
    for name, child in mapping.named_children():
        setattr(mapping, name, dense_sparse_mapping(child, rank, nonzeros_per_column))
    return mapping


class DenseSparseAlphaRec(AlphaRec):
    """AlphaRec whose mapping's linear layers are :class:`DenseSparseLinear` (DSFormer), everything else unchanged.

    The official MLP for a 384-d LM is 384 → 12288 → dim (~4.7M weights in the first layer); factorized at rank
    ``r`` with ``k`` non-zeros per column it stores ``12288·r + 384·k`` values there.

    Args:
        rank: atoms ``r`` of each factorized mapping layer.
        nonzeros_per_column: ``k`` of each factorized mapping layer.
        **kwargs: :class:`~recsys.encoders.language.AlphaRec`'s options (``dim``, ``mapping``, ``hidden_dim``, the
            LM options, ...).

    Shapes:
        batch.users: [B]; batch.items: [B, C] -> (query [B, dim], items [B, C, dim])
    """

    def __init__(self, rank: int = 64, nonzeros_per_column: int = 8, **kwargs) -> None:
        super().__init__(**kwargs)
        check_size(type(self).__name__, "rank", rank)
        _check_nonzeros(type(self).__name__, "nonzeros_per_column", nonzeros_per_column, rank)
        self.rank, self.nonzeros_per_column = rank, nonzeros_per_column

    def bind(self, data) -> None:
        # AlphaRec makes its mapping in bind, once the LM width is known; it is converted right after, before any
        # step (and a rebind, which keeps the mapping, keeps the factorized one).
        fresh = self.mapping is None
        super().bind(data)
        if fresh:
            self.mapping = dense_sparse_mapping(self.mapping, self.rank, self.nonzeros_per_column)


class DenseSparseTable(EncoderWrapper):
    """Embedding rows as ``k``-sparse codes over a dense dictionary: ``E = sparsify_k(A) · D``.

    The wrapped encoder produces each row's code ``A`` (for MF: ID tables of width ``r``); the ``k`` largest-magnitude
    entries per row are kept (straight-through) and multiplied by the shared dictionary ``D [r, dim]``. In DSFormer's
    terms the transposed table is ``Eᵀ = Dᵀ·S`` with ``S = sparsify_k(A)ᵀ``, ``k`` non-zeros per column. A stored
    item costs ``k`` values and ``k`` positions (:meth:`bytes_per_item`) instead of ``dim`` floats (dense) or ``r``
    floats (:class:`~recsys.encoders.lowrank.LowRank`).

    Args:
        encoder: produces the codes; its ``out_dim`` is the dictionary size ``r``.
        dim: the served embedding size.
        nonzeros: ``k``, non-zeros kept per code (1..r).
        sides: ``"both"`` (user and item codes sparse: MF's two tables) or ``"item"`` (only the stored item table;
            queries use their dense code).

    Shapes:
        batch.users: [B]; batch.items: [B, C] -> (query [B, dim], items [B, C, dim])
    """

    #: the dictionary mixes coordinates, so named concept dimensions do not survive it.
    refuses = (ExplicitConcepts,)

    def __init__(self, encoder: TwoSidedEncoder, dim: int = 64, nonzeros: int = 8, sides: SparseSides = "both"
                 ) -> None:
        super().__init__(encoder)
        check_size(type(self).__name__, "dim", dim)
        check_choice("sides", sides, SparseSides)
        self.rank = encoder.out_dim
        _check_nonzeros(type(self).__name__, "nonzeros", nonzeros, self.rank)
        self.out_dim, self.nonzeros, self.sides = dim, nonzeros, sides
        # A row sums k atoms: 1/√k keeps its scale that of one unit-variance code entry, whatever k.
        self.dictionary = nn.Parameter(torch.randn(self.rank, dim) / math.sqrt(nonzeros))

    def bind_wrapper(self, data) -> None:
        if self.dictionary.shape[0] != self.encoder.out_dim:
            raise UsageError(f"DenseSparseTable: the wrapped encoder's width became {self.encoder.out_dim} at bind, "
                             f"not the dictionary size {self.rank}")

    def served_dim(self) -> int:
        return self.dictionary.shape[1]

    def code(self, x: Tensor, side: str) -> Tensor:
        """The (sparse, for a coded side) code of inner embeddings.

        Shapes:
            x: [..., r] -> [..., r], ``k`` non-zeros per row on a coded side
        """
        return x if side == "query" and self.sides == "item" else sparsify_ste(x, self.nonzeros, dim=-1)

    def transform(self, x: Tensor, side: str, state=None) -> Tensor:
        return self.code(x, side) @ self.dictionary

    @torch.no_grad()
    def sparse_item_codes(self) -> Tensor:
        """The item codes as a sparse CSR matrix (what a deployment stores besides the dictionary).

        Shapes:
            -> [n_items, r] sparse CSR, ``k`` non-zeros per row
        """
        self.encoder.precompute()
        try:
            a = self.encoder.item_table()
        finally:
            self.encoder.clear_cache()
        return self.code(a, "item").to_sparse_csr()

    def parameter_count(self, n_rows: int | None = None) -> int:
        """Stored values: ``n_rows · k`` code non-zeros plus ``r · dim`` dictionary entries (positions not counted).

        ``n_rows`` is the number of coded rows (users + items for MF with ``sides="both"``; the caller knows it).
        """
        return (n_rows or 0) * self.nonzeros + self.rank * self.out_dim

    def bytes_per_item(self) -> float:
        """float32 values plus positions of one item's ``k`` non-zeros (the shared dictionary is not per item)."""
        return float(self.nonzeros * (4 + index_bytes(self.rank)))


def dense_sparse_scores(queries: Tensor, codes: Tensor, dictionary: Tensor) -> Tensor:
    """Scores ``q · (S·D)ᵀ`` of queries against sparse item codes, without forming the item table.

    ``(q·Dᵀ)`` maps the queries onto the ``r`` atoms once; each item then costs ``k`` multiply-adds (a CSR × dense
    product) instead of ``dim``.

    Args:
        queries: served query embeddings.
        codes: item codes, sparse CSR (:meth:`DenseSparseTable.sparse_item_codes`) or dense.
        dictionary: ``D``.

    Shapes:
        queries: [U, dim]; codes: [N, r]; dictionary: [r, dim] -> [U, N]
    """
    return (codes @ (queries @ dictionary.T).T).T
