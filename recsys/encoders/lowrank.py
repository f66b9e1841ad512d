"""Low-rank factorized embeddings with ordered dropout: ``E = A·B``, truncatable to any rank after training.

The wrapped encoder produces the rank-``r`` factor ``A`` (for MF: an ID table of width ``r``); a shared basis ``B``
``[r, dim]`` maps it to the served size. During training, ordered dropout keeps only the first ``k`` of the ``r``
components, ``k`` drawn uniformly per step, so the leading components carry the most information and
``A[:, :k] · B[:k]`` is a good model for every ``k``: one training run, any rank at serving time.

Maestro's hierarchical group lasso (``group_lasso > 0``) also *discovers* the rank: it penalises the nested tails
``{r' ≥ b}`` of the components, so trailing components shrink first, and at each epoch boundary the components whose
tail contributes less than ``prune_threshold`` of the item table are cut off for good. The rank found is kept in the
``active_rank`` buffer (saved with the model) and logged.

Wrapping a graph encoder factorizes its ego table: LightGCN's propagation is linear, so propagating ``A`` and then
multiplying by ``B`` equals propagating the low-rank table ``A·B``.

Maestro: Horváth, Laskaridis, Rajput & Wang, "Maestro: Uncovering Low-Rank Structures via Trainable Decomposition",
ICML 2024 (ordered dropout from Horváth et al., "FjORD", NeurIPS 2021).
"""

from __future__ import annotations

import logging
import math

import torch
from torch import Tensor, nn

from recsys.capabilities import EpochAware, ExplicitConcepts, StepOutput
from recsys.data.batch import Batch
from recsys.encoders.base import TwoSidedEncoder
from recsys.encoders.choices import check_size
from recsys.encoders.wrapper import EncoderWrapper
from recsys.errors import UsageError

log = logging.getLogger(__name__)


def nested_group_norms(parts: list[Tensor], scales: list[float] | None = None) -> Tensor:
    """Norms of the nested tail groups ``g_b = {components b, b+1, …, r-1}`` of factors sharing a rank axis.

    ``‖g_b‖² = Σ_p scale_p · ‖P_p[..., b:]‖²``: every factor's columns (or, for a basis, rows moved last) from ``b``
    on. Computed as a reversed cumulative sum of per-component squared norms, so all ``r`` groups cost one pass.

    Args:
        parts: factors whose last axis is the rank axis.
        scales: one weight per factor (1 when None), e.g. ``1/rows`` to average a batch's rows.

    Shapes:
        parts: [..., r] each -> [r] (entry ``b`` is ``‖g_b‖``)
    """
    scales = scales or [1.0] * len(parts)
    per_comp = sum(s * p.pow(2).reshape(-1, p.shape[-1]).sum(0) for p, s in zip(parts, scales))
    tails = per_comp.flip(0).cumsum(0).flip(0)
    # The epsilon keeps the gradient of the norm finite once a tail has been driven to exactly 0.
    return (tails + 1e-12).sqrt()


class LowRank(EpochAware, EncoderWrapper):
    """A rank-``r`` factor from the wrapped encoder times a learned basis ``B [r, dim]``.

    Args:
        encoder: produces the factor ``A``; its ``out_dim`` is the maximum rank ``r``.
        dim: the served embedding size (``B`` is ``[r, dim]``).
        min_rank: the smallest rank ordered dropout draws (1 by default).
        p_full: probability of a training step at full rank (no truncation).
        rank: the rank served after training (None: full ``r``); change it with :meth:`set_rank`.
        group_lasso: λ of Maestro's hierarchical group lasso ``λ Σ_b ‖g_b‖`` over the nested tails
            ``g_b = (A[:, b:], B[b:])`` (the step's rows of ``A``, averaged per row, and the basis rows); 0 turns it
            off (plain ordered dropout, the default).
        prune_threshold: at each epoch start after the first, the rank is cut to the smallest ``b`` whose tail
            ``A[:, b:]·B[b:]`` has a Frobenius norm below ``prune_threshold`` times that of the whole item table
            ``A·B`` (relative, so the rescaling ``A·c, B/c`` changes nothing); only with ``group_lasso > 0``.

    Shapes:
        batch.users: [B]; batch.items: [B, C] -> (query [B, dim], items [B, C, dim])
    """

    #: the basis mixes coordinates, so named concept dimensions do not survive it.
    refuses = (ExplicitConcepts,)

    def __init__(self, encoder: TwoSidedEncoder, dim: int = 64, min_rank: int = 1, p_full: float = 0.25,
                 rank: int | None = None, group_lasso: float = 0.0, prune_threshold: float = 0.01) -> None:
        super().__init__(encoder)
        check_size(type(self).__name__, "dim", dim)
        self.max_rank = encoder.out_dim
        if not 1 <= min_rank <= self.max_rank:
            raise UsageError(f"min_rank must be in [1, {self.max_rank}], got {min_rank}")
        if group_lasso < 0:
            raise UsageError(f"LowRank group_lasso must be >= 0, got {group_lasso}")
        if not 0 <= prune_threshold < 1:
            raise UsageError(f"LowRank prune_threshold must be in [0, 1), got {prune_threshold}")
        self.out_dim, self.min_rank, self.p_full = dim, min_rank, p_full
        self.group_lasso, self.prune_threshold = group_lasso, prune_threshold
        self.basis = nn.Parameter(torch.randn(self.max_rank, dim) / math.sqrt(self.max_rank))
        # The rank the group lasso has kept so far (the full rank without it); a buffer, so the fitted model stores
        # the discovered rank in its state_dict and a reloaded model serves at that rank.
        self.register_buffer("active_rank", torch.tensor(self.max_rank))
        self.set_rank(rank)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # Runs saved before the group lasso existed have no active_rank: nothing was pruned, so it is the full rank.
        key = prefix + "active_rank"
        if key not in state_dict and prefix + "basis" in state_dict:
            state_dict[key] = torch.tensor(state_dict[prefix + "basis"].shape[0])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def set_rank(self, rank: int | None) -> None:
        """Serve the first ``rank`` components (None: all kept ones); no retraining."""
        if rank is not None and not 1 <= rank <= self.max_rank:
            raise ValueError(f"rank must be in [1, {self.max_rank}], got {rank}")
        self.rank = rank

    def discovered_rank(self) -> int:
        """The components kept by group-lasso pruning (``r`` when no pruning has happened)."""
        return int(self.active_rank)

    def _served_rank(self) -> int:
        return min(self.rank or self.max_rank, self.discovered_rank())

    def served_dim(self) -> int:
        return self.basis.shape[1]

    def serving_extras(self, tables_of) -> dict[str, Tensor]:
        """The factor tables ``A`` (before the basis) and the basis ``B``: ``--index lowrank:rank=k`` serves
        ``A[:, :k] · B[:k]`` without retraining. Pruned components are left out, so ``k`` cannot exceed the
        discovered rank."""
        queries, items = tables_of(self.encoder)
        k = self.discovered_rank()
        return {"query_factors": queries[:, :k], "item_factors": items[:, :k], "basis": self.basis.detach()[:k]}

    def step_state(self) -> int | None:
        """Ordered dropout: the rank of this training step (None: every kept component), one draw per step."""
        # The same rank for queries and candidates, so the step trains one truncated model.
        top = self.discovered_rank()
        if float(torch.rand(())) >= self.p_full:
            return int(torch.randint(min(self.min_rank, top), top + 1, ()))
        return None

    def transform(self, x: Tensor, side: str, state: int | None = None) -> Tensor:
        k = min(state or self._served_rank(), self.discovered_rank())
        return x[..., :k] @ self.basis[:k]

    def wrapper_losses(self, batch: Batch, inner: StepOutput, state=None) -> dict[str, Tensor]:
        """Maestro's hierarchical group lasso ``λ Σ_b ‖g_b‖`` over the kept components (none when λ = 0)."""
        if not self.group_lasso:
            return {}
        k = self.discovered_rank()
        query, cands = self.inner_rows(batch, inner)
        q, c = query[..., :k], cands[..., :k].reshape(-1, k)
        # Rows are averaged (a batch's size must not set the penalty's strength); the basis counts whole, its rows
        # moved onto the last axis so that every factor's rank axis is last.
        norms = nested_group_norms([q, c, self.basis[:k].T], [1.0 / len(q), 1.0 / len(c), 1.0])
        return {"group_lasso": self.group_lasso * norms.sum()}

    @torch.no_grad()
    def tail_fractions(self) -> Tensor:
        """``‖A[:, b:]·B[b:]‖_F / ‖A·B‖_F`` of the item table for every ``b`` (the kept components only).

        Shapes:
            -> [active_rank] (entry 0 is 1)
        """
        k = self.discovered_rank()
        self.encoder.precompute()
        try:
            a = self.encoder.item_table()[:, :k].float()
        finally:
            self.encoder.clear_cache()
        b = self.basis[:k].float()
        # ‖A_t B_t‖² = tr(A_tᵀA_t · B_t B_tᵀ): [k, k] Gram matrices instead of the [N, dim] tail tables.
        ga, gb = a.T @ a, b @ b.T
        tails = torch.stack([(ga[t:, t:] * gb[t:, t:]).sum() for t in range(k)]).clamp_min(0).sqrt()
        return tails / tails[0].clamp_min(1e-12)

    @torch.no_grad()
    def prune(self) -> int:
        """Cut the rank to the first component whose tail is under ``prune_threshold``; returns the kept rank."""
        old = self.discovered_rank()
        frac = self.tail_fractions()
        below = torch.nonzero(frac < self.prune_threshold).flatten()
        new = max(1, int(below[0])) if len(below) else old
        if new < old:
            # Only the buffer changes: every use of A and B (steps, tables, serving extras) truncates to it.
            self.active_rank.fill_(new)
            log.info("LowRank group lasso: rank %d -> %d (tail fraction %.4f < %.4f)", old, new,
                     float(frac[new]), self.prune_threshold)
        return new

    def on_train_epoch_start(self, epoch: int) -> None:
        if isinstance(self.encoder, EpochAware):
            self.encoder.on_train_epoch_start(epoch)
        # Epoch e starts right after epoch e-1 ended: pruning here is pruning at every epoch end but the last.
        if epoch > 0 and self.group_lasso and self.prune_threshold:
            self.prune()

    def parameter_count(self, rank: int | None = None, n_rows: int | None = None) -> int:
        """Parameters of the truncated model: ``n_rows · k`` factor entries plus ``k · dim`` basis entries.

        ``n_rows`` is the number of factor rows (users + items for MF and LightGCN; the caller knows it).
        """
        k = rank or self._served_rank()
        return (n_rows or 0) * k + k * self.out_dim

    def bytes_per_item(self) -> float:
        """float32 bytes per stored item factor at the served rank (the shared basis is not per item)."""
        return 4.0 * self._served_rank()
