"""What a training positive competes with: sampled candidates, the other rows' positives, or the whole catalogue.

A strategy embeds a training batch through the encoder (one :class:`~recsys.capabilities.StepOutput`) and turns
it into positive and negative scores. ``RecModel`` takes one as ``negatives`` (YAML: ``class_path``); a new
strategy is a subclass in its own file, with no edit to the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from recsys.capabilities import EncodesPositions, ScoresAgainstTable, StepOutput
from recsys.data.batch import Batch
from recsys.data.examples import ExampleBuilder, Sequences
from recsys.encoders.base import TwoSidedEncoder
from recsys.scorers import Scorer

__all__ = ["FullCatalogue", "InBatchNegatives", "NegativeStrategy", "SampledNegatives", "Step"]


@dataclass
class Step:
    """An embedded training batch: the encoder's output plus what the strategy needs to score it.

    Args:
        out: the encoder's step output (embeddings, penalty, extra losses).
        target: for table-form outputs, the item column(s) of each query row in the table; None otherwise.

    Shapes:
        target: [Q, C] (sampled against the table: the batch's candidates) or [Q, 1] (full catalogue)
    """

    out: StepOutput
    target: Tensor | None = None


class NegativeStrategy:
    """Embeds a training batch and scores its positive (column 0 of ``batch.items``) against negatives."""

    #: item rows no positive may compete with (the cold-item protocol's held-out items), set by :meth:`bind`.
    blocked: Tensor | None = None

    def bind(self, data) -> None:
        """Take what the data fixes: the items held out by a cold-item protocol are never negatives.

        Sampled strategies get their candidates from the loader, whose sampler already skips them
        (:meth:`recsys.data.sampling.NegativeSampler.for_data`); a strategy that scores the item table masks them.
        """
        cold = data.cold_items
        self.blocked = torch.from_numpy(cold) if cold is not None and len(cold) else None

    def check(self, encoder: TwoSidedEncoder, examples: ExampleBuilder, num_negatives: int) -> None:
        """Refuse settings of the data loader this strategy cannot work with (a one-line ``ValueError``).

        Args:
            encoder: the model's encoder.
            examples: ``data.loader.examples``.
            num_negatives: ``data.loader.num_negatives``.
        """
        if isinstance(examples, Sequences):
            raise ValueError(f"data.loader.examples Sequences (one target per history position) needs "
                             f"model.init_args.negatives: recsys.training.FullCatalogue, not {type(self).__name__}")

    def embed(self, encoder: TwoSidedEncoder, batch: Batch) -> Step:
        raise NotImplementedError

    def score(self, scorer: Scorer, batch: Batch, step: Step, dim: int | None = None) -> tuple[Tensor, Tensor]:
        """Positive and negative scores of an embedded batch, at the first ``dim`` dimensions (all when None).

        Shapes:
            -> (pos [Q], neg [Q, K])
        """
        raise NotImplementedError


def _prefix(step: Step, dim: int | None) -> tuple[Tensor, Tensor]:
    q, c = step.out.query, step.out.candidates
    return (q, c) if dim is None else (q[..., :dim], c[..., :dim])


class SampledNegatives(NegativeStrategy):
    """The batch's own negative columns (``data.loader.num_negatives`` per positive).

    When the encoder computes the whole item table at every step anyway (it declares
    :class:`~recsys.capabilities.ScoresAgainstTable`) and the catalogue is small against the candidates, all items
    are scored with one GEMM and the candidates' columns picked: exact, and ~6x cheaper on CPU than gathering a
    ``[B, C, D]`` candidate tensor, forward and backward (the gather costs ~1 µs per candidate, the GEMM ~5 ns per
    score: the GEMM wins below ~100 × C items).
    """

    def embed(self, encoder: TwoSidedEncoder, batch: Batch) -> Step:
        if isinstance(encoder, ScoresAgainstTable) and encoder.n_items <= 100 * batch.items.shape[1]:
            return Step(encoder.training_tables(batch), batch.items)
        return Step(encoder(batch))

    def score(self, scorer: Scorer, batch: Batch, step: Step, dim: int | None = None) -> tuple[Tensor, Tensor]:
        query, cands = _prefix(step, dim)
        if step.target is not None:  # cands is the item table, target the candidates
            scores = scorer.score_all(query, cands).gather(1, step.target)
        else:
            scores = scorer(query, cands)
        return scores[:, 0], scores[:, 1:]


class InBatchNegatives(NegativeStrategy):
    """The other rows' positives, plus any sampled columns; a duplicate of the row's own positive is masked."""

    def embed(self, encoder: TwoSidedEncoder, batch: Batch) -> Step:
        return Step(encoder(batch))

    def score(self, scorer: Scorer, batch: Batch, step: Step, dim: int | None = None) -> tuple[Tensor, Tensor]:
        query, cands = _prefix(step, dim)
        logits = scorer.score_all(query, cands[:, 0])
        pos = logits.diagonal()
        same = batch.items[:, :1] == batch.items[:, 0][None, :]
        neg = logits.masked_fill(same, float("-inf"))
        if cands.shape[1] > 1:
            neg = torch.cat([neg, scorer(query, cands[:, 1:])], dim=1)
        return pos, neg


class FullCatalogue(NegativeStrategy):
    """Every item of ``encoder.item_table()``: the full-catalogue softmax of SASRec's CE loss and Recformer's
    fine-tuning; column 0 of ``batch.items`` is the target.

    Masked scores are -inf, so ``SoftmaxLoss`` is the exact softmax cross-entropy over the remaining candidates.
    With ``batch.items`` as wide as ``batch.history`` (``data.loader.examples: Sequences``), every history position
    predicts its own target (-1 = none) from the encoder's per-position queries (it must declare
    :class:`~recsys.capabilities.EncodesPositions`): SASRec's original all-positions training.
    """

    def check(self, encoder: TwoSidedEncoder, examples: ExampleBuilder, num_negatives: int) -> None:
        if num_negatives:
            raise ValueError(f"model.init_args.negatives FullCatalogue scores every item, so data.loader.num_negatives "
                             f"must be 0 (got {num_negatives}: the sampled columns would be ignored)")
        if isinstance(examples, Sequences) and not isinstance(encoder, EncodesPositions):
            raise ValueError(f"data.loader.examples Sequences needs an encoder that embeds every history position "
                             f"(EncodesPositions); {type(encoder).__name__} does not")

    def embed(self, encoder: TwoSidedEncoder, batch: Batch) -> Step:
        per_position = (batch.history is not None and batch.items.shape[1] > 1
                        and batch.items.shape == batch.history.shape)
        out = encoder.catalogue_step(batch, per_position)
        if not per_position:
            return Step(out, batch.items[:, :1])
        valid = batch.items >= 0
        out.query = out.query[valid]
        return Step(out, batch.items[valid][:, None])

    def score(self, scorer: Scorer, batch: Batch, step: Step, dim: int | None = None) -> tuple[Tensor, Tensor]:
        query, table = _prefix(step, dim)
        logits = scorer.score_all(query, table)
        pos = logits.gather(1, step.target).squeeze(1)
        neg = logits.scatter(1, step.target, float("-inf"))
        if self.blocked is not None:
            # Held-out cold items must not even be seen as negatives: "none in training".
            neg = neg.index_fill(1, self.blocked.to(neg.device), float("-inf"))
        return pos, neg
