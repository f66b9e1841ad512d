"""Backward-compatible upgrades (BT²): a new encoder whose queries can be scored against an old model's items.

The new encoder may be wider than the old one (``d_new = d_old + extra``). Its embeddings pass through a learned
orthonormal basis ``R`` (``d_new × d_new``); the first ``d_old`` coordinates of ``R·x`` are the compatible
subspace. An influence loss ranks the batch's candidates from the *old, frozen* item table with those coordinates
of the new queries, so a new query can be served against the old gallery before (or without) re-embedding it.
Because ``R`` is orthonormal, new-vs-new inner products are unchanged by it: compatibility is bought by rotating
the basis, not by constraining what the new model can represent, and the extra dimensions hold what is new.

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
