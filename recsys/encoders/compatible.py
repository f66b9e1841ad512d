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

from recsys.data.batch import Batch
from recsys.encoders.base import RecEncoder
from recsys.encoders.wrapper import EncoderWrapper, combine_aux
from recsys.losses import BPRLoss, Loss


class Compatible(EncoderWrapper):
    """A new encoder in an orthonormal basis whose leading coordinates are compatible with an old item table.

    Args:
        encoder: the new encoder (``out_dim`` ≥ the old model's).
        old_run: run directory of the old model (``recsys fit``); its scorer-prepared item table is the gallery.
            None trains without the influence loss (a plain rotated model), e.g. in smoke tests.
        weight: weight of the influence loss.
        loss: the ranking loss of new queries against old items (BPR when None).
        old: an old encoder object instead of a run directory (bound to the same data here; for tests).

    Shapes:
        batch.users: [B]; batch.items: [B, C] -> (query [B, d_new], items [B, C, d_new])
    """

    def __init__(self, encoder: RecEncoder, old_run: str | None = None, weight: float = 1.0,
                 loss: Loss | None = None, old: RecEncoder | None = None) -> None:
        super().__init__(encoder)
        self.old_run, self.weight = old_run, weight
        self.compat_loss = loss if loss is not None else BPRLoss()
        # Not a sub-module: the old model is frozen and is no part of the new model's weights.
        self.__dict__["_old_encoder"] = old
        self.basis = orthogonal(nn.Linear(encoder.out_dim, encoder.out_dim, bias=False))
        self.old_dim = encoder.out_dim
        self.register_buffer("old_items", torch.zeros(0, 0), persistent=False)

    def bind_wrapper(self, data) -> None:
        table = self._old_item_table(data)
        if table is None:
            return
        if table.shape[0] != data.n_items:
            raise ValueError(f"the old model has {table.shape[0]} items, the data {data.n_items}: "
                             "train the new model on the same prepared data")
        if table.shape[1] > self.out_dim:
            raise ValueError(f"the new encoder ({self.out_dim} dims) is narrower than the old one ({table.shape[1]})")
        self.old_items = table
        self.old_dim = table.shape[1]

    @torch.no_grad()
    def _old_item_table(self, data) -> Tensor | None:
        from recsys.recommender import embedding_tables
        from recsys.scorers import DotScorer

        if self.old_run is not None:
            from recsys.runs import load_model

            old, _ = load_model(self.old_run, data)
            _, items = embedding_tables(old.encoder, old.scorer, data)
            return items.detach().clone()
        old = self.__dict__["_old_encoder"]
        if old is None:
            return None
        old.bind(data)
        _, items = embedding_tables(old, DotScorer(), data)
        return items.detach().clone()

    def transform(self, x: Tensor, side: str) -> Tensor:
        return self.basis(x)

    def compatible_queries(self, query: Tensor) -> Tensor:
        """The coordinates of new queries that score against the old gallery.

        Shapes:
            query: [..., d_new] -> [..., d_old]
        """
        return query[..., :self.old_dim]

    def auxiliary_loss(self, batch: Batch) -> Tensor | None:
        own = None
        if self.weight and self.old_items.numel():
            query, _ = self.inner_embeddings(batch)
            q = self.compatible_queries(self.transform(query, "query"))
            old = self.old_items[batch.items]
            scores = (old @ q.unsqueeze(-1)).squeeze(-1)
            if scores.shape[1] > 1:
                own = self.weight * self.compat_loss(scores[:, 0], scores[:, 1:])
            else:
                logits = q @ old[:, 0].T
                same = batch.items[:, :1] == batch.items[:, 0][None, :]
                own = self.weight * self.compat_loss(logits.diagonal(), logits.masked_fill(same, float("-inf")))
        return combine_aux(super().auxiliary_loss(batch), own)
