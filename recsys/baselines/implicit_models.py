"""Adapters for the ``implicit`` package: ALS, BPR and item-kNN, fitted on its CPU code, scored by torch.

``implicit`` is imported inside ``fit`` only: loading a fitted checkpoint and scoring with it (``recsys score``)
never pays for the import. The fitted state lives in plain tensor buffers, so checkpoints load with
``torch.load(weights_only=True)``, and the scores equal what ``implicit``'s own ``recommend`` returns.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from contextlib import contextmanager
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from recsys.baselines.base import Baseline
from recsys.baselines.ease import csr_from_buffers, gather_rows, set_csr_buffers
from recsys.capabilities import FoldsIn, Histories, ScoresHistories
from recsys.recommender import LightningFit

__all__ = ["ALS", "BPR", "ItemKNN"]

log = logging.getLogger(__name__)


def _fit_implicit(model, train, what: str) -> None:
    """``model.fit(train)`` with implicit's own progress bar on a terminal, one log line before and after otherwise.

    The terminal test is :class:`recsys.progress.Progress`'s (stderr is a TTY and ``RECSYS_PROGRESS`` is neither
    ``log`` nor ``off``), so implicit's bar shows exactly when recsys' own bars do.
    """
    bar = os.environ.get("RECSYS_PROGRESS", "auto") not in ("log", "off") and sys.stderr.isatty()
    if not bar:
        log.info("%s: fitting on %d users x %d items (%d interactions)", what, *train.shape, train.nnz)
    t = time.perf_counter()
    with _implicit_env():
        model.fit(train, show_progress=bar)
    if not bar:
        log.info("%s: fitted in %.1f s", what, time.perf_counter() - t)


@contextmanager
def _implicit_env():
    """Single-threaded BLAS while ``implicit`` runs, and none of its configuration warnings.

    ``implicit`` parallelises over users itself and warns when BLAS is threaded too (the two oversubscribe cores);
    it also warns when it converts a COO matrix it built itself to CSR.
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, "blas"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=r"implicit\.")
        yield


def _as_tensor(a) -> Tensor:
    # Not a capability probe: implicit's GPU matrices (should a GPU-fitted model ever be passed in) are not numpy.
    if hasattr(a, "to_numpy"):
        a = a.to_numpy()
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


class _FactorModel(Baseline):
    """A matrix-factorisation baseline: scores are ``user_factors[users] @ item_factors.T``."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("user_factors", torch.empty(0, 0))
        self.register_buffer("item_factors", torch.empty(0, 0))

    def _store(self, model) -> None:
        self.user_factors = _as_tensor(model.user_factors)
        self.item_factors = _as_tensor(model.item_factors)

    def tables(self) -> tuple[Tensor, Tensor]:
        """GEMM-ready (queries, items) tables: ``queries @ items.T`` are the scores.

        Shapes:
            -> queries [U, D], items [I, D]
        """
        return self.user_factors, self.item_factors

    def serving_tables(self, data, up_to: str = "train") -> tuple[Tensor, Tensor]:
        """:meth:`tables`: the factors do not depend on which interactions form the history (``up_to``)."""
        return self.tables()

    @torch.no_grad()
    def score_users(self, users: Tensor, out: Tensor | None = None) -> Tensor:
        """Dot products of the users' factors with every item's.

        Shapes:
            users: [B] -> [B, n_items]
        """
        q = self.user_factors[users.to(self.user_factors.device)]
        if out is None:
            return q @ self.item_factors.T
        return torch.mm(q, self.item_factors.T, out=out)


class ALS(FoldsIn, _FactorModel):
    """Weighted matrix factorisation for implicit feedback, fitted by alternating least squares.

    Hu, Koren and Volinsky, "Collaborative Filtering for Implicit Feedback Datasets", ICDM 2008, with the conjugate
    gradient solver of Takács, Pilászy and Tikk, "Applications of the Conjugate Gradient Method for Implicit
    Feedback Collaborative Filtering", RecSys 2011 (``implicit.cpu.als.AlternatingLeastSquares``).

    Args:
        factors: latent dimensions.
        regularization: L2 penalty on the factors.
        alpha: confidence scale. ``implicit`` weighs an observed entry by ``alpha * value`` and every unobserved one
            by 1, so on binary data ``alpha = 1`` gives positives no extra weight; values of 5 to 50 are usual.
        iterations: ALS sweeps (each solves users, then items).
        seed: seeds the random factor initialisation; the solver itself is deterministic for any thread count.
        num_threads: CPU threads for fitting; 0 uses every core.

    A user unseen in training is folded in (:class:`~recsys.capabilities.FoldsIn`) by the system implicit's
    ``recalculate_user`` solves: the ALS user step against the fitted item factors, with this model's ``alpha``
    and ``regularization`` (:func:`recsys.encoders.id.least_squares_fold_in`, the same numbers without importing
    implicit).
    """

    def __init__(self, factors: int = 64, regularization: float = 0.01, alpha: float = 1.0, iterations: int = 15,
                 seed: int = 2026, num_threads: int = 0) -> None:
        super().__init__()
        self.factors = factors
        self.regularization = regularization
        self.alpha = alpha
        self.iterations = iterations
        self.seed = seed
        self.num_threads = num_threads

    def fit(self, data, trainer: LightningFit | None = None) -> None:
        """Factorise ``data.train`` with ``implicit``'s CPU ALS.

        Shapes:
            data.train: [U, I] -> user_factors [U, factors], item_factors [I, factors]
        """
        from implicit.cpu.als import AlternatingLeastSquares

        model = AlternatingLeastSquares(factors=self.factors, regularization=self.regularization, alpha=self.alpha,
                                        iterations=self.iterations, random_state=self.seed,
                                        num_threads=self.num_threads)
        _fit_implicit(model, data.train, f"ALS ({self.iterations} iterations)")
        self._store(model)

    def fold_in(self, histories: Histories) -> Tensor:
        """ALS user factors of the histories against the fitted item factors (implicit's ``recalculate_user``).

        Shapes:
            histories: B users -> [B, factors]
        """
        from recsys.encoders.id import least_squares_fold_in

        c = histories.matrix()
        c.data *= self.alpha
        return least_squares_fold_in(self.item_factors, c, self.regularization).to(self.item_factors.device)


class BPR(FoldsIn, _FactorModel):
    """Matrix factorisation trained with the Bayesian Personalized Ranking loss by SGD.

    Rendle, Freudenthaler, Gantner and Schmidt-Thieme, "BPR: Bayesian Personalized Ranking from Implicit Feedback",
    UAI 2009 (``implicit.cpu.bpr.BayesianPersonalizedRanking``).

    ``implicit`` appends an item-bias column: ``user_factors[:, -1] == 1`` and ``item_factors[:, -1]`` is the bias,
    so the stored tables have ``factors + 1`` columns and their dot product is exactly ``implicit``'s score.

    Args:
        factors: latent dimensions (the tables get one more, the bias).
        learning_rate: SGD step size.
        regularization: L2 penalty on the factors.
        iterations: epochs over the training interactions.
        seed: seeds initialisation and negative sampling.
        num_threads: CPU threads for fitting. SGD across threads is Hogwild (lock-free), so only 1 thread makes the
            fit reproducible; 0 uses every core.
        fold_in_alpha: extra confidence on a history's items when a new user is folded in.
        fold_in_l2: the fold-in's ridge penalty, relative to the item factors' mean Gram eigenvalue.

    A user unseen in training is folded in (:class:`~recsys.capabilities.FoldsIn`) by a confidence-weighted ridge
    solve against the item factors without their bias column (:func:`recsys.encoders.id.least_squares_fold_in`:
    preference 1 at confidence ``1 + fold_in_alpha`` on the history, 0 at confidence 1 elsewhere, penalty
    ``fold_in_l2 · trace(YᵀY) / D``), then the bias coordinate 1 is appended so the item biases count as for a
    training user. This is ALS's user step, not BPR's objective: a deterministic closed form over the same inner
    products, with the defaults of :class:`recsys.encoders.MatrixFactorization`.
    """

    def __init__(self, factors: int = 64, learning_rate: float = 0.01, regularization: float = 0.01,
                 iterations: int = 100, seed: int = 2026, num_threads: int = 1, fold_in_alpha: float = 3.0,
                 fold_in_l2: float = 4.0) -> None:
        super().__init__()
        self.factors = factors
        self.learning_rate = learning_rate
        self.regularization = regularization
        self.iterations = iterations
        self.seed = seed
        self.num_threads = num_threads
        self.fold_in_alpha = fold_in_alpha
        self.fold_in_l2 = fold_in_l2

    def fit(self, data, trainer: LightningFit | None = None) -> None:
        """Train on ``data.train`` with ``implicit``'s CPU BPR.

        Shapes:
            data.train: [U, I] -> user_factors [U, factors + 1], item_factors [I, factors + 1]
        """
        from implicit.cpu.bpr import BayesianPersonalizedRanking

        model = BayesianPersonalizedRanking(factors=self.factors, learning_rate=self.learning_rate,
                                            regularization=self.regularization, iterations=self.iterations,
                                            random_state=self.seed, num_threads=self.num_threads)
        _fit_implicit(model, data.train, f"BPR ({self.iterations} iterations)")
        self._store(model)

    def fold_in(self, histories: Histories) -> Tensor:
        """User factors of the histories (a ridge solve on the item factors), with the bias coordinate 1 appended.

        Shapes:
            histories: B users -> [B, factors + 1]
        """
        from recsys.encoders.id import least_squares_fold_in, mean_gram_eigenvalue

        c = histories.matrix()
        c.data *= 1.0 + self.fold_in_alpha
        table = self.item_factors[:, :-1]
        x = least_squares_fold_in(table, c, self.fold_in_l2 * mean_gram_eigenvalue(table)).to(table.device)
        return torch.cat([x, x.new_ones((len(x), 1))], 1)


class ItemKNN(ScoresHistories, Baseline):
    """Item-based nearest neighbours: each item keeps its ``k`` most similar items, a user scores ``X[u] @ S``.

    Sarwar, Karypis, Konstan and Riedl, "Item-Based Collaborative Filtering Recommendation Algorithms", WWW 2001;
    Deshpande and Karypis, "Item-Based Top-N Recommendation Algorithms", TOIS 2004. The similarity is computed by
    ``implicit.nearest_neighbours`` (cosine, or the dot product of BM25- or TF-IDF-weighted item vectors).

    Memory: the pruned similarity has at most ``k`` entries per item (``I·k`` values), plus the training matrix.

    Args:
        k: neighbours kept per item (the item itself included, as in ``implicit``).
        similarity: ``cosine``, ``bm25`` or ``tfidf``.
        K1: BM25 term-saturation parameter (``bm25`` only).
        B: BM25 length-normalisation parameter (``bm25`` only).
        num_threads: CPU threads for the similarity computation; 0 uses every core.
    """

    #: Neighbour products formed at once while scoring; bounds the temporaries to about 20 bytes each.
    _PRODUCTS_PER_STEP = 1 << 23

    def __init__(self, k: int = 100, similarity: Literal["cosine", "bm25", "tfidf"] = "cosine", K1: float = 1.2,
                 B: float = 0.75, num_threads: int = 0) -> None:
        super().__init__()
        if similarity not in ("cosine", "bm25", "tfidf"):
            raise ValueError(f"similarity must be 'cosine', 'bm25' or 'tfidf', not {similarity!r}")
        self.k = k
        self.similarity = similarity
        self.K1 = K1
        self.B = B
        self.num_threads = num_threads
        for prefix in ("similarity", "train"):
            self.register_buffer(f"{prefix}_indptr", torch.zeros(1, dtype=torch.int64))
            self.register_buffer(f"{prefix}_indices", torch.empty(0, dtype=torch.int64))
            self.register_buffer(f"{prefix}_data", torch.empty(0))

    @property
    def n_items(self) -> int:
        return len(self.similarity_indptr) - 1

    def fit(self, data, trainer: LightningFit | None = None) -> None:
        """Compute the pruned item-item similarity on ``data.train`` and keep the training matrix for scoring.

        Shapes:
            data.train: [U, I] -> similarity [I, I] sparse, at most k entries per row
        """
        from implicit import nearest_neighbours as nn_

        if self.similarity == "bm25":
            model = nn_.BM25Recommender(K=self.k, K1=self.K1, B=self.B, num_threads=self.num_threads)
        elif self.similarity == "tfidf":
            model = nn_.TFIDFRecommender(K=self.k, num_threads=self.num_threads)
        else:
            model = nn_.CosineRecommender(K=self.k, num_threads=self.num_threads)
        _fit_implicit(model, data.train, f"item-kNN ({self.similarity}, k={self.k})")
        set_csr_buffers(self, "similarity", model.similarity)
        set_csr_buffers(self, "train", data.train)

    @torch.no_grad()
    def score_histories(self, histories: Histories, rows: Tensor, out: Tensor | None = None) -> Tensor:
        """``x @ S`` for binary history rows ``x``: what implicit's ``recommend`` scores for a user's given items.

        Shapes:
            rows: [R] -> [R, n_items]
        """
        x = histories.select(rows.cpu().numpy()).matrix()
        return _dense_into(x @ csr_from_buffers(self, "similarity"), out)

    @torch.no_grad()
    def score_users(self, users: Tensor, out: Tensor | None = None) -> Tensor:
        """``X[users] @ S``, the sum of the neighbour lists of each user's training items (what ``implicit`` scores).

        Shapes:
            users: [B] -> [B, n_items]
        """
        if self.similarity_indptr.device.type == "cpu":
            return self._score_scipy(users, out)
        return self._score_torch(users, out)

    def _score_scipy(self, users: Tensor, out: Tensor | None) -> Tensor:
        # One fused sparse × sparse product; an order of magnitude faster on CPU than gathering in torch.
        X, S = csr_from_buffers(self, "train"), csr_from_buffers(self, "similarity")
        return _dense_into(X[users.cpu().numpy()] @ S, out)

    def _score_torch(self, users: Tensor, out: Tensor | None) -> Tensor:
        # Device-side version: gather every (user, neighbour) product and scatter-add it.
        dev = self.similarity_indptr.device
        if out is None:
            out = torch.zeros((len(users), self.n_items), device=dev)
        else:
            out.zero_()
        r, c, v = gather_rows(self.train_indptr, self.train_indices, self.train_data, users)
        longest = int((self.similarity_indptr[1:] - self.similarity_indptr[:-1]).max()) if self.n_items else 0
        step = max(1, self._PRODUCTS_PER_STEP // max(1, longest))
        for s in range(0, len(c), step):
            e, j, w = gather_rows(self.similarity_indptr, self.similarity_indices, self.similarity_data,
                                  c[s:s + step])
            out.index_put_((r[s:s + step][e], j), v[s:s + step][e] * w, accumulate=True)
        return out


def _dense_into(scores, out: Tensor | None) -> Tensor:
    """A scipy sparse score block as a dense float32 tensor, written into ``out`` when given.

    Shapes:
        scores: [R, N] sparse -> [R, N]
    """
    direct = out is not None and out.device.type == "cpu" and out.dtype == torch.float32 and out.is_contiguous()
    if not direct or scores.dtype != np.float32:
        dense = torch.from_numpy(scores.toarray().astype(np.float32, copy=False))
        return dense if out is None else out.copy_(dense)
    out.zero_()
    scores.toarray(out=out.numpy())  # accumulates into the zeroed buffer, no temporary
    return out
