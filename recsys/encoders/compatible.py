"""Backward-compatible upgrades (BT²): a new encoder whose queries can be scored against an old model's items.

The new encoder may be wider than the old one (``d_new = d_old + extra``). Its embeddings pass through a learned
orthonormal basis ``R`` (``d_new × d_new``); the first ``d_old`` coordinates of ``R·x`` are the compatible
subspace. An influence loss ranks the batch's candidates from the *old, frozen* item table with those coordinates
of the new queries, so a new query can be served against the old gallery before (or without) re-embedding it.
Because ``R`` is orthonormal, new-vs-new inner products are unchanged by it: compatibility is bought by rotating
the basis, not by constraining what the new model can represent, and the extra dimensions hold what is new.

Two paths: :class:`Compatible` trains the new model *with* the old gallery in its loss; :class:`BasisTransformation`
with :func:`fit_basis_run` trains it *independently* and fits the basis transformation afterwards on paired embeddings
(``python -m recsys.upgrades NEW OLD OUT``; see the section before :class:`BasisTransformation`).

Zhou et al., "BT²: Backward-compatible Training with Basis Transformation", ICCV 2023; the influence loss of
Shen et al., "Towards Backward-Compatible Representation Learning", CVPR 2020.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import orthogonal

from recsys.capabilities import ExplicitConcepts, StepOutput, UsesGallery
from recsys.data.batch import Batch
from recsys.encoders.base import TwoSidedEncoder
from recsys.encoders.wrapper import EncoderWrapper
from recsys.errors import UsageError
from recsys.losses import BPRLoss, Loss


class Compatible(UsesGallery, EncoderWrapper):
    """A new encoder in an orthonormal basis whose leading coordinates are compatible with an old item table.

    Args:
        encoder: the new encoder (``out_dim`` ≥ the old model's).
        old_run: run directory of the old model (``recsys fit``); its scorer-prepared item table is the gallery,
            handed over by ``recsys fit`` through :class:`~recsys.capabilities.UsesGallery` before binding. None
            trains without the influence loss (a plain rotated model), e.g. in smoke tests.
        weight: weight of the influence loss.
        loss: the ranking loss of new queries against old items (BPR when None).

    Shapes:
        batch.users: [B]; batch.items: [B, C] -> (query [B, d_new], items [B, C, d_new])
    """

    #: the rotation mixes coordinates, so named concept dimensions do not survive it.
    refuses = (ExplicitConcepts,)

    def __init__(self, encoder: TwoSidedEncoder, old_run: str | None = None, weight: float = 1.0,
                 loss: Loss | None = None) -> None:
        super().__init__(encoder)
        self.old_run, self.weight = old_run, weight
        self.compat_loss = loss if loss is not None else BPRLoss()
        self.basis = orthogonal(nn.Linear(encoder.out_dim, encoder.out_dim, bias=False))
        self.old_dim = encoder.out_dim
        # Not persistent: the old model is frozen and is no part of the new model's weights.
        self.register_buffer("old_items", torch.zeros(0, 0), persistent=False)

    def gallery_run(self) -> str | None:
        return self.old_run

    def set_gallery(self, items: Tensor) -> None:
        if items.shape[1] > self.out_dim:
            raise ValueError(f"the new encoder ({self.out_dim} dims) is narrower than the old one ({items.shape[1]})")
        self.old_items = items.detach().clone()
        self.old_dim = items.shape[1]

    def bind_wrapper(self, data) -> None:
        if self.old_items.numel() and self.old_items.shape[0] != data.n_items:
            raise ValueError(f"the old model has {self.old_items.shape[0]} items, the data {data.n_items}: "
                             "train the new model on the same prepared data")

    def transform(self, x: Tensor, side: str, state=None) -> Tensor:
        return self.basis(x)

    def compatible_queries(self, query: Tensor) -> Tensor:
        """The coordinates of new queries that score against the old gallery.

        Shapes:
            query: [..., d_new] -> [..., d_old]
        """
        return query[..., :self.old_dim]

    def wrapper_losses(self, batch: Batch, inner: StepOutput, state=None) -> dict[str, Tensor]:
        if not (self.weight and self.old_items.numel()):
            return {}
        query, _ = self.inner_rows(batch, inner)
        q = self.compatible_queries(self.transform(query, "query"))
        old = self.old_items[batch.items]
        scores = (old @ q.unsqueeze(-1)).squeeze(-1)
        if scores.shape[1] > 1:
            return {"compatibility": self.weight * self.compat_loss(scores[:, 0], scores[:, 1:])}
        logits = q @ old[:, 0].T
        same = batch.items[:, :1] == batch.items[:, 0][None, :]
        return {"compatibility": self.weight * self.compat_loss(logits.diagonal(),
                                                                logits.masked_fill(same, float("-inf")))}


# ---------------------------------------------------------------------------------------------------------------
# The post-hoc path: BT²'s basis transformation learned AFTER an independent new model is trained.
#
# ``Compatible`` above trains the new model with the old gallery in the loss. Here the new model is trained with no
# knowledge of the old one (any config, any seed or width); afterwards a linear map ``W`` from the new space to the
# old one is fitted on paired embeddings of the same training items (and, optionally, users) and the model is served
# through the isometric basis ``M = [W'; C]`` (``W' = W / ‖W‖₂``, ``C = (I - W'ᵀW')^½``): ``MᵀM = I``, so new→new
# inner products are exactly the independent model's, while the first ``old_dim`` coordinates ``W'·x`` are the old
# space, where ``recsys evaluate --gallery OLD`` scores them against the old items. The extra ``d_new`` coordinates
# are BT²'s added basis vectors: they hold what the map cannot express in the old space.
#
#     python -m recsys.upgrades NEW_RUN OLD_RUN OUT_RUN [--fit-on items|users|both] [--orthogonality λ]
# ---------------------------------------------------------------------------------------------------------------


class BasisTransformation(EncoderWrapper):
    """An independently trained encoder served in an isometric basis whose first ``old_dim`` coordinates map into an
    old model's space (BT², post hoc).

    The map is not learned by ``recsys fit``: a fresh wrapper serves ``[0, x]`` (new→new exact, nothing compatible
    yet) and :func:`fit_basis_run` fits it on a finished run, writing a new run directory. Training through this
    wrapper is therefore the independent new model's training (the transform is a fixed isometry). Its buffers are
    stored with the weights, so the served run rebuilds exactly.

    Args:
        encoder: the new, independently trained encoder.
        old_dim: the old model's width (the compatible coordinates).
        old_run: the old run the map was fitted against (provenance only; nothing is read from it here).

    Shapes:
        x: [..., d_new] -> [..., old_dim + d_new]; map: [old_dim, d_new]; complement: [d_new, d_new]
    """

    #: the map and its complement mix coordinates, so named concept dimensions do not survive them.
    refuses = (ExplicitConcepts,)

    def __init__(self, encoder: TwoSidedEncoder, old_dim: int, old_run: str | None = None) -> None:
        super().__init__(encoder)
        if not isinstance(old_dim, int) or isinstance(old_dim, bool) or old_dim < 1:
            raise UsageError(f"BasisTransformation old_dim must be a positive integer, got {old_dim!r}")
        self.old_dim, self.old_run = old_dim, old_run
        self.register_buffer("map", torch.zeros(old_dim, encoder.out_dim))
        self.register_buffer("complement", torch.eye(encoder.out_dim))
        self.out_dim = self.served_dim()

    def served_dim(self) -> int:
        return self.old_dim + self.encoder.out_dim

    def bind_wrapper(self, data) -> None:
        d = self.encoder.out_dim
        if self.map.shape[1] != d:  # a width known only from the data: start again from the identity basis
            self.map = torch.zeros(self.old_dim, d, device=self.map.device)
            self.complement = torch.eye(d, device=self.map.device)

    def set_map(self, w: Tensor) -> None:
        """Serve through ``w`` (new → old), completed to an isometry.

        Ranking new queries against a gallery is invariant to a global scale of ``w``, so it is divided by its
        spectral norm; the complement ``(I - w'ᵀw')^½`` then exists and makes ``[w'; C]`` an isometry.

        Shapes:
            w: [old_dim, d_new]
        """
        if tuple(w.shape) != tuple(self.map.shape):
            raise ValueError(f"the map must be {tuple(self.map.shape)}, got {tuple(w.shape)}")
        w = w.detach().double().cpu()
        w = w / torch.linalg.matrix_norm(w, ord=2).clamp_min(1e-12)
        vals, vecs = torch.linalg.eigh(torch.eye(w.shape[1], dtype=w.dtype) - w.T @ w)
        c = (vecs * vals.clamp_min(0).sqrt()) @ vecs.T
        self.map = w.to(self.map)
        self.complement = c.to(self.complement)

    def transform(self, x: Tensor, side: str, state=None) -> Tensor:
        return torch.cat([x @ self.map.T.to(x.dtype), x @ self.complement.T.to(x.dtype)], dim=-1)


def fit_basis(new: Tensor, old: Tensor, orthogonality: float = 1.0, steps: int = 500) -> Tensor:
    """The linear map of new embeddings onto their old counterparts, with BT²'s orthogonality regulariser.

    Both sides are first divided by their RMS row norm, so the regulariser compares like with like whatever the two
    models' scales. ``orthogonality = 0`` is the closed-form least squares; otherwise full-batch L-BFGS, from that
    solution, on ``‖new·Wᵀ − old‖²/n + λ‖W·Wᵀ/s − I‖²/old_dim`` (``WᵀW`` when the old model is wider; ``s`` the
    mean of its diagonal, so only the map's shape, not its scale, is regularised): a map
    close to an isometry treats the items it was fitted on and the users it is applied to alike (a general linear
    map of item vectors would need its inverse transpose on the queries).

    Args:
        new: the new model's embeddings of the paired rows.
        old: the old model's embeddings of the same rows.
        orthogonality: λ, the orthogonality regulariser's weight (≥ 0).
        steps: L-BFGS iterations at most (unused when λ = 0).

    Shapes:
        new: [n, d_new]; old: [n, d_old] -> [d_old, d_new]
    """
    if not (isinstance(orthogonality, (int, float)) and orthogonality >= 0):
        raise UsageError(f"orthogonality must be a non-negative number, got {orthogonality!r}")
    if new.shape[0] != old.shape[0] or new.shape[0] < 2:
        raise ValueError(f"fit_basis needs the same ≥ 2 paired rows on both sides, got {new.shape[0]} and "
                         f"{old.shape[0]}")
    x = new.double() / new.double().norm(dim=1).pow(2).mean().sqrt().clamp_min(1e-12)
    y = old.double() / old.double().norm(dim=1).pow(2).mean().sqrt().clamp_min(1e-12)
    gram = x.T @ x + 1e-6 * torch.eye(x.shape[1], dtype=x.dtype)  # a whisker of ridge: rank-deficient tables
    w0 = torch.linalg.solve(gram, x.T @ y).T
    if not orthogonality:
        return w0.float()
    w = w0.clone().requires_grad_(True)
    eye = torch.eye(min(w.shape), dtype=w.dtype)
    opt = torch.optim.LBFGS([w], lr=1.0, max_iter=steps, tolerance_grad=1e-10, tolerance_change=1e-14,
                            line_search_fn="strong_wolfe")

    def objective():
        opt.zero_grad()
        gram_w = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
        # Scale-free: a ranking against a gallery ignores W's global scale, so only its shape is regularised.
        off = gram_w / (gram_w.diagonal().mean() + 1e-12) - eye
        loss = (x @ w.T - y).pow(2).sum(1).mean() + orthogonality * off.pow(2).sum() / len(eye)
        loss.backward()
        return loss

    opt.step(objective)
    return w.detach().float()


def basis_residual(new: Tensor, old: Tensor, w: Tensor) -> float:
    """Relative residual ``‖new·Wᵀ·s − old‖ / ‖old‖`` of a map, at the best global scale ``s`` (scale-free).

    Shapes:
        new: [n, d_new]; old: [n, d_old]; w: [d_old, d_new]
    """
    pred = new.double() @ w.double().T
    s = (pred * old.double()).sum() / pred.pow(2).sum().clamp_min(1e-24)
    return float((pred * s - old.double()).norm() / old.double().norm().clamp_min(1e-24))
