"""Hard negatives by dynamic negative sampling: the loader's candidates, cut to the ones the model ranks highest."""

from __future__ import annotations

import torch
from torch import Tensor

from recsys.data.batch import Batch
from recsys.data.examples import ExampleBuilder
from recsys.encoders.base import TwoSidedEncoder
from recsys.scorers import Scorer
from recsys.training.negatives import SampledNegatives, Step

__all__ = ["HardNegatives"]


class HardNegatives(SampledNegatives):
    """Dynamic negative sampling (DNS): of the ``data.loader.num_negatives`` uniform candidates of each positive,
    only the ``keep`` that the current model scores highest are the negatives.

    The candidates are embedded and scored as by :class:`~recsys.training.negatives.SampledNegatives` (gathered, or
    against the item table when the encoder declares :class:`~recsys.capabilities.ScoresAgainstTable`); the kept
    columns are chosen without gradient and gathered from the with-gradient scores, so the loss, and the gradient,
    see only the kept negatives. ``keep=1`` is the classic DNS: BPR against the hardest of M.

    Under a nested loss (Matryoshka) the kept columns are chosen at every prefix size from that prefix's own
    scores: each prefix is served as a model of its own, and its hardest negatives are the ones *it* ranks
    highest (a negative hard for all ``d`` dimensions can be easy for the first ``d/8``). It also keeps
    :meth:`score` a function of its arguments: no selection is carried from one call to the next.

    Zhang, Chen, Wang & Yu, "Optimizing Top-N Collaborative Filtering via Dynamic Negative Item Sampling",
    SIGIR 2013.

    Args:
        keep: negatives kept per positive (at most ``data.loader.num_negatives``).
    """

    def __init__(self, keep: int = 1) -> None:
        if keep < 1:
            raise ValueError(f"HardNegatives keep must be at least 1, got {keep}")
        self.keep = keep

    def check(self, encoder: TwoSidedEncoder, examples: ExampleBuilder, num_negatives: int) -> None:
        super().check(encoder, examples, num_negatives)
        if num_negatives < self.keep:
            raise ValueError(f"HardNegatives keeps the {self.keep} hardest of data.loader.num_negatives candidates, "
                             f"so data.loader.num_negatives ({num_negatives}) must be at least keep ({self.keep})")

    def score(self, scorer: Scorer, batch: Batch, step: Step, dim: int | None = None) -> tuple[Tensor, Tensor]:
        """Positive scores and the scores of each row's ``keep`` highest-scoring candidates.

        Shapes:
            -> (pos [Q], neg [Q, keep])
        """
        pos, cands = super().score(scorer, batch, step, dim)
        with torch.no_grad():
            kept = cands.topk(self.keep, dim=1, sorted=False).indices
        return pos, cands.gather(1, kept)
