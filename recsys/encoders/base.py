"""Encoder interfaces: side encoders (rows of one side → embeddings) and two-sided encoders (queries and items)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from recsys.capabilities import StepOutput
from recsys.data.batch import Batch


class SideEncoder(nn.Module):
    """Maps rows of one side (users or items) to embeddings.

    Data-dependent sizes (how many rows, the training graph, item text) are never configured: ``bind`` receives
    the prepared data and allocates what depends on it, as Lightning's ``configure_model`` does for models.
    Wrappers (hashing, low-rank, Matryoshka, quantization) wrap a SideEncoder and are still a SideEncoder.

    Shapes:
        rows: [...] int64 -> [..., out_dim]
    """

    out_dim: int

    def bind(self, data, side: str) -> None:
        """Allocate data-dependent parameters. ``side`` is ``"user"`` or ``"item"``."""

    def forward(self, rows: Tensor) -> Tensor:
        raise NotImplementedError

    def regularization(self, rows: Tensor) -> Tensor:
        """Squared L2 norm of the parameters touched by ``rows``, summed (0 when there are none)."""
        return torch.zeros((), device=rows.device)


class TwoSidedEncoder(nn.Module):
    """Embeds queries (users, with their history when needed) and items into one space.

    A training step calls one of two methods, each returning a :class:`~recsys.capabilities.StepOutput` (the
    embeddings plus the step's penalty and extra loss terms): :meth:`forward` embeds the batch's candidates,
    :meth:`catalogue_step` embeds the queries against the whole item table (full-catalogue softmax). Encoders that
    compute the whole item table at every step anyway declare :class:`~recsys.capabilities.ScoresAgainstTable`.
    Every other optional hook is a capability declared in :mod:`recsys.capabilities`.

    Encoders that propagate both sides jointly (graphs) override ``propagate`` so that evaluation computes the
    tables once per pass (see :meth:`precompute`), not once per batch.

    Shapes:
        batch.users: [B]; batch.items: [B, C] -> StepOutput(query [B, D], candidates [B, C, D])
    """

    out_dim: int
    #: the history length to put in query batches; 0 when the encoder does not read histories.
    history_len: int = 0

    def __init__(self) -> None:
        super().__init__()
        self._tables: tuple[Tensor, Tensor] | None = None

    def bind(self, data) -> None:
        """Allocate data-dependent parameters from the prepared data (sizes, graph, side tables)."""

    def encode_queries(self, batch: Batch) -> Tensor:
        raise NotImplementedError

    def encode_items(self, items: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, batch: Batch) -> StepOutput:
        """The batch's query and candidate embeddings, with the step's penalty and extra loss terms.

        Shapes:
            batch.users: [B]; batch.items: [B, C] -> StepOutput(query [B, D], candidates [B, C, D])
        """
        query, cands = self.encode_queries(batch), self.encode_items(batch.items)
        return StepOutput(query, cands, self.regularization(batch), self.batch_losses(batch))

    def catalogue_step(self, batch: Batch, per_position: bool = False) -> StepOutput:
        """Queries against the whole item table (full-catalogue negatives), with the step's extra terms.

        Args:
            batch: the training batch.
            per_position: embed the query after every history position (the encoder must declare
                :class:`~recsys.capabilities.EncodesPositions`).

        Shapes:
            -> StepOutput(query [B, D] (or [B, L, D] per position), candidates [N, D])
        """
        query = self.encode_query_positions(batch) if per_position else self.encode_queries(batch)
        return StepOutput(query, self.item_table(), self.regularization(batch), self.batch_losses(batch))

    def regularization(self, batch: Batch) -> Tensor:
        """An L2 penalty on the ego parameters a batch touches (the model multiplies it by its weight)."""
        return torch.zeros((), device=batch.users.device)

    def batch_losses(self, batch: Batch) -> dict[str, Tensor]:
        """Extra, already weighted loss terms that depend on the batch alone (e.g. Recformer's MLM); none here."""
        return {}

    def bytes_per_item(self) -> float:
        """Bytes to store one item's served representation (float32 unless a wrapper compresses it)."""
        return 4.0 * self.out_dim

    def serving_extras(self, tables_of: Callable[[TwoSidedEncoder], tuple[Tensor, Tensor]]) -> dict[str, Tensor]:
        """Tables an item index needs beyond the served ones (``recsys.scoring.index.ServingTables``); none here.

        Called by ``recsys fit`` when it stores the model, so that ``--index lowrank`` / ``--index quantized`` can
        serve from the run directory alone. Only the outermost encoder answers: an index serves what it stores.

        Args:
            tables_of: ``tables_of(encoder) -> (queries [U, D], items [N, D])``, any encoder's raw tables (before
                the scorer) on the run's data, computed by the serving layer.
        """
        return {}

    def item_table(self, chunk_size: int = 65536) -> Tensor:
        """Every item's embedding.

        Shapes:
            -> [n_items, D]
        """
        n = self.n_items
        dev = next((p.device for p in self.parameters()), torch.device("cpu"))
        return torch.cat([self.encode_items(torch.arange(s, min(s + chunk_size, n), device=dev))
                          for s in range(0, n, chunk_size)])

    @property
    def n_items(self) -> int:
        raise NotImplementedError

    # Joint propagation and its evaluation-time cache.
    def propagate(self) -> tuple[Tensor, Tensor] | None:
        """Full user and item tables for encoders that compute both sides together; None otherwise."""
        return None

    @torch.no_grad()
    def precompute(self) -> None:
        """Compute joint tables once for an evaluation or scoring pass (no-op for per-row encoders)."""
        self._tables = self.propagate()

    def clear_cache(self) -> None:
        self._tables = None

    def train(self, mode: bool = True):
        if mode:
            self._tables = None
        return super().train(mode)


class TwoTower(TwoSidedEncoder):
    """A query tower and an item tower that embed rows independently (MF when both are ID tables).

    Args:
        user: the query-side encoder.
        item: the item-side encoder.
    """

    def __init__(self, user: SideEncoder, item: SideEncoder) -> None:
        super().__init__()
        if user.out_dim != item.out_dim:
            raise ValueError(f"tower sizes differ: user {user.out_dim}, item {item.out_dim}")
        self.user, self.item = user, item
        self.out_dim = user.out_dim
        self._n_items = 0

    def bind(self, data) -> None:
        self.user.bind(data, "user")
        self.item.bind(data, "item")
        self._n_items = data.n_items

    @property
    def n_items(self) -> int:
        return self._n_items

    def encode_queries(self, batch: Batch) -> Tensor:
        return self.user(batch.users)

    def encode_items(self, items: Tensor) -> Tensor:
        return self.item(items)

    def regularization(self, batch: Batch) -> Tensor:
        return self.user.regularization(batch.users) + self.item.regularization(batch.items)
