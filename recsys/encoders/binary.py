"""Binary codes: train the sign bits of any encoder's embeddings for Hamming-distance candidate generation.

The wrapper serves the float embeddings unchanged (they re-rank the shortlist) and adds a ranking loss on their
signs, ``sign(x)`` with a straight-through estimator, so that ``q_bits · i_bits = D − 2·hamming(q, i)`` ranks
well on its own. At serving time the signs are packed 8 per byte (:func:`recsys.scoring.cascade.pack_bits`): a
D-dimensional item costs D/8 bytes, and a Hamming shortlist is re-ranked by the float model
(:func:`recsys.scoring.cascade.hamming_cascade_fn`). This is the real-binary split of binary paragraph vectors
(a short binary code to filter, real values to rank).

Grzegorczyk & Karwowski, "Binary Paragraph Vectors", RepL4NLP 2017; straight-through estimator: Bengio et al.,
"Estimating or Propagating Gradients Through Stochastic Neurons", 2013.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from recsys.capabilities import StepOutput
from recsys.data.batch import Batch
from recsys.encoders.base import TwoSidedEncoder
from recsys.encoders.wrapper import EncoderWrapper
from recsys.losses import BPRLoss, Loss


def sign_ste(x: Tensor) -> Tensor:
    """``sign(x)`` (±1, 0 ↦ +1) forward; the gradient of ``hardtanh(x)`` backward (straight-through, clipped).

    Shapes:
        x: [...] -> [...]
    """
    hard = torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))
    soft = x.clamp(-1.0, 1.0)
    return soft + (hard - soft).detach()


def code_ranking_loss(loss: Loss, q: Tensor, c: Tensor, batch: Batch) -> Tensor:
    """``loss`` on the scores of codes; with one candidate per row the other rows' positives are the negatives.

    Shapes:
        q: [B, D]; c: [B, C, D] -> scalar
    """
    # Scaled by 1/√D so that code scores have the spread of unit-variance float scores, whatever D.
    scale = 1.0 / math.sqrt(q.shape[-1])
    if c.shape[1] > 1:
        scores = (c @ q.unsqueeze(-1)).squeeze(-1) * scale
        return loss(scores[:, 0], scores[:, 1:])
    logits = q @ c[:, 0].T * scale
    same = batch.items[:, :1] == batch.items[:, 0][None, :]
    return loss(logits.diagonal(), logits.masked_fill(same, float("-inf")))


class BinaryCodes(EncoderWrapper):
    """Float embeddings plus a trained binary code: their signs.

    Args:
        encoder: the wrapped encoder; its ``out_dim`` is the number of bits.
        weight: weight of the code loss added to the model's float loss.
        loss: the ranking loss on code scores (BPR when None); code scores are ``q_bits · i_bits / √D``.

    Shapes:
        batch.users: [B]; batch.items: [B, C] -> (query [B, D], items [B, C, D]) (floats)
    """

    def __init__(self, encoder: TwoSidedEncoder, weight: float = 1.0, loss: Loss | None = None) -> None:
        super().__init__(encoder)
        self.weight = weight
        self.code_loss = loss if loss is not None else BPRLoss()

    def codes(self, x: Tensor) -> Tensor:
        """±1 codes of embeddings (no gradient).

        Shapes:
            x: [..., D] -> [..., D]
        """
        return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)

    def wrapper_losses(self, batch: Batch, inner: StepOutput, state=None) -> dict[str, Tensor]:
        if not self.weight:
            return {}
        query, cands = self.inner_rows(batch, inner)
        return {"codes": self.weight * code_ranking_loss(self.code_loss, sign_ste(query), sign_ste(cands), batch)}

    def bytes_per_item(self) -> float:
        """Bytes per item of the packed code (the float table used for re-ranking is not counted)."""
        return self.out_dim / 8
