"""Ranking losses over positive and negative scores. Each is a small module the LightningModule composes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recsys.capabilities import NestedLoss


def default_prefix_dims(dim: int) -> list[int]:
    """``{d/8, d/4, d/2, d}``, without sizes below 1 or repeats: :class:`MatryoshkaLoss`'s default prefixes."""
    return sorted({max(1, dim // f) for f in (8, 4, 2, 1)})


class _ScaleGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, scale: Tensor) -> Tensor:
        ctx.save_for_backward(scale)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (scale,) = ctx.saved_tensors
        return grad * scale, None


def scale_gradient(x: Tensor, scale: Tensor) -> Tensor:
    """``x`` unchanged in the forward pass; its gradient multiplied by ``scale`` (broadcast over the last axis).

    Shapes:
        x: [..., D]; scale: [D] -> [..., D]
    """
    return _ScaleGradient.apply(x, scale)


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

    With ``balance``, each embedding coordinate's gradient is divided by the total weight of the prefixes that contain
    it (``W_j = Σ_{m ≥ j} w_m``). Under Adam with coupled L2 (``weight_decay`` of ``torch.optim.Adam``) a gradient
    scale is otherwise a per-coordinate change of the decay: the first coordinates, summed over every prefix's loss,
    are decayed ``W_1`` times less than the last ones, grow until they alone fit the data, and the tail's gradient
    shrinks until the decay pins it at zero (the collapse). Balanced, every coordinate sees its prefixes' mean loss
    against the same decay, as if each prefix were a model with its own L2; for a table encoder this is exactly
    ``Σ_m w_m (base_m + λ‖θ[:, :m]‖²)`` under Adam. Measured on P1 (MF-128, uniform weights, seed 2026, test
    ndcg@20 at 16/32/64/128): 0.1649/0.1993/0.2061/0.2107, no collapse, but below plain MF-128 rotated onto
    its principal axes (:class:`recsys.encoders.PrincipalAxes`, ``configs/mf_matryoshka.yaml``:
    0.2112/0.2155/0.2178/0.2189).

    Args:
        base: the loss at each prefix (BPR when None).
        dims: prefix sizes (``{d/8, d/4, d/2, d}`` of the encoder's ``d`` when None).
        weights: one weight per prefix (1 each when None; MRL uses uniform weights).
        balance: divide each coordinate's gradient by the weight of the prefixes holding it (see above).
    """

    def __init__(self, base: Loss | None = None, dims: list[int] | None = None,
                 weights: list[float] | None = None, balance: bool = False) -> None:
        super().__init__()
        if dims is not None and weights is not None and len(dims) != len(weights):
            raise ValueError(f"{len(dims)} prefix dims but {len(weights)} weights")
        if weights is not None and any(w < 0 for w in weights):
            raise ValueError(f"prefix weights must be >= 0, got {weights}")
        self.base = base if base is not None else BPRLoss()
        self.dims = None if dims is None else sorted(int(d) for d in dims)
        self.weights = None if weights is None else [float(w) for w in weights]
        self.balance = bool(balance)

    def prefix_dims(self, out_dim: int) -> list[int]:
        dims = self.dims or default_prefix_dims(out_dim)
        if dims[-1] > out_dim:
            raise ValueError(f"prefix dim {dims[-1]} exceeds the encoder's {out_dim} dimensions")
        return dims

    def forward(self, pos: Tensor, neg: Tensor) -> Tensor:
        return self.base(pos, neg)

    def gradient_scale(self, out_dim: int) -> Tensor | None:
        """Per-coordinate factor for the embeddings' gradient: ``1 / W_j`` with ``balance``, else None.

        Shapes:
            -> [out_dim]
        """
        if not self.balance:
            return None
        dims = self.prefix_dims(out_dim)
        weights = self.weights or [1.0] * len(dims)
        cover = torch.zeros(out_dim)
        for m, w in zip(dims, weights):
            cover[:m] += w
        # Coordinates past the last prefix (dims set below d) get no loss gradient at all: leave them unscaled.
        return torch.where(cover > 0, 1.0 / cover.clamp_min(1e-12), torch.ones_like(cover))

    def nested(self, scores_at, out_dim: int) -> Tensor:
        """The weighted sum of base losses; ``scores_at(m)`` returns ``(pos [B], neg [B, K])`` at prefix ``m``."""
        dims = self.prefix_dims(out_dim)
        weights = self.weights or [1.0] * len(dims)
        return sum(w * self.base(*scores_at(m)) for m, w in zip(dims, weights))
