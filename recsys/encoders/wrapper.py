"""The base of encoder wrappers: a RecEncoder around another RecEncoder that maps its output embeddings.

Factorization modules (Matryoshka prefixes, low-rank tables, binary and quantized codes, backward-compatible
bases) change what an embedding *is*, not how it is computed, so each one wraps any two-sided encoder (MF, a graph
encoder, a text encoder, a unified or SESA encoder) and stays a ``RecEncoder``: the model, the evaluator and batch
scoring see no difference. Wrapping the two-sided encoder, not one side's ``Encoder``, is what lets joint encoders
(LightGCN propagates users and items together) be wrapped at all; for MF, a ``TwoTower`` of ID tables, it is the
same as wrapping each side.
"""

from __future__ import annotations

from torch import Tensor

from recsys.data.batch import Batch
from recsys.encoders.base import RecEncoder


class EncoderWrapper(RecEncoder):
    """Delegates everything to ``encoder`` and passes both sides' embeddings through :meth:`transform`.

    Subclasses override :meth:`transform` (and :meth:`bind_wrapper` for data-dependent state). The inner encoder's
    own ``forward`` is used for training batches, so its fast paths (one gather per step for graphs) are kept.

    Args:
        encoder: the wrapped two-sided encoder.

    Shapes:
        batch.users: [B]; batch.items: [B, C] -> (query [B, out_dim], items [B, C, out_dim])
    """

    def __init__(self, encoder: RecEncoder) -> None:
        super().__init__()
        self.encoder = encoder
        self.out_dim = encoder.out_dim
        self.history_len = encoder.history_len
        #: the last training batch's inner embeddings, for auxiliary losses of the same step (cleared in eval).
        self._batch_inner: tuple[Tensor, Tensor] | None = None

    # The mapping subclasses define.
    def transform(self, x: Tensor, side: str) -> Tensor:
        """Map inner embeddings of ``side`` (``"query"`` or ``"item"``) to this encoder's embeddings.

        Shapes:
            x: [..., encoder.out_dim] -> [..., out_dim]
        """
        return x

    def bind_wrapper(self, data) -> None:
        """Allocate the wrapper's own data-dependent state, after the inner encoder is bound."""

    # RecEncoder interface, delegated.
    def bind(self, data) -> None:
        self.encoder.bind(data)
        self.bind_wrapper(data)

    @property
    def n_items(self) -> int:
        return self.encoder.n_items

    def encode_queries(self, batch: Batch) -> Tensor:
        return self.transform(self.encoder.encode_queries(batch), "query")

    def encode_items(self, items: Tensor) -> Tensor:
        return self.transform(self.encoder.encode_items(items), "item")

    def forward(self, batch: Batch) -> tuple[Tensor, Tensor]:
        query, cands = self.encoder(batch)
        self._batch_inner = (query, cands) if self.training else None
        return self.transform(query, "query"), self.transform(cands, "item")

    def item_table(self, chunk_size: int = 65536) -> Tensor:
        return self.transform(self.encoder.item_table(chunk_size), "item")

    def regularization(self, batch: Batch) -> Tensor:
        return self.encoder.regularization(batch)

    def inner_embeddings(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """The inner encoder's (query, candidates) of this training batch, reusing the forward pass's output.

        Shapes:
            -> (query [B, encoder.out_dim], items [B, C, encoder.out_dim])
        """
        if self._batch_inner is not None and self._batch_inner[1].shape[:2] == batch.items.shape:
            return self._batch_inner
        # The model did not call forward (full-catalogue negatives): embed the batch's candidates directly.
        return self.encoder.encode_queries(batch), self.encoder.encode_items(batch.items)

    def auxiliary_loss(self, batch: Batch) -> Tensor | None:
        fn = getattr(self.encoder, "auxiliary_loss", None)
        return fn(batch) if callable(fn) else None

    def on_train_epoch_start(self, epoch: int) -> None:
        hook = getattr(self.encoder, "on_train_epoch_start", None)
        if callable(hook):
            hook(epoch)

    def encode_query_positions(self, batch: Batch) -> Tensor:
        return self.transform(self.encoder.encode_query_positions(batch), "query")

    # Joint propagation: the inner encoder holds the cache.
    def propagate(self):
        return self.encoder.propagate()

    def precompute(self) -> None:
        self.encoder.precompute()

    def clear_cache(self) -> None:
        self.encoder.clear_cache()

    def train(self, mode: bool = True):
        if not mode:
            self._batch_inner = None
        return super().train(mode)

    def bytes_per_item(self) -> float:
        """Bytes to store one item's served representation (float32 unless a wrapper compresses it)."""
        inner = getattr(self.encoder, "bytes_per_item", None)
        return inner() * self.out_dim / self.encoder.out_dim if callable(inner) else 4.0 * self.out_dim


def combine_aux(*terms: Tensor | None) -> Tensor | None:
    """Sum the auxiliary loss terms that are present (None when none is)."""
    present = [t for t in terms if t is not None]
    return sum(present[1:], present[0]) if present else None
