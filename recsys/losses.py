"""Ranking losses over positive and negative scores. Each is a small module the LightningModule composes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Loss(nn.Module):
    """A loss over scores of positives and sampled negatives.

    Shapes:
        pos: [B]; neg: [B, K] -> scalar
    """

    def forward(self, pos: Tensor, neg: Tensor) -> Tensor:
        raise NotImplementedError


class BPRLoss(Loss):
    """Bayesian personalised ranking: −log σ(s⁺ − s⁻), averaged over all (positive, negative) pairs.

    Rendle et al., "BPR: Bayesian Personalized Ranking from Implicit Feedback", UAI 2009.
    """

    def forward(self, pos: Tensor, neg: Tensor) -> Tensor:
        return -F.logsigmoid(pos.unsqueeze(-1) - neg).mean()


class SoftmaxLoss(Loss):
    """Sampled softmax / InfoNCE: cross-entropy of the positive against its negatives.

    With cosine scores already divided by τ (see ``CosineScorer``) this is the InfoNCE of AlphaRec and Recformer.

    Args:
        temperature: an extra divisor for the scores (keep 1.0 when the scorer applies τ).
    """

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(self, pos: Tensor, neg: Tensor) -> Tensor:
        logits = torch.cat([pos.unsqueeze(-1), neg], dim=-1) / self.temperature
        return F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long, device=logits.device))


class BCELoss(Loss):
    """Pointwise binary cross-entropy: positives labelled 1, negatives 0."""

    def forward(self, pos: Tensor, neg: Tensor) -> Tensor:
        return (F.binary_cross_entropy_with_logits(pos, torch.ones_like(pos))
                + F.binary_cross_entropy_with_logits(neg, torch.zeros_like(neg)))
