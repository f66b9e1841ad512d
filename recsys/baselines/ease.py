"""EASE (Steck, "Embarrassingly Shallow Autoencoders for Sparse Data", WWW 2019), plus the sparse-history helpers
that the item-item baselines (EASE, item-kNN) share."""

from __future__ import annotations

import logging
import time
from typing import Literal

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor, nn

from recsys.baselines.base import Baseline
from recsys.capabilities import Histories, ScoresHistories
from recsys.progress import progress
from recsys.recommender import LightningFit

log = logging.getLogger(__name__)

__all__ = ["EASE", "csr_from_buffers", "ease_weights", "gather_rows", "set_csr_buffers"]


def set_csr_buffers(module: nn.Module, prefix: str, m: sp.csr_matrix) -> None:
    """Store a scipy CSR matrix as three plain buffers ``{prefix}_indptr``, ``_indices``, ``_data``.

    Plain dense buffers (not a torch sparse tensor) keep ``state_dict`` loadable with ``torch.load(weights_only=True)``
    and resizable by ``Baseline._load_from_state_dict``.

    Shapes:
        m: [R, C] with nnz stored values -> indptr [R + 1] int64, indices [nnz] int64, data [nnz] float32
    """
    m = sp.csr_matrix(m)
    m.sort_indices()
    setattr(module, f"{prefix}_indptr", torch.from_numpy(m.indptr.astype(np.int64)))
    setattr(module, f"{prefix}_indices", torch.from_numpy(m.indices.astype(np.int64)))
    setattr(module, f"{prefix}_data", torch.from_numpy(m.data.astype(np.float32)))


def csr_from_buffers(module: nn.Module, prefix: str) -> sp.csr_matrix:
    """A scipy CSR matrix over what :func:`set_csr_buffers` stored; its columns are the module's ``n_items`` items.

    Shapes:
        -> [len(indptr) - 1, n_items]
    """
    # Not a probe: the buffers set_csr_buffers registered under these names, looked up by name.
    indptr = getattr(module, f"{prefix}_indptr").cpu().numpy()
    data = getattr(module, f"{prefix}_data").cpu().numpy()
    indices = getattr(module, f"{prefix}_indices").cpu().numpy()
    return sp.csr_matrix((data, indices, indptr), shape=(len(indptr) - 1, module.n_items))


def gather_rows(indptr: Tensor, indices: Tensor, data: Tensor, rows: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """COO triplets of the selected CSR rows, renumbered ``0..len(rows)-1``, without a Python loop.

    Shapes:
        indptr: [R + 1]; indices, data: [nnz]; rows: [B] -> r, c, v: [nnz of the selected rows]
    """
    rows = rows.to(indptr.device, torch.int64)
    starts, ends = indptr[rows], indptr[rows + 1]
    lens = ends - starts
    r = torch.repeat_interleave(torch.arange(len(rows), device=indptr.device), lens)
    # Position inside each row plus that row's start gives the flat offset into indices/data.
    first = torch.cumsum(lens, 0) - lens
    offs = torch.arange(len(r), device=indptr.device) - first[r] + starts[r]
    return r, indices[offs], data[offs]


@torch.no_grad()
def ease_weights(X: sp.spmatrix, l2: float, method: str = "auto", block: int = 2048) -> Tensor:
    """EASE's closed-form item-item weights ``B = I - P diag(1/diag(P))`` with ``P = (XᵀX + λI)⁻¹``, ``diag(B) = 0``.

    Two exact routes, chosen by cost when ``method="auto"``:

    * ``primal``: Cholesky of the item Gram matrix, O(I³) time, two float64 I × I temporaries (16·I² bytes) at peak.
    * ``dual``: the Woodbury identity ``P = (I - Xᵀ(λI + XXᵀ)⁻¹X)/λ``, O(U³ + nnz·I) time and U × I temporaries;
      far cheaper when there are fewer users than items (ml-latest-small: 610 users, 9.7k items, where the primal
      route took ~80 s on one slow core and this one ~4 s).

    Both work in float64 (the Gram matrix's condition number grows with popularity) and return float32.
    ``primal32`` is the primal route in float32 and in place (LAPACK ``spotrf``/``spotri`` overwrite the Gram
    matrix, which then becomes B): 4·I² bytes at peak, the only route that fits a 41k-item catalogue (Gowalla,
    6.7 GB) in 24 GB; λ keeps the system well conditioned enough for float32 at such sizes (the test checks it
    against float64).

    Args:
        X: the user × item training matrix (binary or weighted).
        l2: λ, the L2 penalty on B.
        method: ``auto``, ``primal``, ``dual`` or ``primal32``.
        block: rows of B formed at once in the dual route (bounds the float64 temporaries to block·I).

    Shapes:
        X: [U, I] -> B: [I, I] float32
    """
    n_users, n_items = X.shape
    if method == "auto":
        method = "dual" if float(n_users) ** 3 + float(X.nnz) * n_items < float(n_items) ** 3 else "primal"
    if method not in ("primal", "dual", "primal32"):
        raise ValueError(f"method must be 'auto', 'primal', 'dual' or 'primal32', not {method!r}")
    # The Cholesky factorisations are single calls with no progress to report: one line before and after.
    log.info("EASE: solving for the %d x %d item weights (%s route, %d users)", n_items, n_items, method, n_users)
    t = time.perf_counter()
    if method == "primal32":
        B = _ease_primal32(sp.csr_matrix(X, dtype=np.float32), l2, block)
        log.info("EASE: weights solved in %.1f s", time.perf_counter() - t)
        return B
    X = sp.csr_matrix(X, dtype=np.float64)
    if method == "primal":
        G = torch.from_numpy((X.T @ X).toarray())
        G.diagonal().add_(l2)
        L = torch.linalg.cholesky(G)
        del G
        P = torch.cholesky_inverse(L)
        del L
        # B_ij = -P_ij / P_jj off the diagonal.
        P.div_(-P.diagonal().clone())
        B = P.to(torch.float32)
        del P
    else:
        # With K = Xᵀ M X and M = (λI + XXᵀ)⁻¹ (a U × U system): P = (I - K)/λ, so B_ij = K_ij / (1 - K_jj).
        Xd = torch.from_numpy(X.toarray())  # [U, I], dense is fine: U is the small side here
        M = Xd @ Xd.T
        M.diagonal().add_(l2)
        W = torch.cholesky_solve(Xd, torch.linalg.cholesky(M))  # M⁻¹ X, [U, I]
        scale = 1.0 / (1.0 - (Xd * W).sum(0))  # 1 / (1 - diag K)
        del Xd
        B = torch.empty((n_items, n_items), dtype=torch.float32)
        Wn, XT = W.numpy(), X.T.tocsr()
        # Sparse Xᵀ times dense W: nnz·I multiply-adds instead of the dense product's U·I².
        with progress(n_items, "EASE: forming item weight rows", "items") as bar:
            for s in range(0, n_items, block):
                B[s:s + block] = torch.from_numpy(XT[s:s + block] @ Wn).mul_(scale)
                bar.update(min(block, n_items - s))
    # An item without training interactions has a zero row and column in XᵀX, hence a zero column in B.
    B.fill_diagonal_(0.0)
    log.info("EASE: weights solved in %.1f s", time.perf_counter() - t)
    return B


def _ease_primal32(X: sp.csr_matrix, l2: float, block: int) -> Tensor:
    """EASE's B by an in-place float32 Cholesky inverse of ``XᵀX + λI`` (see :func:`ease_weights`).

    Shapes:
        X: [U, I] -> B: [I, I] float32
    """
    from scipy.linalg import lapack

    n = X.shape[1]
    # Fortran order: LAPACK then works on the array itself instead of a transposed copy.
    G = (X.T @ X).toarray(order="F")
    G[np.diag_indices(n)] += np.float32(l2)
    c, info = lapack.spotrf(G, lower=0, clean=0, overwrite_a=1)
    if info != 0:
        raise ValueError(f"EASE: XᵀX + λI is not positive definite in float32 (LAPACK spotrf info {info}); "
                         "raise l2 or use method 'primal'")
    p, info = lapack.spotri(c, lower=0, overwrite_c=1)
    if info != 0:
        raise ValueError(f"EASE: the float32 inverse failed (LAPACK spotri info {info}); use method 'primal'")
    del G, c
    # spotri fills the upper triangle only: mirror it onto the lower one, one block of columns at a time.
    for s in range(0, n, block):
        e = min(s + block, n)
        d = p[s:e, s:e]
        d[...] = np.triu(d) + np.triu(d, 1).T
        p[e:, s:e] = p[s:e, e:].T
    # P is symmetric, so its F-ordered storage read in C order is P itself; B_ij = -P_ij / P_jj.
    B = torch.from_numpy(p.T)
    B.div_(-B.diagonal().clone())
    return B.fill_diagonal_(0.0)


class EASE(ScoresHistories, Baseline):
    """EASE: a linear item-item autoencoder with a zero-diagonal constraint, fitted in closed form.

    Steck, "Embarrassingly Shallow Autoencoders for Sparse Data", WWW 2019. Scores are ``X[users] @ B`` with ``X``
    the binary training matrix.

    Memory: B is a dense I × I float32 matrix (4·I² bytes: 0.38 GB for ml-latest-small's 9.7k items, 6.4 GB for
    40k items), both in memory and in the checkpoint. Fitting adds float64 temporaries: up to 16·I² bytes when
    users outnumber items (the primal route of :func:`ease_weights`), only U × I ones otherwise. Use item-kNN for
    large catalogues.

    Args:
        l2: λ, the L2 penalty on the weights (the paper's only hyper-parameter; larger for denser data).
        method: how B is solved (:func:`ease_weights`): ``auto`` (float64, primal or dual by cost) or ``primal32``
            (float32 in place, 4·I² bytes at peak, for catalogues whose float64 temporaries do not fit).
    """

    def __init__(self, l2: float = 500.0, method: Literal["auto", "primal", "dual", "primal32"] = "auto") -> None:
        super().__init__()
        if method not in ("auto", "primal", "dual", "primal32"):
            raise ValueError(f"EASE: method must be auto, primal, dual or primal32, not {method!r}")
        self.l2, self.method = l2, method
        self.register_buffer("weights", torch.empty(0, 0))
        self.register_buffer("train_indptr", torch.zeros(1, dtype=torch.int64))
        self.register_buffer("train_indices", torch.empty(0, dtype=torch.int64))
        self.register_buffer("train_data", torch.empty(0))

    @property
    def n_items(self) -> int:
        return self.weights.shape[1]

    def fit(self, data, trainer: LightningFit | None = None) -> None:
        """Solve for B on ``data.train`` and keep the training matrix for scoring."""
        self.weights = ease_weights(data.train, self.l2, self.method)
        set_csr_buffers(self, "train", data.train)

    @torch.no_grad()
    def score_users(self, users: Tensor, out: Tensor | None = None) -> Tensor:
        """``X[users] @ B``: a sparse × dense product over each user's training items.

        Shapes:
            users: [B] -> [B, n_items]
        """
        r, c, v = gather_rows(self.train_indptr, self.train_indices, self.train_data, users)
        return self._times_weights(torch.stack([r, c]), v, len(users), out)

    @torch.no_grad()
    def score_histories(self, histories: Histories, rows: Tensor, out: Tensor | None = None) -> Tensor:
        """``x @ B`` for the binary rows ``x`` of the histories: EASE's score for any item set, no refit needed.

        Shapes:
            rows: [R] -> [R, n_items]
        """
        x = histories.select(rows.cpu().numpy()).matrix().tocoo()
        dev = self.weights.device
        index = torch.from_numpy(np.vstack([x.row, x.col]).astype(np.int64)).to(dev)
        return self._times_weights(index, torch.from_numpy(x.data).to(dev), len(rows), out)

    def _times_weights(self, index: Tensor, values: Tensor, n_rows: int, out: Tensor | None) -> Tensor:
        """A sparse ``[n_rows, n_items]`` matrix given as COO triplets, times B.

        Shapes:
            index: [2, nnz]; values: [nnz] -> [n_rows, n_items]
        """
        x = torch.sparse_coo_tensor(index, values, (n_rows, self.weights.shape[0]), check_invariants=False)
        if out is None:
            return torch.mm(x, self.weights)
        return torch.mm(x, self.weights, out=out)
