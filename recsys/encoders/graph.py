"""Graph propagation for collaborative filtering: the user-item adjacency, a fast sparse product, and layers.

The normalised bipartite adjacency is built once from the training CSR (``torch_geometric.utils`` does the
normalisation and the CSR conversion) and kept as int32-indexed torch CSR tensors: the hot path is one sparse
matrix product per layer, never per-edge gather/scatter messages. On CPU the products run in the numba kernels of
:mod:`recsys.encoders.graph_kernels` (a software-prefetching CSR × dense loop, with Horner's axpy fused in); torch's
product (MKL) is the fallback (no numba, ``RECSYS_NO_NUMBA=1``, other dtypes, autocast) and cuSPARSE serves GPUs.
int32 indices matter for MKL: with int64 indices torch converts them on every call, which halves throughput.

Row restriction: a training step reads the final embeddings of its batch's rows only (about 6k of Gowalla's 71k
nodes), so the last layer's product is computed for those rows alone (``A[rows] X``, :func:`sparse_polynomial_rows`,
:func:`spmm_rows`), and in the backward the gradient arriving there is non-zero on those rows only, so its first
product is a scatter through their non-zeros (``A[rows]ᵀ G``). Measured on Gowalla batches of 2048 interactions,
the rows within one hop of a batch already hold 94 % of the non-zeros and those within two hops all of them, so
LightGCN's earlier layers stay full-graph products; NGCF, whose layers also do per-row GEMMs, restricts a middle
layer to the rows within reach when they are few enough (``NGCF.restrict_below``). Results equal the full
computation's rows to float rounding (the same kernel doing the same sums, the same dropout draws); the full path
stays for evaluation (``propagate()``), ``training_tables`` and SimGCL's perturbed views. :func:`row_restriction`
turns it off (the benchmark's "full" side); it needs the numba kernels and falls back to the full path without
them. ``scripts/bench_spmm.py`` measures both.

:class:`SpMM` is the autograd function for ``A @ X``: its backward is ``Aᵀ @ G``, reusing ``A`` itself when it is
symmetric (``D^-1/2 A D^-1/2``) and a stored transpose otherwise (``D^-1 (A + I)`` of the official NGCF code),
which avoids torch's default backward (transpose a CSR matrix on every call), about 2.4x faster for three layers
forward and backward.

torch_geometric is imported inside functions only: importing it costs seconds and ``import recsys.encoders``
must stay cheap.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator
from typing import Literal

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recsys.capabilities import ScoresAgainstTable, StepOutput
from recsys.encoders import graph_kernels
from recsys.encoders.base import TwoSidedEncoder
from recsys.encoders.choices import check_choice, check_size

__all__ = ["Adjacency", "SpMM", "spmm", "spmm_rows", "sparse_mm", "SparsePolynomial", "sparse_polynomial",
           "sparse_polynomial_rows", "row_restriction", "rows_restricted", "bipartite_adjacency",
           "LightGCNPropagation", "NGCFLayer", "PaperNGCFLayer", "OfficialNGCFLayer", "GraphEncoder",
           "EmbeddingInit", "init_embedding_", "dropout_mask", "l2_normalize", "GraphDropout"]


#: which graph dropout (see :meth:`Adjacency.dropout`): each non-zero ("edge") or each node's column ("node").
GraphDropout = Literal["edge", "node"]


def dropout_mask(shape: tuple[int, ...], p: float, like: Tensor) -> Tensor:
    """A dropout mask: 0 with probability ``p``, ``1/(1-p)`` otherwise, in ``like``'s dtype and device.

    On CPU, ``torch.rand``/``bernoulli_`` spend one Mersenne-Twister draw per element, which costs more than the
    layer it regularises; 16 random bits per element (four per 64-bit draw) resolve ``p`` to 1/65536 for a
    quarter of the draws.

    Shapes:
        -> shape
    """
    n = math.prod(shape)
    if like.device.type != "cpu":
        keep = torch.rand(shape, device=like.device) >= p
        return keep.to(like.dtype) / (1.0 - p)
    k = round(p * 65536)
    bits = torch.randint(-(2**63), 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64).view(torch.int16)[:n]
    if graph_kernels.usable_dense(like):  # the same mask from the same draws, in one pass instead of three
        return graph_kernels.bits_to_mask(bits, k - 32768, 65536 / (65536 - k), like.dtype).view(shape)
    return (bits >= k - 32768).view(shape).to(like.dtype).mul_(65536 / (65536 - k))


class Adjacency(nn.Module):
    """A square sparse propagation matrix with its transpose, as non-persistent buffers that follow ``.to()``.

    The matrix is stored as CSR parts (int32 ``crow``/``col``, float ``values``); ``matrices()`` assembles a torch
    CSR tensor without copying. The transpose is the same structure when the matrix is symmetric; otherwise its
    own ``crow``/``col`` plus ``perm``, the positions of its values in ``values``, so edge dropout on ``values``
    carries over to the transpose by one gather.

    Args:
        crow, col, values: CSR parts of the matrix (columns sorted within each row).
        t_crow, t_col, perm: CSR parts of the transpose and the permutation ``values[perm]`` → its values.
        symmetric: whether the matrix equals its transpose (then ``Aᵀ`` is ``A`` itself).

    Shapes:
        crow: [N + 1]; col, values, perm: [nnz]
    """

    def __init__(self, crow: Tensor, col: Tensor, values: Tensor, t_crow: Tensor, t_col: Tensor, perm: Tensor,
                 symmetric: bool) -> None:
        super().__init__()
        self.n = len(crow) - 1
        self.symmetric = symmetric
        for name, t in (("crow", crow), ("col", col), ("values", values), ("t_crow", t_crow), ("t_col", t_col),
                        ("perm", perm)):
            # Non-persistent: the graph is rebuilt from the data in ``bind``, so checkpoints hold weights only.
            self.register_buffer(name, t, persistent=False)

    @property
    def nnz(self) -> int:
        return len(self.col)

    def matrices(self, values: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The CSR matrix and its transpose, optionally with replaced (e.g. dropped-out) values.

        Shapes:
            values: [nnz] -> ([N, N], [N, N]) sparse CSR
        """
        v = self.values if values is None else values
        size = (self.n, self.n)
        a = torch.sparse_csr_tensor(self.crow, self.col, v, size, check_invariants=False)
        if self.symmetric and values is None:
            return a, a
        at = torch.sparse_csr_tensor(self.t_crow, self.t_col, v.index_select(0, self.perm), size,
                                     check_invariants=False)
        return a, at

    def dropout(self, p: float, kind: GraphDropout = "edge") -> Tensor:
        """Values with dropout applied, survivors scaled by 1/(1-p), so ``E[dropped] = values`` entry-wise.

        - ``kind="edge"``: each non-zero is dropped independently with probability ``p`` (the official NGCF
          TensorFlow code's ``_dropout_sparse`` and LightGCN-PyTorch's ``dropout``/``keep_prob`` do this).
        - ``kind="node"``: each node is dropped with probability ``p`` and sends nothing: its column is zeroed
          (NGCF paper, Wang et al. SIGIR 2019, Sec. 2.4.2: "randomly blocks a particular node and discards all its
          outgoing messages"). One draw per node, ``values * keep[col]``.

        The structure is kept (dropped entries become explicit zeros), so no re-indexing is needed and the
        transpose (``matrices(values)``) follows the same dropped entries.
        """
        check_choice("kind", kind, GraphDropout)
        if p <= 0:
            return self.values
        if kind == "node":
            keep = dropout_mask((self.n,), p, self.values)
            return self.values * keep.index_select(0, self.col)
        return self.values * dropout_mask((self.nnz,), p, self.values)

    def dense(self) -> Tensor:
        """The dense matrix (tests and small graphs only)."""
        return self.matrices()[0].to_dense()


_restrict_rows = True


def rows_restricted(x: Tensor, a: Tensor) -> bool:
    """Whether products with ``a`` for a subset of rows take the row-restricted kernels (numba usable and
    :func:`row_restriction` not off)."""
    return _restrict_rows and _kernels_usable(a, x)


@contextlib.contextmanager
def row_restriction(enabled: bool) -> Iterator[None]:
    """A block in which training steps compute the last layer for every row (``False``) or for the batch's rows
    only (``True``, the default); the results are the same to float rounding."""
    global _restrict_rows
    previous, _restrict_rows = _restrict_rows, bool(enabled)
    try:
        yield
    finally:
        _restrict_rows = previous


def _parts(a: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    return a.crow_indices(), a.col_indices(), a.values()


def _kernels_usable(a: Tensor, x: Tensor) -> bool:
    return a.layout == torch.sparse_csr and graph_kernels.usable(x, a.values())


def sparse_mm(a: Tensor, x: Tensor) -> Tensor:
    """``A @ X`` for a CSR ``A``: the numba kernel on CPU, else torch's product without its zero-fill and copy.

    On CPU, ``a @ x`` zero-fills an output, multiplies into a temporary and copies it over; ``addmm`` with
    ``beta=0`` into an uninitialised output (whose contents beta=0 ignores, NaNs included) is one pass.

    Shapes:
        a: [N, M] sparse CSR; x: [M, D] -> [N, D]
    """
    if x.device.type != "cpu":
        return a @ x
    if _kernels_usable(a, x):
        return graph_kernels.csr_mm(*_parts(a), x)
    out = torch.empty(a.shape[0], x.shape[1], dtype=x.dtype)
    return torch.addmm(out, a, x, beta=0, out=out)


class SpMM(torch.autograd.Function):
    """``A @ X`` for a fixed sparse ``A``, with the backward ``Aᵀ @ G`` done by a second CSR product.

    Shapes:
        a, at: [N, N] sparse CSR; x: [N, D] -> [N, D]
    """

    @staticmethod
    def forward(ctx, x: Tensor, a: Tensor, at: Tensor) -> Tensor:
        ctx.at = at
        return sparse_mm(a, x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return sparse_mm(ctx.at, grad.contiguous()), None, None


def spmm(a: Tensor, at: Tensor, x: Tensor) -> Tensor:
    """``A @ X`` whose gradient with respect to ``X`` is ``Aᵀ @ G`` (pass ``at = a`` for symmetric ``A``).

    Shapes:
        a, at: [N, N] sparse CSR; x: [N, D] -> [N, D]
    """
    if not (torch.is_grad_enabled() and x.requires_grad):
        return sparse_mm(a, x)
    return SpMM.apply(x, a, at)


class _RowSpMM(torch.autograd.Function):
    """``A[rows] @ X`` with the backward ``A[rows]ᵀ @ G``, a scatter through the rows' own non-zeros (no
    transpose needed, only the non-zeros the forward read).

    Shapes:
        x: [N, D]; a: [N, N] sparse CSR; rows: [R] -> [R, D]
    """

    @staticmethod
    def forward(ctx, x: Tensor, a: Tensor, rows: Tensor) -> Tensor:
        ctx.a, ctx.rows, ctx.n = a, rows, x.shape[0]
        return graph_kernels.csr_mm_rows(*_parts(a), x, rows)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return graph_kernels.csr_scatter_rows(*_parts(ctx.a), grad, ctx.rows, ctx.n), None, None


def spmm_rows(a: Tensor, at: Tensor, x: Tensor, rows: Tensor) -> Tensor:
    """``(A @ X)[rows]``, differentiable in ``X``, computing only those rows when :func:`rows_restricted`
    (otherwise the full product, then the rows).

    Shapes:
        a, at: [N, N] sparse CSR; x: [N, D]; rows: [R] -> [R, D]
    """
    if not rows_restricted(x, a):
        return spmm(a, at, x).index_select(0, rows)
    if not (torch.is_grad_enabled() and x.requires_grad):
        return graph_kernels.csr_mm_rows(*_parts(a), x, rows)
    return _RowSpMM.apply(x, a, rows)


def _trim(alpha: tuple[float, ...]) -> tuple[float, ...]:
    while len(alpha) > 1 and alpha[-1] == 0.0:
        alpha = alpha[:-1]
    return alpha


def _horner(a: Tensor, x: Tensor, alpha: tuple[float, ...]) -> Tensor:
    # Σ_l α_l A^l x = α_L (A(… A(A x + c_{L-1} x) …) + c_0 x) with c_l = α_l / α_L. With the numba kernels each
    # step is one fused pass ``s · (A h + c x)``; with torch's, a beta=0 product into fresh memory plus an in-place
    # axpy (on CPU ~30 % faster than a sparse ``addmm`` with beta != 0).
    alpha = _trim(alpha)
    if len(alpha) == 1:
        return x * alpha[0]
    last = alpha[-1]
    h = x
    if _kernels_usable(a, x):
        parts, cs = _parts(a), alpha[-2::-1]
        for k, c in enumerate(cs):
            h = graph_kernels.csr_mm(*parts, h, x, c / last, last if k == len(cs) - 1 else 1.0)
        return h
    for c in reversed(alpha[:-1]):
        h = sparse_mm(a, h)
        if c != 0.0:
            h.add_(x, alpha=c / last)
    return h.mul_(last) if last != 1.0 else h


class SparsePolynomial(torch.autograd.Function):
    """``Σ_l α_l A^l X`` (LightGCN's layer combination) with the backward ``Σ_l α_l (Aᵀ)^l G``.

    Both directions use Horner's rule, ``L`` fused sparse products each, and no intermediate layer is kept for the
    backward: it needs only ``Aᵀ`` (``A`` itself when symmetric), so memory stays at a few ``[N, D]`` tensors
    whatever the depth.

    Shapes:
        a, at: [N, N] sparse CSR; x: [N, D] -> [N, D]
    """

    @staticmethod
    def forward(ctx, x: Tensor, a: Tensor, at: Tensor, alpha: tuple[float, ...]) -> Tensor:
        ctx.at, ctx.alpha = at, alpha
        return _horner(a, x, alpha)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return _horner(ctx.at, grad.contiguous(), ctx.alpha), None, None, None


def sparse_polynomial(a: Tensor, at: Tensor, x: Tensor, alpha: tuple[float, ...]) -> Tensor:
    """``Σ_l α_l A^l X`` for ``l = 0..len(alpha)-1``, differentiable in ``X`` (see :class:`SparsePolynomial`).

    Shapes:
        a, at: [N, N] sparse CSR; x: [N, D] -> [N, D]
    """
    if not (torch.is_grad_enabled() and x.requires_grad):
        return _horner(a, x, tuple(alpha))
    return SparsePolynomial.apply(x, a, at, tuple(alpha))


def _horner_rows(a: Tensor, x: Tensor, alpha: tuple[float, ...], rows: Tensor) -> Tensor:
    # _horner's steps with the last one for ``rows`` only: the same kernel sums, so the same values.
    parts, last, cs = _parts(a), alpha[-1], alpha[-2::-1]
    h = x
    for c in cs[:-1]:
        h = graph_kernels.csr_mm(*parts, h, x, c / last)
    return graph_kernels.csr_mm_rows(*parts, h, rows, x, cs[-1] / last, last)


class _RowPolynomial(torch.autograd.Function):
    """``(Σ_l α_l A^l X)[rows]``: :class:`SparsePolynomial` with the last Horner step for ``rows`` only.

    The backward is the adjoint Horner recurrence of ``Σ_l α_l (Aᵀ)^l P G`` (``P`` puts ``G`` on ``rows``): its
    first product ``Aᵀ P G`` is a scatter through the non-zeros of ``A[rows]`` (the gradient is zero elsewhere),
    the rest full products by ``Aᵀ``; each ``c · P G`` term is an ``index_add`` on ``rows``.

    Shapes:
        x: [N, D]; a, at: [N, N] sparse CSR; rows: [R] -> [R, D]
    """

    @staticmethod
    def forward(ctx, x: Tensor, a: Tensor, at: Tensor, alpha: tuple[float, ...], rows: Tensor) -> Tensor:
        ctx.a, ctx.at, ctx.alpha, ctx.rows, ctx.n = a, at, alpha, rows, x.shape[0]
        return _horner_rows(a, x, alpha, rows)

    @staticmethod
    def backward(ctx, grad: Tensor):
        alpha, rows = ctx.alpha, ctx.rows
        g = grad.contiguous()
        last, cs = alpha[-1], alpha[-2::-1]
        h = grad.new_empty(0)
        for k, c in enumerate(cs):
            final = k == len(cs) - 1
            scale = last if final else 1.0
            if k == 0:
                h = graph_kernels.csr_scatter_rows(*_parts(ctx.a), g if scale == 1.0 else g * scale, rows, ctx.n)
            else:
                h = graph_kernels.csr_mm(*_parts(ctx.at), h, s=scale)
            if c != 0.0:
                h.index_add_(0, rows, g, alpha=c if final else c / last)
        return h, None, None, None, None


def sparse_polynomial_rows(a: Tensor, at: Tensor, x: Tensor, alpha: tuple[float, ...], rows: Tensor) -> Tensor:
    """``(Σ_l α_l A^l X)[rows]``, differentiable in ``X``, computing the last layer for ``rows`` only when
    :func:`rows_restricted` (see :class:`_RowPolynomial`; otherwise the full polynomial, then the rows).

    Shapes:
        a, at: [N, N] sparse CSR; x: [N, D]; rows: [R] -> [R, D]
    """
    alpha = _trim(tuple(alpha))
    if len(alpha) == 1 or not rows_restricted(x, a):
        return sparse_polynomial(a, at, x, alpha).index_select(0, rows)
    if not (torch.is_grad_enabled() and x.requires_grad):
        return _horner_rows(a, x, alpha, rows)
    return _RowPolynomial.apply(x, a, at, alpha, rows)


def bipartite_adjacency(train: sp.spmatrix, norm: str = "sym", self_loops: bool = False) -> Adjacency:
    """The normalised adjacency of the user-item graph, nodes ordered users first then items.

    ``A = [[0, R], [Rᵀ, 0]]`` from the binary training matrix ``R``, with:

    - ``norm="sym"``: ``D^-1/2 (A [+ I]) D^-1/2`` (NGCF paper Eq. 8, LightGCN Eq. 7); symmetric.
    - ``norm="left"``: ``D^-1 (A [+ I])``, the row-normalised ("mean") matrix; with ``self_loops=True`` it is the
      ``norm`` adjacency of the official NGCF code. Not symmetric, so the transpose is stored too.

    Nodes without edges (users or items with no training interaction) get all-zero rows.

    Args:
        train: user × item interactions (any non-zero counts as an edge).
        norm: ``"sym"`` or ``"left"``.
        self_loops: add ``I`` before normalising.

    Shapes:
        train: [U, I] -> Adjacency over U + I nodes
    """
    from torch_geometric.nn.conv.gcn_conv import gcn_norm
    from torch_geometric.utils import add_self_loops, degree, to_torch_csr_tensor

    if norm not in ("sym", "left"):
        raise ValueError(f"norm must be 'sym' or 'left', not {norm!r}")
    csr = sp.csr_matrix(train, copy=True)
    csr.eliminate_zeros()  # stored zeros are not edges
    coo = csr.tocoo()
    n_users, n_items = coo.shape
    n = n_users + n_items
    u = torch.from_numpy(coo.row.astype(np.int64))
    i = torch.from_numpy(coo.col.astype(np.int64)) + n_users
    edge_index = torch.stack([torch.cat([u, i]), torch.cat([i, u])])
    if self_loops:
        edge_index, _ = add_self_loops(edge_index, num_nodes=n)
    if norm == "sym":
        edge_index, weight = gcn_norm(edge_index, None, n, add_self_loops=False)
    else:
        deg = degree(edge_index[0], n)
        weight = deg.reciprocal()[edge_index[0]]
    with warnings.catch_warnings():  # torch's "CSR is beta" / "invariant checks implicitly disabled" notices
        warnings.simplefilter("ignore", UserWarning)
        a = to_torch_csr_tensor(edge_index, weight.float(), size=n)  # sorts the edges into CSR order
    crow, col, values = a.crow_indices(), a.col_indices(), a.values()
    # The transpose's CSR order sorts entries by (column, row); ``perm`` maps it back to positions in ``values``.
    row = torch.repeat_interleave(torch.arange(n), crow.diff())
    perm = torch.argsort(col * n + row)
    t_crow = torch.cat([crow.new_zeros(1), torch.bincount(col, minlength=n).cumsum(0)])
    symmetric = norm == "sym"
    return Adjacency(crow.int(), col.int(), values.contiguous(), t_crow.int(), row[perm].int(), perm, symmetric)


class LightGCNPropagation(nn.Module):
    """LightGCN's layer combination: ``Σ_l α_l Ã^l E``, with no weights and no non-linearity.

    He et al., "LightGCN: Simplifying and Powering Graph Convolution Network for Recommendation", SIGIR 2020,
    Eq. 7-8.

    Args:
        n_layers: propagation depth ``L``.
        alpha: the layer weights ``α_0..α_L`` (``1/(L+1)`` each when None).

    Shapes:
        x: [N, D] -> [N, D]
    """

    def __init__(self, n_layers: int = 3, alpha: list[float] | None = None) -> None:
        super().__init__()
        if alpha is None:
            alpha = [1.0 / (n_layers + 1)] * (n_layers + 1)
        if len(alpha) != n_layers + 1:
            raise ValueError(f"alpha needs n_layers + 1 = {n_layers + 1} weights, got {len(alpha)}")
        self.n_layers, self.alpha = n_layers, [float(a) for a in alpha]

    def forward(self, adj: Adjacency, x: Tensor, values: Tensor | None = None, rows: Tensor | None = None) -> Tensor:
        """All rows' combined embeddings, or those of ``rows`` (the last layer computed for them only).

        Shapes:
            x: [N, D]; rows: [R] or None -> [R, D] (or [N, D])
        """
        a, at = adj.matrices(values)
        if rows is None:
            return sparse_polynomial(a, at, x, tuple(self.alpha))
        if not rows_restricted(x, a):
            return sparse_polynomial(a, at, x, tuple(self.alpha)).index_select(0, rows)
        # Duplicates (a user twice in a batch) are computed once; the gather's backward sums them.
        unique, inverse = torch.unique(rows, return_inverse=True)
        return sparse_polynomial_rows(a, at, x, tuple(self.alpha), unique).index_select(0, inverse)


class NGCFLayer(nn.Module):
    """One NGCF embedding-propagation layer: the weights both forms share; subclasses give the form.

    Wang et al., "Neural Graph Collaborative Filtering", SIGIR 2019, Eq. 7. The sum branch has ``W_sum``, ``b_sum``
    and the bi-interaction branch ``W_bi``, ``b_bi``, in both :class:`PaperNGCFLayer` and
    :class:`OfficialNGCFLayer`. Message dropout (``mask``, from :func:`dropout_mask`) multiplies the layer's
    output, as in both codes.

    Args:
        in_dim, out_dim: embedding sizes before and after.
        negative_slope: the LeakyReLU slope (0.2 in both codes).

    Shapes:
        x: [N, in_dim], side = L x: [N, in_dim], mask: [N, out_dim] or None -> [N, out_dim]
    """

    def __init__(self, in_dim: int, out_dim: int, negative_slope: float = 0.2) -> None:
        super().__init__()
        self.negative_slope = negative_slope
        self.w_sum = nn.Parameter(torch.empty(in_dim, out_dim))
        self.w_bi = nn.Parameter(torch.empty(in_dim, out_dim))
        self.b_sum = nn.Parameter(torch.empty(1, out_dim))
        self.b_bi = nn.Parameter(torch.empty(1, out_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Glorot-uniform weights, as tf.contrib.layers.xavier_initializer in the official code.
        nn.init.xavier_uniform_(self.w_sum)
        nn.init.xavier_uniform_(self.w_bi)
        self.reset_biases()

    def reset_biases(self) -> None:
        raise NotImplementedError

    def forward(self, x: Tensor, side: Tensor, mask: Tensor | None = None) -> Tensor:
        raise NotImplementedError


class PaperNGCFLayer(NGCFLayer):
    """The paper's NGCF layer: ``LeakyReLU((L + I) E W1 + (L E ⊙ E) W2 + b)`` with ``L = D^-1/2 A D^-1/2``.

    Wang et al., SIGIR 2019, Eq. 7 (RecBole's form), computed as ``[(LE + E), (LE ⊙ E)] @ [W1; W2]``, one GEMM
    (:class:`_NGCFPaperLayer`); ``b = b_sum + b_bi``.

    Shapes:
        x: [N, in_dim], side = L x: [N, in_dim], mask: [N, out_dim] or None -> [N, out_dim]
    """

    def reset_biases(self) -> None:
        # RecBole's NGCF starts its biases at zero.
        nn.init.zeros_(self.b_sum)
        nn.init.zeros_(self.b_bi)

    def forward(self, x: Tensor, side: Tensor, mask: Tensor | None = None) -> Tensor:
        return _NGCFPaperLayer.apply(x, side, torch.cat([self.w_sum, self.w_bi]), self.b_sum + self.b_bi, mask,
                                     self.negative_slope)


class OfficialNGCFLayer(NGCFLayer):
    """The authors' TensorFlow NGCF layer: ``LeakyReLU(L' E W_gc + b_gc) + LeakyReLU((E ⊙ L' E) W_bi + b_bi)``.

    ``xiangwang1223/neural_graph_collaborative_filtering`` (``alg_type=ngcf``), with ``L' = D^-1 (A + I)``: no
    explicit self-connection term (the self-loop is inside ``L'``) and one activation per branch.

    Shapes:
        x: [N, in_dim], side = L' x: [N, in_dim], mask: [N, out_dim] or None -> [N, out_dim]
    """

    def reset_biases(self) -> None:
        # The official code draws its [1, d] biases with the weights' Glorot initialiser.
        nn.init.xavier_uniform_(self.b_sum)
        nn.init.xavier_uniform_(self.b_bi)

    def forward(self, x: Tensor, side: Tensor, mask: Tensor | None = None) -> Tensor:
        if graph_kernels.usable_dense(x, side, self.w_sum, self.w_bi, self.b_sum, self.b_bi, mask):
            return _NGCFOfficialLayer.apply(x, side, self.w_sum, self.b_sum, self.w_bi, self.b_bi, mask,
                                            self.negative_slope)
        s = F.leaky_relu(torch.addmm(self.b_sum, side, self.w_sum), self.negative_slope)
        b = F.leaky_relu(torch.addmm(self.b_bi, x * side, self.w_bi), self.negative_slope)
        return s + b if mask is None else (s + b) * mask


class _NGCFOfficialLayer(torch.autograd.Function):
    """The official NGCF layer ``mask ⊙ (LeakyReLU(L'E W_gc + b_gc) + LeakyReLU((E ⊙ L'E) W_bi + b_bi))`` with a
    hand-written backward whose element-wise work is three fused numba passes (:mod:`graph_kernels`).

    Autograd's version makes about a dozen full passes over ``[N, D]`` memory outside the GEMMs (two activations
    and their backwards, the sum, the mask and its backward, the product ``E ⊙ L'E`` and its two backwards, the
    gradient accumulation at ``L'E``, the bias sums); here: ``E ⊙ L'E``, the output, the activations' backward
    with the bias sums, and both input gradients. The four GEMMs and the pre-activations are torch's, so values
    equal the autograd form's to float rounding.

    Shapes:
        x, side: [N, D]; w_sum, w_bi: [D, D']; b_sum, b_bi: [1, D']; mask: [N, D'] or None -> [N, D']
    """

    @staticmethod
    def forward(ctx, x: Tensor, side: Tensor, w_sum: Tensor, b_sum: Tensor, w_bi: Tensor, b_bi: Tensor,
                mask: Tensor | None, slope: float) -> Tensor:
        feat = x * side
        with torch.autocast(x.device.type, enabled=False):
            p1 = torch.addmm(b_sum, side, w_sum)
            p2 = torch.addmm(b_bi, feat, w_bi)
        ctx.slope = slope
        ctx.save_for_backward(x, side, feat, p1, p2, w_sum, w_bi, mask)
        return graph_kernels.ngcf_branches(p1, p2, mask, slope)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, side, feat, p1, p2, w_sum, w_bi, mask = ctx.saved_tensors
        g1, g2, gb1, gb2 = graph_kernels.ngcf_branches_backward(grad, mask, p1, p2, ctx.slope)
        gx, gside = graph_kernels.ngcf_input_grads(g1 @ w_sum.t(), g2 @ w_bi.t(), x, side)
        return gx, gside, side.t() @ g1, gb1, feat.t() @ g2, gb2, None, None


class _NGCFPaperLayer(torch.autograd.Function):
    """The paper-form NGCF layer with message dropout, with a hand-written backward.

    Autograd's version of ``mask ⊙ LeakyReLU([E + LE, LE ⊙ E] W + b)`` makes about twice the full-size passes over
    ``[N, D]`` memory (the concatenation, each product's backward, separate bias, activation and dropout
    backwards, gradient accumulation); the layer is memory-bound at NGCF's sizes, so the fused form trains
    about a fifth faster per layer forward and backward on CPU.

    Shapes:
        x, side: [N, D]; w: [2D, D']; b: [1, D']; mask: [N, D'] or None -> [N, D']
    """

    @staticmethod
    def forward(ctx, x: Tensor, side: Tensor, w: Tensor, b: Tensor, mask: Tensor | None, slope: float) -> Tensor:
        d = x.shape[1]
        features = torch.empty(x.shape[0], 2 * d, dtype=x.dtype, device=x.device)
        torch.add(side, x, out=features[:, :d])
        torch.mul(side, x, out=features[:, d:])
        # In the inputs' dtype even under autocast: the backward's products must match the saved tensors' dtype.
        with torch.autocast(x.device.type, enabled=False):
            out = F.leaky_relu_(torch.addmm(b, features, w), slope)
        if mask is not None:
            out.mul_(mask)
        ctx.slope = slope
        ctx.save_for_backward(x, side, w, features, out, mask)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, side, w, features, out, mask = ctx.saved_tensors
        d = x.shape[1]
        if mask is not None:
            grad = grad * mask
        # out > 0 exactly where the pre-activation is (dropped entries have zero gradient either way).
        grad = torch.ops.aten.leaky_relu_backward(grad, out, ctx.slope, True)
        g_features = grad @ w.t()
        g_sum, g_bi = g_features[:, :d], g_features[:, d:]
        return (torch.addcmul(g_sum, g_bi, side), torch.addcmul(g_sum, g_bi, x), features.t() @ grad,
                grad.sum(0, keepdim=True), None, None)


class _L2Normalize(torch.autograd.Function):
    """Row-wise L2 normalisation, ``F.normalize(x, dim=1)``, with a three-pass backward (autograd's takes six).

    Shapes:
        x: [N, D] -> [N, D]
    """

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        norm = torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min_(1e-12)
        y = x / norm
        ctx.save_for_backward(y, norm)
        return y

    @staticmethod
    def backward(ctx, grad: Tensor):
        y, norm = ctx.saved_tensors
        dot = torch.linalg.vecdot(grad, y, dim=1).unsqueeze(1)
        return torch.addcmul(grad, y, dot, value=-1).div_(norm)


def l2_normalize(x: Tensor) -> Tensor:
    """Rows of ``x`` scaled to unit L2 norm (``F.normalize(x, dim=1)`` with a cheaper backward).

    Shapes:
        x: [N, D] -> [N, D]
    """
    return _L2Normalize.apply(x)


#: how an ego table starts (see :func:`init_embedding_`).
EmbeddingInit = Literal["normal", "xavier", "xavier_normal"]


def init_embedding_(weight: Tensor, n_users: int, init: EmbeddingInit, std: float = 0.1) -> None:
    """Initialise a users-then-items table in place, each side as its own table would be.

    Args:
        weight: the [U + I, D] table.
        n_users: rows that belong to users.
        init: ``"normal"`` (std ``std``, LightGCN's PyTorch code), ``"xavier"`` (Glorot-uniform per side, the
            official TensorFlow NGCF and LightGCN codes) or ``"xavier_normal"`` (RecBole).
        std: the standard deviation for ``"normal"``.
    """
    check_choice("init", init, EmbeddingInit)
    with torch.no_grad():
        for part in (weight[:n_users], weight[n_users:]):
            if len(part) == 0:
                continue
            if init == "normal":
                part.normal_(0.0, std)
            elif init == "xavier":
                nn.init.xavier_uniform_(part)
            else:
                nn.init.xavier_normal_(part)


class GraphEncoder(ScoresAgainstTable, TwoSidedEncoder):
    """Base of encoders that propagate ego embeddings of users and items jointly over the user-item graph.

    One ego table holds users (rows ``[0, U)``) then items (rows ``[U, U + I)``), the node order of the adjacency,
    so no concatenation is needed per step. Subclasses set ``norm``/``self_loops`` (the adjacency) and implement
    :meth:`propagate_nodes`. Training propagates once per batch and indexes; evaluation propagates once per pass
    through :meth:`propagate` and the base class's ``precompute`` cache.

    Args:
        dim: ego embedding size.
        init: see :func:`init_embedding_`.
        init_std: standard deviation of the ``"normal"`` initialisation.

    Shapes:
        batch.users: [B]; batch.items: [B, C] -> (query [B, out_dim], items [B, C, out_dim])
    """

    norm = "sym"
    self_loops = False

    def __init__(self, dim: int = 64, init: EmbeddingInit = "normal", init_std: float = 0.1) -> None:
        super().__init__()
        check_choice("init", init, EmbeddingInit)
        check_size(type(self).__name__, "dim", dim)
        self.dim, self.init, self.init_std = dim, init, init_std
        self.out_dim = dim
        self.n_users = self._n_items = 0
        self.embedding: nn.Embedding | None = None
        self.adj: Adjacency | None = None

    def bind(self, data) -> None:
        self.n_users, self._n_items = data.n_users, data.n_items
        self.embedding = nn.Embedding(self.n_users + self._n_items, self.dim)
        init_embedding_(self.embedding.weight, self.n_users, self.init, self.init_std)
        self.adj = bipartite_adjacency(data.train, self.norm, self.self_loops)

    @property
    def n_items(self) -> int:
        return self._n_items

    def propagate_nodes(self, rows: Tensor | None = None) -> Tensor:
        """Final embeddings of the nodes ``rows`` (users then items; all when None), with dropout when training.

        Encoders whose last steps are row-wise may compute them for ``rows`` only.

        Shapes:
            rows: [R] -> [R, out_dim] (or [U + I, out_dim])
        """
        raise NotImplementedError

    def propagate(self) -> tuple[Tensor, Tensor]:
        out = self.propagate_nodes()
        return out[:self.n_users], out[self.n_users:]

    def forward(self, batch) -> StepOutput:
        if self._tables is not None:
            return super().forward(batch)
        query, cands = self.batch_rows(batch)
        return StepOutput(query, cands, self.step_penalty(batch, query, cands), self.batch_losses(batch))

    def batch_rows(self, batch) -> tuple[Tensor, Tensor]:
        """The batch's propagated user and candidate embeddings, from one propagation.

        Shapes:
            batch.users: [B]; batch.items: [B, C] -> (query [B, out_dim], candidates [B, C, out_dim])
        """
        n_batch, n_cands = batch.items.shape
        # One gather for users and candidates: its backward is one scatter into one zero [N, D] gradient.
        rows = torch.cat([batch.users, batch.items.reshape(-1) + self.n_users])
        # ``split`` (not slicing): its backward is one concatenation, where each slice's would zero-fill a copy.
        query, cands = torch.split(self.propagate_nodes(rows), [n_batch, n_batch * n_cands])
        return query, cands.view(n_batch, n_cands, -1)

    def step_penalty(self, batch, query: Tensor, cands: Tensor) -> Tensor:
        """The step's L2 penalty given its propagated embeddings; the ego rows' (:meth:`ego_regularization`) here.

        Shapes:
            query: [B, out_dim]; cands: [B, C, out_dim] -> scalar
        """
        return self.ego_regularization(batch)

    def training_tables(self, batch) -> StepOutput:
        """The batch's user embeddings and the whole item table, for scoring many negatives by one GEMM.

        Shapes:
            batch.users: [B] -> StepOutput(query [B, out_dim], candidates [I, out_dim])
        """
        users, items = self.propagate()
        query = users.index_select(0, batch.users)
        return StepOutput(query, items, self.step_penalty(batch, query, items[batch.items]), self.batch_losses(batch))

    def _table(self) -> tuple[Tensor, Tensor]:
        return self._tables if self._tables is not None else self.propagate()

    def encode_queries(self, batch) -> Tensor:
        return self._table()[0][batch.users]

    def encode_items(self, items: Tensor) -> Tensor:
        return self._table()[1][items]

    def ego_regularization(self, batch) -> Tensor:
        """``½ ‖e⁰‖²`` summed over the batch's users and candidates (``tf.nn.l2_loss`` of the official codes).

        With the model dividing by the batch size, ``reg_weight`` is the papers' λ (``decay``).
        """
        w = self.embedding.weight
        rows = torch.cat([batch.users, batch.items.reshape(-1) + self.n_users])
        return 0.5 * w.index_select(0, rows).pow(2).sum()

    def regularization(self, batch) -> Tensor:
        return self.ego_regularization(batch)
