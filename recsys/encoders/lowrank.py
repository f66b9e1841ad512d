"""Low-rank factorized embeddings with ordered dropout: ``E = A·B``, truncatable to any rank after training.

The wrapped encoder produces the rank-``r`` factor ``A`` (for MF: an ID table of width ``r``); a shared basis ``B``
``[r, dim]`` maps it to the served size. During training, ordered dropout keeps only the first ``k`` of the ``r``
components, ``k`` drawn uniformly per step, so the leading components carry the most information and
``A[:, :k] · B[:k]`` is a good model for every ``k``: one training run, any rank at serving time.

Wrapping a graph encoder factorizes its ego table: LightGCN's propagation is linear, so propagating ``A`` and then
multiplying by ``B`` equals propagating the low-rank table ``A·B``.

Maestro: Wang et al., "Maestro: Uncovering Low-Rank Structures via Trainable Decomposition", ICML 2024 (ordered
dropout from Horváth et al., "FjORD", NeurIPS 2021).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from recsys.capabilities import ExplicitConcepts
from recsys.encoders.base import TwoSidedEncoder
from recsys.encoders.choices import check_size
from recsys.encoders.wrapper import EncoderWrapper
from recsys.errors import UsageError


class LowRank(EncoderWrapper):
    """A rank-``r`` factor from the wrapped encoder times a learned basis ``B [r, dim]``.

    Args:
        encoder: produces the factor ``A``; its ``out_dim`` is the maximum rank ``r``.
        dim: the served embedding size (``B`` is ``[r, dim]``).
        min_rank: the smallest rank ordered dropout draws (1 by default).
        p_full: probability of a training step at full rank (no truncation).
        rank: the rank served after training (None: full ``r``); change it with :meth:`set_rank`.

    Shapes:
        batch.users: [B]; batch.items: [B, C] -> (query [B, dim], items [B, C, dim])
    """

    #: the basis mixes coordinates, so named concept dimensions do not survive it.
    refuses = (ExplicitConcepts,)

    def __init__(self, encoder: TwoSidedEncoder, dim: int = 64, min_rank: int = 1, p_full: float = 0.25,
                 rank: int | None = None) -> None:
        super().__init__(encoder)
        check_size(type(self).__name__, "dim", dim)
        self.max_rank = encoder.out_dim
        if not 1 <= min_rank <= self.max_rank:
            raise UsageError(f"min_rank must be in [1, {self.max_rank}], got {min_rank}")
        self.out_dim, self.min_rank, self.p_full = dim, min_rank, p_full
        self.basis = nn.Parameter(torch.randn(self.max_rank, dim) / math.sqrt(self.max_rank))
        self.set_rank(rank)

    def set_rank(self, rank: int | None) -> None:
        """Serve the first ``rank`` components (None: all); no retraining."""
        if rank is not None and not 1 <= rank <= self.max_rank:
            raise ValueError(f"rank must be in [1, {self.max_rank}], got {rank}")
        self.rank = rank

    def served_dim(self) -> int:
        return self.basis.shape[1]

    def serving_extras(self, tables_of) -> dict[str, Tensor]:
        """The factor tables ``A`` (before the basis) and the basis ``B``: ``--index lowrank:rank=k`` serves
        ``A[:, :k] · B[:k]`` without retraining."""
        queries, items = tables_of(self.encoder)
        return {"query_factors": queries, "item_factors": items, "basis": self.basis.detach()}

    def step_state(self) -> int | None:
        """Ordered dropout: the rank of this training step (None: full rank), one draw per step."""
        # The same rank for queries and candidates, so the step trains one truncated model.
        if float(torch.rand(())) >= self.p_full:
            return int(torch.randint(self.min_rank, self.max_rank + 1, ()))
        return None

    def transform(self, x: Tensor, side: str, state: int | None = None) -> Tensor:
        k = state or self.rank or self.max_rank
        return x[..., :k] @ self.basis[:k]

    def parameter_count(self, rank: int | None = None, n_rows: int | None = None) -> int:
        """Parameters of the truncated model: ``n_rows · k`` factor entries plus ``k · dim`` basis entries.

        ``n_rows`` is the number of factor rows (users + items for MF and LightGCN; the caller knows it).
        """
        k = rank or self.rank or self.max_rank
        return (n_rows or 0) * k + k * self.out_dim

    def bytes_per_item(self) -> float:
        """float32 bytes per stored item factor at the served rank (the shared basis is not per item)."""
        return 4.0 * (self.rank or self.max_rank)
