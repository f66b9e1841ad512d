"""Every optional hook of an encoder or a loss, declared in one place, with who calls it and when.

A capability is a small mixin class (nominal, not structural): an encoder that has the hook inherits the
capability, and callers test ``isinstance(encoder, Capability)``, never ``getattr``. Encoder wrappers
(:class:`recsys.encoders.wrapper.EncoderWrapper`) take on every capability of the encoder they wrap (see
:data:`recsys.encoders.wrapper.DELEGATES`), or refuse one at construction with a clear error.

A training step's embeddings and its extra loss terms travel together in a :class:`StepOutput`, so no encoder keeps
step state on ``self`` for another method to pick up.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from torch import Tensor

if TYPE_CHECKING:
    import pandas as pd

    from recsys.data.batch import Batch

__all__ = ["CAPABILITIES", "EmbedsNewItems", "EncodesPositions", "EpochAware", "ExplicitConcepts", "NestedLoss",
           "ScoresAgainstTable", "StepOutput", "UsesGallery", "capabilities_of"]


@dataclass
class StepOutput:
    """What one training step of an encoder produced: the embeddings to score, plus its extra loss terms.

    Args:
        query: query embeddings.
        candidates: the candidates' embeddings (``forward``), or the whole item table (``training_tables``,
            ``catalogue_step``).
        penalty: the L2 penalty on the parameters the step touched, unweighted (``RecModel`` multiplies it by
            ``reg_weight / batch size``); None when the encoder has none.
        losses: extra loss terms, already weighted (an MLM loss, a code-ranking loss, an L1 sparsity term, an
            InfoNCE term between views); ``RecModel`` adds each and logs it as ``train/<name>``.

    Shapes:
        query: [B, D] (or [Q, D] for per-position queries); candidates: [B, C, D] or [N, D]
    """

    query: Tensor
    candidates: Tensor
    penalty: Tensor | None = None
    losses: dict[str, Tensor] = field(default_factory=dict)


class ScoresAgainstTable:
    """The encoder computes the whole item table at every training step anyway (graph propagation).

    Called by: the sampled-negatives strategy of ``RecModel``, at each training step, when the catalogue is small
    against the number of candidates: it then scores all items with one GEMM and picks the candidates' columns
    (exact, and ~6× cheaper on CPU than gathering a ``[B, C, D]`` candidate tensor).
    """

    def training_tables(self, batch: Batch) -> StepOutput:
        """The batch's query embeddings and the whole item table, with this step's extra terms.

        Shapes:
            batch.users: [B] -> StepOutput(query [B, D], candidates [N, D])
        """
        raise NotImplementedError


class EncodesPositions:
    """The encoder embeds every position of a query history (sequence models: SASRec, Recformer).

    Called by: the full-catalogue strategy of ``RecModel`` when the batch holds one target per history position
    (``data.loader.examples: sequences``), SASRec's all-positions training.
    """

    def encode_query_positions(self, batch: Batch) -> Tensor:
        """The query embedding after each history position.

        Shapes:
            batch.history: [B, L] -> [B, L, D]
        """
        raise NotImplementedError


class EpochAware:
    """The encoder refreshes state once per training epoch (a frozen item table, codebook calibration).

    Called by: ``RecModel.on_train_epoch_start``, before the epoch's first step.
    """

    def on_train_epoch_start(self, epoch: int) -> None:
        raise NotImplementedError


class EmbedsNewItems:
    """The encoder embeds items that did not exist at training time, from their side-table row (text encoders).

    Called by: ``recsys score --new-items`` (``recsys.scoring.new_items``) after loading a run.
    """

    def embed_new_items(self, table: pd.DataFrame) -> Tensor:
        """Item embeddings (before the scorer's preparation) of the rows of a side table.

        Shapes:
            table: M rows -> [M, D]
        """
        raise NotImplementedError


class ExplicitConcepts:
    """The encoder's dimensions are named concepts (SESA): scores split into per-concept contributions.

    Called by: ``recsys fit`` (stores the names with the model), ``recsys score --explain`` and the Seismic index.
    """

    def concept_names(self) -> Sequence[str]:
        """One name per output dimension."""
        raise NotImplementedError


class UsesGallery:
    """The encoder trains against an old model's item table (a backward-compatible upgrade, BT²).

    Called by: ``recsys fit`` before binding: it reads the item table of :meth:`gallery_run` through the run
    directory reader and hands it to :meth:`set_gallery`, so encoders never read run directories themselves.
    """

    def gallery_run(self) -> str | None:
        """The old run directory whose item table to train against (None: none)."""
        raise NotImplementedError

    def set_gallery(self, items: Tensor) -> None:
        """Receive the old model's scorer-prepared item table.

        Shapes:
            items: [N, D_old]
        """
        raise NotImplementedError


class NestedLoss:
    """A loss over several prefix sizes of one set of embeddings (Matryoshka).

    Called by: ``RecModel.training_step``: the step's embeddings are computed once and ``nested`` gets a function
    that scores them at any prefix size.
    """

    def nested(self, scores_at: Callable[[int], tuple[Tensor, Tensor]], out_dim: int) -> Tensor:
        raise NotImplementedError


#: the encoder capabilities a wrapper must keep (``NestedLoss`` is a loss capability).
CAPABILITIES: tuple[type, ...] = (ScoresAgainstTable, EncodesPositions, EpochAware, EmbedsNewItems,
                                  ExplicitConcepts, UsesGallery)


def capabilities_of(obj) -> tuple[type, ...]:
    """The declared encoder capabilities ``obj`` has, in :data:`CAPABILITIES` order."""
    return tuple(c for c in CAPABILITIES if isinstance(obj, c))
