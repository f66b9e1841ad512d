"""Ranking losses over positive and negative scores. Each is a small module the LightningModule composes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recsys.capabilities import NestedLoss


def default_prefix_dims(dim: int) -> list[int]:
    """``{d/8, d/4, d/2, d}``, without sizes below 1 or repeats: :class:`MatryoshkaLoss`'s default prefixes."""
    return sorted({max(1, dim // f) for f in (8, 4, 2, 1)})


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


class MatryoshkaLoss(Loss, NestedLoss):
    """Nested (Matryoshka) loss: a base loss at several prefix sizes of the same embeddings, weighted and summed.

    ``L = Σ_m w_m · base(scores of q[:m] and i[:m])`` over prefix sizes ``m`` (default ``{d/8, d/4, d/2, d}``), so
    every prefix is trained to rank on its own. ``RecModel`` computes the embeddings once and calls
    :meth:`nested` with a function that scores a prefix; called as a plain loss it is the base loss.

    Kusupati et al., "Matryoshka Representation Learning", NeurIPS 2022.

    Args:
        base: the loss at each prefix (BPR when None).
        dims: prefix sizes (``{d/8, d/4, d/2, d}`` of the encoder's ``d`` when None).
        weights: one weight per prefix (1 each when None; MRL uses uniform weights).
    """

    def __init__(self, base: Loss | None = None, dims: list[int] | None = None,
                 weights: list[float] | None = None) -> None:
        super().__init__()
        if dims is not None and weights is not None and len(dims) != len(weights):
            raise ValueError(f"{len(dims)} prefix dims but {len(weights)} weights")
        self.base = base if base is not None else BPRLoss()
        self.dims = None if dims is None else sorted(int(d) for d in dims)
        self.weights = None if weights is None else [float(w) for w in weights]

    def prefix_dims(self, out_dim: int) -> list[int]:
        dims = self.dims or default_prefix_dims(out_dim)
        if dims[-1] > out_dim:
            raise ValueError(f"prefix dim {dims[-1]} exceeds the encoder's {out_dim} dimensions")
        return dims

    def forward(self, pos: Tensor, neg: Tensor) -> Tensor:
        return self.base(pos, neg)

    def nested(self, scores_at, out_dim: int) -> Tensor:
        """The weighted sum of base losses; ``scores_at(m)`` returns ``(pos [B], neg [B, K])`` at prefix ``m``."""
        dims = self.prefix_dims(out_dim)
        weights = self.weights or [1.0] * len(dims)
        return sum(w * self.base(*scores_at(m)) for m, w in zip(dims, weights))
