"""2D Matryoshka training: each batch is embedded at the last layer and at a shallower layer drawn at random.

Li et al., "2D Matryoshka Sentence Embeddings" (2DMSE), 2024, arXiv 2402.14776. :class:`SampledLayer` wraps any
negatives strategy; its scores stack the two depths' rows, so ``RecModel``'s loss (a ``MatryoshkaLoss`` nests it
over dimension prefixes) is the mean of the last layer's and the shallow layer's loss, and no model code changes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from recsys.data.batch import Batch
from recsys.data.examples import ExampleBuilder
from recsys.encoders.base import TwoSidedEncoder
from recsys.encoders.matryoshka2d import layered_encoder
from recsys.scorers import Scorer
from recsys.training.negatives import NegativeStrategy, SampledNegatives, Step

__all__ = ["LayerSteps", "SampledLayer"]


@dataclass
class LayerSteps(Step):
    """The last layer's step (``out``, ``target``: what ``RecModel`` reads the penalty and extra losses from)
    plus the shallow layer's.

    Args:
        shallow: the same batch embedded from the first ``layer`` layers (None when the encoder has no shallower
            layer to train).
        layer: the drawn shallow layer.
    """

    shallow: Step | None = None
    layer: int = 0


class SampledLayer(NegativeStrategy):
    """Embeds every training batch twice, at the last layer and at one shallower layer drawn uniformly from the
    encoder's ``train_layers()``, and scores both with the wrapped strategy.

    ``score`` returns the two depths' rows stacked (``[2B]``, ``[2B, K]``): a row-averaging loss (softmax, BPR)
    is then ``(L_last + L_shallow) / 2`` at every prefix a nested loss asks for, 2DMSE's objective without its
    alignment term. The step's penalty and extra loss terms are the last layer's (an encoder skips its own extra
    terms in the shallow pass, see :meth:`~recsys.encoders.matryoshka2d.Layered.in_shallow_step`). The encoder
    (or the encoder inside its wrappers) must declare
    :class:`~recsys.encoders.matryoshka2d.Layered`. The draw uses torch's global generator, so it follows the
    run's seed and resumes with its checkpoint.

    Li et al., "2D Matryoshka Sentence Embeddings", 2024.

    Args:
        negatives: what each depth's positive competes with (sampled candidates when None).

    Shapes:
        score -> (pos [2B], neg [2B, K]) (``[B]``, ``[B, K]`` when the encoder has no shallower layer)
    """

    def __init__(self, negatives: NegativeStrategy | None = None) -> None:
        if isinstance(negatives, SampledLayer):
            raise ValueError("model.init_args.negatives SampledLayer cannot wrap another SampledLayer")
        self.negatives = negatives if negatives is not None else SampledNegatives()

    def bind(self, data) -> None:
        super().bind(data)
        self.negatives.bind(data)

    def check(self, encoder: TwoSidedEncoder, examples: ExampleBuilder, num_negatives: int) -> None:
        layered_encoder(encoder)
        self.negatives.check(encoder, examples, num_negatives)

    def embed(self, encoder: TwoSidedEncoder, batch: Batch) -> Step:
        inner = layered_encoder(encoder)
        with inner.at_layer(inner.depth()):
            deep = self.negatives.embed(encoder, batch)
        layers = list(inner.train_layers())
        if not layers:
            return LayerSteps(deep.out, deep.target)
        layer = layers[int(torch.randint(len(layers), ()))]
        with inner.at_layer(layer):
            shallow = self.negatives.embed(encoder, batch)
        # Extra loss terms (Recformer's MLM) and penalties are the last layer's step's only: counted once.
        return LayerSteps(deep.out, deep.target, shallow, layer)

    def score(self, scorer: Scorer, batch: Batch, step: Step, dim: int | None = None) -> tuple[Tensor, Tensor]:
        pos, neg = self.negatives.score(scorer, batch, Step(step.out, step.target), dim)
        if not isinstance(step, LayerSteps) or step.shallow is None:
            return pos, neg
        pos_l, neg_l = self.negatives.score(scorer, batch, step.shallow, dim)
        return torch.cat([pos, pos_l]), torch.cat([neg, neg_l])
