"""GF-CF (Shen et al., "How Powerful is Graph Convolution for Recommendation?", CIKM 2021): a training-free graph
filter over the normalised interaction matrix."""

from __future__ import annotations

import logging

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from recsys.baselines.base import Baseline
from recsys.baselines.ease import csr_from_buffers, set_csr_buffers
from recsys.capabilities import Histories, ScoresHistories
from recsys.recommender import LightningFit

__all__ = ["GFCF", "normalized_interactions", "top_right_singular_vectors"]

log = logging.getLogger(__name__)

SOLVERS = ("propack", "arpack", "lobpcg")

# Users scored per sparse product inside one score_users call: the two sparse products touch [rows, n_users] and
# [rows, n_items] intermediates, and on Gowalla 256 rows kept them cache-resident (0.71 s per 1,600 users against
# 1.03 s in one block).
_SUB_CHUNK = 256


def normalized_interactions(R: sp.spmatrix) -> tuple[sp.csr_matrix, np.ndarray]:
    """``R̃ = D_U^{-1/2} R D_I^{-1/2}`` of the binarised matrix, and the item degrees ``diag(D_I)``.

    A user or item without interactions has degree 0 and its row or column of R̃ stays 0 (not inf).

    Shapes:
        R: [U, I] -> R̃: [U, I] float64 CSR with R's sparsity pattern, degrees: [I] float64
    """
    R = sp.csr_matrix(R, dtype=np.float64, copy=True)
    R.sum_duplicates()
    R.eliminate_zeros()
    R.data[:] = 1.0
    du = np.asarray(R.sum(axis=1)).ravel()
    di = np.asarray(R.sum(axis=0)).ravel()
    Rn = sp.diags(_inv_sqrt(du)) @ R @ sp.diags(_inv_sqrt(di))
    Rn = sp.csr_matrix(Rn)
    Rn.sort_indices()
    return Rn, di


def _inv_sqrt(d: np.ndarray) -> np.ndarray:
    out = np.zeros_like(d, dtype=np.float64)
    np.divide(1.0, np.sqrt(d), out=out, where=d > 0)
    return out


def top_right_singular_vectors(A: sp.spmatrix, k: int, solver: str = "propack", seed: int = 0) -> np.ndarray:
    """The right singular vectors of the ``k`` largest singular values of ``A``, zero singular values dropped.

    ``k >= min(A.shape)`` is the full decomposition and goes through dense LAPACK: the result is then as large as
    the dense matrix anyway, and ARPACK cannot return every triplet. Otherwise ``scipy.sparse.linalg.svds`` with
    ``solver`` in float64. Vectors whose singular value is numerically zero span an arbitrary part of the null space
    (PROPACK does not even orthogonalise them), so they are dropped: the result may have fewer than ``k`` columns.

    Shapes:
        A: [M, N] -> V: [N, k'] float64 with k' <= min(k, M, N), columns by decreasing singular value
    """
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {', '.join(SOLVERS)}, not {solver!r}")
    A = sp.csr_matrix(A, dtype=np.float64)
    if min(A.shape) == 0 or A.nnz == 0:
        return np.zeros((A.shape[1], 0))
    if k >= min(A.shape):
        _, s, vt = np.linalg.svd(A.toarray(), full_matrices=False)
    else:
        s, vt = _svds(A, k, solver, seed)
    order = np.argsort(-s, kind="stable")
    s, vt = s[order], vt[order]
    # numpy.linalg.matrix_rank's tolerance.
    keep = s > s[0] * max(A.shape) * np.finfo(np.float64).eps
    return np.ascontiguousarray(vt[keep].T)


def _svds(A: sp.csr_matrix, k: int, solver: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from scipy.sparse.linalg import svds

    # ARPACK's start vector would otherwise be drawn from numpy's global state.
    v0 = np.random.default_rng(seed).standard_normal(min(A.shape)) if solver == "arpack" else None
    try:
        _, s, vt = svds(A, k=k, solver=solver, v0=v0, random_state=seed)
    except ValueError as e:
        # SciPy releases before PROPACK became default-on refuse it unless SCIPY_USE_PROPACK is set.
        if solver != "propack" or "SCIPY_USE_PROPACK" not in str(e):
            raise
        log.info("GF-CF: this SciPy build does not enable PROPACK; using ARPACK for the SVD")
        return _svds(A, k, "arpack", seed)
    return s, vt


class GFCF(ScoresHistories, Baseline):
    """GF-CF: a linear low-pass graph filter plus an ideal low-pass filter on the item graph, fitted without training.

    Shen, Wu, Zhang, Li, Yu, Gong and Lee, "How Powerful is Graph Convolution for Recommendation?", CIKM 2021.
    With ``R`` the binary training matrix, ``R̃ = D_U^{-1/2} R D_I^{-1/2}`` (zero degrees give zero rows/columns)
    and ``V_k`` the top-k right singular vectors of ``R̃``, user u with training row ``r_u`` scores

        s_u = r_u R̃ᵀ R̃ + α · r_u D_I^{-1/2} V_k V_kᵀ D_I^{1/2}

    (``V_k`` stored as columns, i.e. the paper's ``V_kᵀ V_k`` with row vectors). The item × item filter is never
    formed (4·I² bytes: 6.7 GB on Gowalla): scores are ``(r_u R̃ᵀ) R̃`` by two sparse products plus a rank-k GEMM.

    Memory: R̃ as CSR (its pattern is the training matrix, so the binary rows are read from it), the item degrees
    and ``V_k`` (4·I·k bytes: 42 MB for Gowalla's 41k items at k=256), in memory and in the checkpoint. Fitting is
    one sparse SVD (about 7 s on Gowalla on one core with PROPACK, 10 s for float32 ARPACK, 28 s for float64 ARPACK,
    30 s for LOBPCG, which also missed its tolerance).

    Args:
        k: singular vectors in the ideal low-pass filter (256 on Gowalla in the paper); clamped to
            ``min(n_users, n_items)``, where the decomposition is full and exact.
        alpha: weight of the ideal low-pass term (0.3 in the paper); 0 keeps only the linear filter (no SVD).
        solver: ``scipy.sparse.linalg.svds`` solver: ``propack`` (fastest and accurate on Gowalla), ``arpack`` or
            ``lobpcg``.
        seed: the SVD's start vectors, so that fits repeat exactly.

    Shapes:
        norm_indptr [n_users + 1], norm_indices / norm_data [nnz]: R̃ as CSR; item_degree [n_items];
        components [n_items, k'] (V_k, k' <= k)
    """

    def __init__(self, k: int = 256, alpha: float = 0.3, solver: str = "propack", seed: int = 0) -> None:
        super().__init__()
        if k < 1:
            raise ValueError(f"GFCF: k must be at least 1, not {k}")
        if not alpha >= 0:
            raise ValueError(f"GFCF: alpha must be non-negative, not {alpha}")
        if solver not in SOLVERS:
            raise ValueError(f"GFCF: solver must be one of {', '.join(SOLVERS)}, not {solver!r}")
        self.k, self.alpha, self.solver, self.seed = k, alpha, solver, seed
        self.register_buffer("norm_indptr", torch.zeros(1, dtype=torch.int64))
        self.register_buffer("norm_indices", torch.empty(0, dtype=torch.int64))
        self.register_buffer("norm_data", torch.empty(0))
        self.register_buffer("item_degree", torch.empty(0))
        self.register_buffer("components", torch.empty(0, 0))
        self._cache: dict | None = None

    @property
    def n_items(self) -> int:
        return self.item_degree.shape[0]

    def fit(self, data, trainer: LightningFit | None = None) -> None:
        """Normalise ``data.train`` and take the top-k right singular vectors of R̃."""
        Rn, degree = normalized_interactions(data.train)
        k = self.k
        if k >= min(Rn.shape) and self.alpha > 0:
            k = min(Rn.shape)
            log.info("GF-CF: k=%d >= min(n_users, n_items)=%d: using the full SVD (k=%d)", self.k, k, k)
        # alpha = 0 leaves only the linear filter: no decomposition to pay for.
        V = top_right_singular_vectors(Rn, k, self.solver, self.seed) if self.alpha > 0 else np.zeros((Rn.shape[1], 0))
        self.item_degree = torch.from_numpy(degree.astype(np.float32))
        set_csr_buffers(self, "norm", Rn)
        self.components = torch.from_numpy(V.astype(np.float32))
        self._cache = None

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Loading copies into the buffers in place, so views built from the old ones would go stale.
        self._cache = None
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _operators(self) -> dict:
        """CPU scipy/torch views of the buffers that scoring multiplies by, built once per fit or load."""
        if self._cache is None:
            norm = csr_from_buffers(self, "norm")
            # R̃ has R's pattern (an entry's degrees are at least 1), so the binary rows share its index arrays.
            binary = sp.csr_matrix((np.ones_like(norm.data), norm.indices, norm.indptr), shape=norm.shape)
            deg = self.item_degree.detach().cpu().double().numpy()
            V = self.components.detach().cpu().double().numpy()
            self._cache = {
                "norm": norm, "norm_t": norm.T.tocsr(), "binary": binary,
                # D_I^{-1/2} V_k folded into the query side and V_k D_I^{1/2} into the item side, once.
                "query_basis": np.ascontiguousarray(V * _inv_sqrt(deg)[:, None], dtype=np.float32),
                "item_basis": torch.from_numpy(np.ascontiguousarray(V * np.sqrt(deg)[:, None], dtype=np.float32)),
            }
        return self._cache

    @torch.no_grad()
    def score_users(self, users: Tensor, out: Tensor | None = None) -> Tensor:
        """``(r_u R̃ᵀ) R̃ + α (r_u D_I^{-1/2} V_k) (V_k D_I^{1/2})ᵀ`` per user, on the CPU.

        Shapes:
            users: [B] -> [B, n_items]
        """
        rows = users.detach().cpu().numpy().astype(np.int64, copy=False)
        return self._score_binary(self._operators()["binary"][rows], out)

    @torch.no_grad()
    def score_histories(self, histories: Histories, rows: Tensor, out: Tensor | None = None) -> Tensor:
        """The same filter applied to the binary history rows ``r``: no user degree enters it, so it needs no refit.

        Shapes:
            rows: [R] -> [R, n_items]
        """
        return self._score_binary(histories.select(rows.cpu().numpy()).matrix(), out)

    def _score_binary(self, binary: sp.csr_matrix, out: Tensor | None) -> Tensor:
        """The filter's scores for binary user rows.

        Shapes:
            binary: [R, n_items] CSR -> [R, n_items]
        """
        ops = self._operators()
        n = binary.shape[0]
        direct = out is not None and out.device.type == "cpu" and out.dtype == torch.float32 and out.is_contiguous()
        target = out if direct else torch.empty((n, self.n_items), dtype=torch.float32)
        low_pass = self.alpha > 0 and ops["item_basis"].shape[1] > 0
        for s in range(0, n, _SUB_CHUNK):
            block = target[s:s + _SUB_CHUNK]
            r = binary[s:s + _SUB_CHUNK]
            ((r @ ops["norm_t"]) @ ops["norm"]).toarray(out=block.numpy())
            if low_pass:
                q = torch.from_numpy(np.asarray(r @ ops["query_basis"], dtype=np.float32))
                block.addmm_(q, ops["item_basis"].T, alpha=self.alpha)
        if out is None or direct:
            return target
        return out.copy_(target)
