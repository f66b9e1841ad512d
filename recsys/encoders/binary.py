"""Binary codes: train the sign bits of any encoder's embeddings for Hamming-distance candidate generation.

The wrapper serves the float embeddings unchanged (they re-rank the shortlist) and adds a ranking loss on their
signs, ``sign(x)`` with a straight-through estimator, so that ``q_bits · i_bits = D − 2·hamming(q, i)`` ranks
well on its own. At serving time the signs are packed 8 per byte (:func:`recsys.scoring.cascade.pack_bits`): a
D-dimensional item costs D/8 bytes, and a Hamming shortlist is re-ranked by the float model
(:func:`recsys.scoring.cascade.hamming_cascade_fn`). This is the real-binary split of binary paragraph vectors
(a short binary code to filter, real values to rank).

The code length is the wrapped encoder's width by default. With ``bits`` set (16-256), a learned projection
``P [D, bits]`` (orthogonal at initialisation) maps the embeddings first and the wrapper serves ``x·P``: its signs are
the ``bits``-bit code, and the same ``x·P`` re-ranks the shortlist, so the Hamming indexes (``hamming:``,
``faiss:binary``), which pack the signs of the served table, serve the trained code of any length unchanged. As in
binary paragraph vectors, the code layer is a learned linear map of the float representation.

Grzegorczyk & Kurdziel, "Binary Paragraph Vectors", RepL4NLP 2017; straight-through estimator: Bengio et al.,
"Estimating or Propagating Gradients Through Stochastic Neurons", 2013.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from recsys.capabilities import ExplicitConcepts, StepOutput
from recsys.data.batch import Batch
from recsys.encoders.base import TwoSidedEncoder
from recsys.encoders.wrapper import EncoderWrapper
from recsys.errors import UsageError
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
    """Float embeddings plus a trained binary code: their signs (after a learned projection when ``bits`` is set).

    Args:
        encoder: the wrapped encoder; without ``bits`` its ``out_dim`` is the number of bits.
        weight: weight of the code loss added to the model's float loss.
        loss: the ranking loss on code scores (BPR when None); code scores are ``q_bits · i_bits / √bits``.
        bits: the code length, 16-256, independent of the encoder's width: the wrapper then serves ``x·P`` with a
            learned ``P [D, bits]`` and codes ``sign(x·P)``. None (the default): no projection, ``bits = D``.

    Shapes:
        batch.users: [B]; batch.items: [B, C] -> (query [B, bits], items [B, C, bits]) (floats; bits = D when None)
    """

    def __init__(self, encoder: TwoSidedEncoder, weight: float = 1.0, loss: Loss | None = None,
                 bits: int | None = None) -> None:
        super().__init__(encoder)
        if bits is not None and (isinstance(bits, bool) or not isinstance(bits, int) or not 16 <= bits <= 256):
            raise UsageError(f"BinaryCodes bits must be an integer in [16, 256] or None, got {bits!r}")
        if bits is not None and isinstance(encoder, ExplicitConcepts):
            raise UsageError("BinaryCodes bits cannot wrap an explicit-concept encoder: the projection mixes its "
                             "named dimensions")
        self.weight, self.bits = weight, bits
        self.code_loss = loss if loss is not None else BPRLoss()
        self.projection: nn.Parameter | None = None
        if bits is not None:
            self.out_dim = bits
            self.projection = self._new_projection(encoder.out_dim)

    def _new_projection(self, width: int) -> nn.Parameter:
        # Orthogonal: x·P keeps the norms and inner products of x (bits >= D) or is an orthogonal projection
        # (bits < D), so the float model starts as the inner encoder's and the first codes are random hyperplane
        # (SimHash) codes of it.
        return nn.Parameter(nn.init.orthogonal_(torch.empty(width, self.bits)))

    def bind_wrapper(self, data) -> None:
        if self.projection is not None and self.projection.shape[0] != self.encoder.out_dim:
            self.projection = self._new_projection(self.encoder.out_dim)  # the inner width came from the data

    def served_dim(self) -> int:
        return self.bits or self.encoder.out_dim

    def transform(self, x: Tensor, side: str, state=None) -> Tensor:
        return x if self.projection is None else x @ self.projection

    def codes(self, x: Tensor) -> Tensor:
        """±1 codes of served embeddings (already projected when ``bits`` is set; no gradient).

        Shapes:
            x: [..., out_dim] -> [..., out_dim]
        """
        return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)

    def wrapper_losses(self, batch: Batch, inner: StepOutput, state=None) -> dict[str, Tensor]:
        if not self.weight:
            return {}
        query, cands = self.inner_rows(batch, inner)
        query, cands = self.transform(query, "query"), self.transform(cands, "item")
        return {"codes": self.weight * code_ranking_loss(self.code_loss, sign_ste(query), sign_ste(cands), batch)}

    def bytes_per_item(self) -> float:
        """Bytes per item of the packed code (the float table used for re-ranking is not counted)."""
        return self.out_dim / 8
