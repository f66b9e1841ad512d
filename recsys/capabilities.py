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

import numpy as np
from torch import Tensor

if TYPE_CHECKING:
    import pandas as pd
    import scipy.sparse as sp

    from recsys.data.batch import Batch

__all__ = ["CAPABILITIES", "SERVING_CAPABILITIES", "EmbedsNewItems", "EncodesPositions", "EpochAware",
           "ExplicitConcepts", "FoldsIn", "Histories", "NestedLoss", "ScoresAgainstTable", "ScoresHistories",
           "StepOutput", "Transfers", "UsesGallery", "capabilities_of"]


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


class Transfers:
    """The encoder's learned parameters do not depend on the catalogue or the users, so weights trained on one
    dataset embed another's users and items (zero-shot transfer; text encoders: AlphaRec, the linear probe,
    Recformer).

    Called by: ``recsys fit --transfer-from RUN`` (:func:`recsys.transfer.transfer_weights`).
    """

    def catalogue_state(self) -> Sequence[str]:
        """Keys of this encoder's ``state_dict`` that belong to the bound catalogue (a cached item table), not to
        the learned model: never transferred."""
        return ()


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


@dataclass
class Histories:
    """Item histories given at serving time, one row per user; the users need not be in the training data.

    What ``recsys score --histories`` hands to :class:`FoldsIn` and :class:`ScoresHistories` models, already mapped
    to the run's item rows (unknown items dropped).

    Args:
        indptr: row offsets: history ``b`` is ``items[indptr[b]:indptr[b + 1]]``.
        items: item rows of every history in chronological order (most recent last); an item may repeat.
        n_items: the catalogue size (the width of :meth:`matrix`).

    Shapes:
        indptr: [B + 1]; items: [nnz]
    """

    indptr: np.ndarray
    items: np.ndarray
    n_items: int

    def __len__(self) -> int:
        return len(self.indptr) - 1

    @classmethod
    def from_lists(cls, lists: Sequence[Sequence[int]], n_items: int) -> Histories:
        """Histories from one list of item rows per user (chronological)."""
        lens = np.array([len(x) for x in lists], dtype=np.int64)
        items = np.concatenate([np.asarray(x, dtype=np.int64) for x in lists]) if len(lists) else np.zeros(0)
        return cls(np.concatenate([[0], np.cumsum(lens)]).astype(np.int64), items.astype(np.int64), n_items)

    def select(self, rows: np.ndarray) -> Histories:
        """The histories of ``rows``, renumbered ``0..len(rows)-1``.

        Shapes:
            rows: [R] -> Histories of R users
        """
        rows = np.asarray(rows, dtype=np.int64)
        starts, ends = self.indptr[rows], self.indptr[rows + 1]
        lens = ends - starts
        offs = np.arange(int(lens.sum())) - np.repeat(np.cumsum(lens) - lens, lens) + np.repeat(starts, lens)
        return Histories(np.concatenate([[0], np.cumsum(lens)]).astype(np.int64), self.items[offs], self.n_items)

    def matrix(self) -> sp.csr_matrix:
        """The binary user × item matrix of the histories (a repeated item counts once, as in training).

        Shapes:
            -> [B, n_items] float32
        """
        import scipy.sparse as sp

        rows = np.repeat(np.arange(len(self)), np.diff(self.indptr))
        m = sp.csr_matrix((np.ones(len(self.items), dtype=np.float32), (rows, self.items)),
                          shape=(len(self), self.n_items))
        m.sum_duplicates()
        m.data[:] = 1.0
        return m

    def sequences(self, max_len: int) -> np.ndarray:
        """The most recent ``max_len`` items of each history, right-aligned and left-padded with -1, as
        ``PreparedData.history`` gives training users' histories.

        Shapes:
            -> [B, max_len] int64
        """
        out = np.full((len(self), max_len), -1, dtype=np.int64)
        ends = self.indptr[1:]
        lens = np.minimum(np.diff(self.indptr), max_len)
        cols = np.arange(max_len)
        valid = cols[None, :] >= (max_len - lens)[:, None]
        src = ends[:, None] - (max_len - cols)[None, :]
        out[valid] = self.items[src[valid]]
        return out


class FoldsIn:
    """The encoder (or factor model) embeds a query from an item history alone: users unseen in training.

    History encoders (SASRec, Recformer, AlphaRec, the history-mean linear probe) encode the history as they
    encode a training user's; ID models (MF, ALS, BPR) fold the user in by least squares against their fixed item
    table (:func:`recsys.encoders.id.least_squares_fold_in`).

    Called by: ``recsys score --histories`` (``recsys.scoring.fold_in``), which scores the queries against the run's
    item table after the model's scorer prepares them.
    """

    def fold_in(self, histories: Histories) -> Tensor:
        """Query embeddings of the histories' users, as :meth:`encode_queries` would give them (before the scorer).

        Shapes:
            histories: B users -> [B, D]
        """
        raise NotImplementedError


class ScoresHistories:
    """The model scores items from a user's item history directly, without a query embedding (EASE, item-kNN).

    Called by: ``recsys score --histories`` (``recsys.scoring.fold_in``) for models that store no embedding tables.
    """

    def score_histories(self, histories: Histories, rows: Tensor, out: Tensor | None = None) -> Tensor:
        """Scores of every item for the histories ``rows``, written into ``out`` when given.

        Shapes:
            rows: [R] rows of ``histories`` -> [R, n_items]
        """
        raise NotImplementedError


class NestedLoss:
    """A loss over several prefix sizes of one set of embeddings (Matryoshka).

    Called by: ``RecModel.training_step``: the step's embeddings are computed once and ``nested`` gets a function
    that scores them at any prefix size.
    """

    def nested(self, scores_at: Callable[[int], tuple[Tensor, Tensor]], out_dim: int) -> Tensor:
        raise NotImplementedError

    def gradient_scale(self, out_dim: int) -> Tensor | None:
        """A per-coordinate factor ``RecModel`` applies to the embeddings' gradient (None: none)."""
        return None


#: the encoder capabilities a wrapper must keep (``NestedLoss`` is a loss capability).
CAPABILITIES: tuple[type, ...] = (ScoresAgainstTable, EncodesPositions, EpochAware, EmbedsNewItems,
                                  ExplicitConcepts, UsesGallery, FoldsIn, Transfers)


#: the serving capabilities of whole models (:meth:`recsys.recommender.Recommender.capability` answers for them).
#: ``FoldsIn`` is also an encoder capability, which wrappers keep (``Matryoshka(MF)`` folds in through its prefix).
SERVING_CAPABILITIES: tuple[type, ...] = (FoldsIn, ScoresHistories)


def capabilities_of(obj) -> tuple[type, ...]:
    """The declared encoder capabilities ``obj`` has, in :data:`CAPABILITIES` order."""
    return tuple(c for c in CAPABILITIES if isinstance(obj, c))
