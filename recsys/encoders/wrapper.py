"""The base of encoder wrappers: a TwoSidedEncoder around another TwoSidedEncoder that maps its output embeddings.

Factorization modules (Matryoshka prefixes, low-rank tables, binary and quantized codes, backward-compatible
bases) change what an embedding *is*, not how it is computed, so each one wraps any two-sided encoder (MF, a graph
encoder, a text encoder, a unified or SESA encoder) and stays a ``TwoSidedEncoder``: the model, the evaluator and batch
scoring see no difference. Wrapping the two-sided encoder, not one side's ``SideEncoder``, is what lets joint encoders
(LightGCN propagates users and items together) be wrapped at all; for MF, a ``TwoTower`` of ID tables, it is the
same as wrapping each side.

A wrapper keeps every declared capability (:mod:`recsys.capabilities`) of the encoder it wraps: constructing one
picks, for each capability the inner encoder has, the delegating mixin of :data:`DELEGATES`, so
``isinstance(Matryoshka(LightGCN()), ScoresAgainstTable)`` holds exactly when it holds for the LightGCN. A wrapper
whose mapping cannot honour a capability lists it in ``refuses`` and is refused at construction.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from torch import Tensor

from recsys.capabilities import (
    CAPABILITIES,
    EmbedsNewItems,
    EncodesPositions,
    EpochAware,
    ExplicitConcepts,
    FoldsIn,
    Histories,
    ScoresAgainstTable,
    StepOutput,
    Transfers,
    UsesGallery,
)
from recsys.data.batch import Batch
from recsys.encoders.base import TwoSidedEncoder

if TYPE_CHECKING:
    import pandas as pd


class EncoderWrapper(TwoSidedEncoder):
    """Delegates everything to ``encoder`` and passes both sides' embeddings through :meth:`transform`.

    Subclasses override :meth:`transform` (and :meth:`bind_wrapper` for data-dependent state, :meth:`step_state`
    for a per-step choice such as ordered dropout's rank, :meth:`wrapper_losses` for their own loss terms). The
    inner encoder's own ``forward`` is used for training batches, so its fast paths (one gather per step for
    graphs) are kept.

    Args:
        encoder: the wrapped two-sided encoder.

    Shapes:
        batch.users: [B]; batch.items: [B, C] -> StepOutput(query [B, out_dim], candidates [B, C, out_dim])
    """

    #: capabilities this wrapper's mapping cannot keep (construction fails when the inner encoder has one).
    refuses: tuple[type, ...] = ()

    def __new__(cls, encoder: TwoSidedEncoder | None = None, *args: Any, **kwargs: Any):
        inner = encoder if encoder is not None else kwargs.get("encoder")
        caps = tuple(c for c in CAPABILITIES if isinstance(inner, c) and not issubclass(cls, c))
        refused = [c.__name__ for c in caps if c in cls.refuses]
        if refused:
            raise ValueError(f"{cls.__name__} cannot wrap {type(inner).__name__}: its mapping cannot keep the "
                             f"wrapped encoder's {', '.join(refused)} capability")
        return super().__new__(_with_delegates(cls, caps))

    def __reduce_ex__(self, protocol):
        # The class with delegates is made at run time: pickle it as (declared class, capabilities) and rebuild.
        base, caps = type(self).__dict__.get("_declared", (type(self), ()))
        return _rebuild, (base, caps), self.__getstate__()

    def __init__(self, encoder: TwoSidedEncoder) -> None:
        super().__init__()
        self.encoder = encoder
        self.out_dim = encoder.out_dim
        self.history_len = encoder.history_len

    # The mapping subclasses define.
    def transform(self, x: Tensor, side: str, state: Any = None) -> Tensor:
        """Map inner embeddings of ``side`` (``"query"`` or ``"item"``) to this encoder's embeddings.

        Args:
            x: inner embeddings.
            side: ``"query"`` or ``"item"``.
            state: the training step's :meth:`step_state` (None outside training steps).

        Shapes:
            x: [..., encoder.out_dim] -> [..., out_dim]
        """
        return x

    def step_state(self) -> Any:
        """A choice made once per training step and applied to both sides (None: none)."""
        return None

    def wrapper_losses(self, batch: Batch, inner: StepOutput, state: Any) -> dict[str, Tensor]:
        """This wrapper's own extra loss terms, from the inner encoder's embeddings of the step (none here)."""
        return {}

    def bind_wrapper(self, data) -> None:
        """Allocate the wrapper's own data-dependent state, after the inner encoder is bound."""

    def served_dim(self) -> int:
        """This wrapper's output width once the inner encoder is bound (the inner width unless it maps it)."""
        return self.encoder.out_dim

    def wrapper_catalogue_state(self) -> Sequence[str]:
        """Keys of this wrapper's own ``state_dict`` entries that belong to the bound catalogue (rebuilt by
        :meth:`bind_wrapper` from the data, e.g. a per-item assignment), not to the learned model; none here.

        A wrapper around a :class:`~recsys.capabilities.Transfers` encoder declares them with the inner encoder's
        catalogue state, so ``recsys fit --transfer-from`` rebuilds them instead of loading the source's.
        """
        return ()

    def inner_rows(self, batch: Batch, inner: StepOutput) -> tuple[Tensor, Tensor]:
        """The inner embeddings of the batch's queries and candidates, whichever step produced ``inner``.

        A table step (``training_tables``, ``catalogue_step``) returns the whole item table: its rows are picked;
        per-position queries are replaced by the users' queries.

        Shapes:
            -> (query [B, encoder.out_dim], candidates [B, C, encoder.out_dim])
        """
        q = inner.query if inner.query.dim() == 2 and len(inner.query) == len(batch) \
            else self.encoder.encode_queries(batch)
        c = inner.candidates if inner.candidates.dim() == 3 else inner.candidates[batch.items]
        return q, c

    # The training step: the inner step's embeddings mapped, its terms kept, the wrapper's own added.
    def wrap_step(self, batch: Batch, inner: StepOutput, state: Any = None) -> StepOutput:
        """Map an inner :class:`StepOutput` (candidates per row or the whole table) through this wrapper.

        ``state`` is the step's :meth:`step_state`, drawn before the inner step ran (so random draws keep their
        order: the wrapper's first, then the inner encoder's).
        """
        losses = dict(inner.losses)
        for name, term in self.wrapper_losses(batch, inner, state).items():
            losses[_unique(losses, name)] = term
        return StepOutput(self.transform(inner.query, "query", state), self.transform(inner.candidates, "item", state),
                          inner.penalty, losses)

    def _state(self) -> Any:
        return self.step_state() if self.training else None

    def forward(self, batch: Batch) -> StepOutput:
        state = self._state()
        return self.wrap_step(batch, self.encoder(batch), state)

    def catalogue_step(self, batch: Batch, per_position: bool = False) -> StepOutput:
        state = self._state()
        return self.wrap_step(batch, self.encoder.catalogue_step(batch, per_position), state)

    # TwoSidedEncoder interface, delegated.
    def bind(self, data) -> None:
        self.encoder.bind(data)
        # Some widths come from the data (SESA: one dimension per concept), known only now.
        self.out_dim, self.history_len = self.served_dim(), self.encoder.history_len
        self.bind_wrapper(data)

    @property
    def n_items(self) -> int:
        return self.encoder.n_items

    def encode_queries(self, batch: Batch) -> Tensor:
        return self.transform(self.encoder.encode_queries(batch), "query")

    def encode_items(self, items: Tensor) -> Tensor:
        return self.transform(self.encoder.encode_items(items), "item")

    def item_table(self, chunk_size: int = 65536) -> Tensor:
        return self.transform(self.encoder.item_table(chunk_size), "item")

    def regularization(self, batch: Batch) -> Tensor:
        return self.encoder.regularization(batch)

    def batch_losses(self, batch: Batch) -> dict[str, Tensor]:
        return self.encoder.batch_losses(batch)

    # Joint propagation: the inner encoder holds the cache.
    def propagate(self):
        return self.encoder.propagate()

    def precompute(self) -> None:
        self.encoder.precompute()

    def clear_cache(self) -> None:
        self.encoder.clear_cache()

    def inner_item_table(self) -> Tensor:
        """The wrapped encoder's whole item table, outside any step (its propagation cache cleared after).

        Shapes:
            -> [n_items, inner out_dim]
        """
        self.encoder.precompute()
        try:
            return self.encoder.item_table()
        finally:
            self.encoder.clear_cache()

    def bytes_per_item(self) -> float:
        """Bytes per served item: the inner encoder's, scaled to this wrapper's width."""
        return self.encoder.bytes_per_item() * self.out_dim / self.encoder.out_dim


def _unique(taken: dict, name: str) -> str:
    # Nested wrappers of one kind (Binary(Binary(MF))) each add their term under its own name.
    key, i = name, 2
    while key in taken:
        key, i = f"{name}{i}", i + 1
    return key


# Delegating mixins: how a wrapper keeps each capability of the encoder it wraps.
class _TableDelegate(ScoresAgainstTable):
    def training_tables(self, batch: Batch) -> StepOutput:
        state = self._state()
        return self.wrap_step(batch, self.encoder.training_tables(batch), state)


class _PositionsDelegate(EncodesPositions):
    def encode_query_positions(self, batch: Batch) -> Tensor:
        # Outside a step (no state): catalogue_step, which the model calls, draws the step's state itself.
        return self.transform(self.encoder.encode_query_positions(batch), "query")


class _EpochDelegate(EpochAware):
    def on_train_epoch_start(self, epoch: int) -> None:
        self.encoder.on_train_epoch_start(epoch)


class _NewItemsDelegate(EmbedsNewItems):
    def embed_new_items(self, table: pd.DataFrame) -> Tensor:
        return self.transform(self.encoder.embed_new_items(table), "item")


class _ConceptsDelegate(ExplicitConcepts):
    def concept_names(self) -> Sequence[str]:
        # A wrapper that keeps concepts keeps dimensions in place (a prefix at most): the names follow them.
        return list(self.encoder.concept_names())[:self.out_dim]


class _GalleryDelegate(UsesGallery):
    def gallery_run(self) -> str | None:
        return self.encoder.gallery_run()

    def set_gallery(self, items: Tensor) -> None:
        self.encoder.set_gallery(items)


class _FoldInDelegate(FoldsIn):
    def fold_in(self, histories: Histories) -> Tensor:
        # The inner encoder's query for the history, through this wrapper's query transform (a prefix, a
        # projection): the same path a training user's query takes.
        return self.transform(self.encoder.fold_in(histories), "query")


class _TransfersDelegate(Transfers):
    def catalogue_state(self) -> Sequence[str]:
        # The inner encoder's catalogue-bound keys, under this wrapper's prefix for it, and the wrapper's own.
        return [f"encoder.{k}" for k in self.encoder.catalogue_state()] + list(self.wrapper_catalogue_state())


#: capability -> the mixin that delegates it to the wrapped encoder.
DELEGATES: dict[type, type] = {ScoresAgainstTable: _TableDelegate, EncodesPositions: _PositionsDelegate,
                               EpochAware: _EpochDelegate, EmbedsNewItems: _NewItemsDelegate,
                               ExplicitConcepts: _ConceptsDelegate, UsesGallery: _GalleryDelegate,
                               FoldsIn: _FoldInDelegate, Transfers: _TransfersDelegate}
assert set(DELEGATES) == set(CAPABILITIES), "every capability needs a delegate"

_CLASSES: dict[tuple[type, tuple[type, ...]], type] = {}


def _with_delegates(cls: type, caps: tuple[type, ...]) -> type:
    """``cls`` with the delegating mixins of ``caps`` in front (one class per combination, cached)."""
    if not caps:
        return cls
    key = (cls, caps)
    if key not in _CLASSES:
        mixins = tuple(DELEGATES[c] for c in caps)
        # Same name and module as ``cls``: error messages, reprs and configs show the wrapper the user wrote.
        _CLASSES[key] = type(cls.__name__, (*mixins, cls), {"__module__": cls.__module__,
                                                            "__qualname__": cls.__qualname__,
                                                            "_declared": (cls, caps)})
    return _CLASSES[key]


def _rebuild(cls: type, caps: tuple[type, ...]):
    """An empty instance of ``cls`` with the delegates of ``caps`` (unpickling; the state is set afterwards)."""
    return object.__new__(_with_delegates(cls, caps))
