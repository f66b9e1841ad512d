"""Matryoshka embeddings: serve any encoder at a prefix of its dimensions.

Training with :class:`recsys.losses.MatryoshkaLoss` makes every prefix ``d/8, d/4, d/2, d`` a usable embedding on
its own; this wrapper then serves one prefix, so a cheaper model is a config (or ``--index prefix:dim=D``) change,
not a retrain.

Kusupati et al., "Matryoshka Representation Learning", NeurIPS 2022; Li et al., "2D Matryoshka Sentence
Embeddings", 2024 (prefixes over dimensions only here, not over layers).
"""

from __future__ import annotations

from torch import Tensor

from recsys.encoders.base import TwoSidedEncoder
from recsys.encoders.wrapper import EncoderWrapper
from recsys.errors import UsageError


class Matryoshka(EncoderWrapper):
    """Truncates both sides' embeddings to their first ``dim`` coordinates.

    The scorer is applied after truncation, so a cosine model is re-normalised at the prefix, as MRL serves it.

    Args:
        encoder: the wrapped encoder (trained with a nested loss for the prefix to be good).
        dim: the served prefix size; None serves all ``encoder.out_dim`` dimensions.

    Shapes:
        batch.users: [B]; batch.items: [B, C] -> (query [B, dim], items [B, C, dim])
    """

    def __init__(self, encoder: TwoSidedEncoder, dim: int | None = None) -> None:
        super().__init__(encoder)
        self.set_dim(dim)

    def set_dim(self, dim: int | None) -> None:
        """Serve a different prefix (no parameters change)."""
        inner = self.encoder.out_dim
        # An inner width of 0 is not known before binding (it comes from the data): checked again at bind.
        if dim is not None and not (0 < dim <= inner or (inner == 0 and dim > 0)):
            raise UsageError(f"prefix dim must be in [1, {inner}], got {dim}")
        self.dim = dim
        self.out_dim = dim or inner

    def served_dim(self) -> int:
        self.set_dim(self.dim)
        return self.out_dim

    def transform(self, x: Tensor, side: str, state=None) -> Tensor:
        return x if self.dim is None else x[..., :self.dim]
