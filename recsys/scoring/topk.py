"""Chunked full-ranking top-k: GEMM (or any score function) + seen-item masking + ``torch.topk``.

Buffers are allocated once per call and reused for every chunk; the chunk size comes from a memory budget.
This one engine serves validation, ``recsys evaluate``, ``recsys score`` and the benchmarks.

Precision: scores are float32 by default. With ``dtype=torch.bfloat16`` (``recsys score --precision bf16``, the
``auto`` choice on CUDA devices with bf16 support) the GEMM and the top-k pass run in bf16 — half the memory
traffic, tensor-core GEMMs — over a shortlist of ``2k`` candidates, which are then re-scored exactly in float32 and
re-ranked, so the written scores are exact and the order within a list is the float32 order. On CPUs without bf16
units (no AMX / AVX512-BF16) bf16 is slower than float32, so ``auto`` keeps float32 there.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    import scipy.sparse as sp

ScoreFn = Callable[[Tensor, Tensor | None], Tensor]


class ScoreFunction(ABC):
    """A typed score function for :func:`iter_topk`: ``fn(rows, out) -> [B, N]``, as a plain ``ScoreFn`` is.

    Subclasses declare what more the engine may use by their base class, not by attributes stuck on a closure:
    :class:`RescoringScoreFunction` (an exact float32 re-score of candidates) and :class:`CandidateScoreFunction`
    (a per-row shortlist, ranked directly without a ``[B, N]`` pass).

    Shapes:
        rows: [B] user rows; out: [B, N] reusable buffer or None -> [B, N]
    """

    @abstractmethod
    def __call__(self, rows: Tensor, out: Tensor | None = None) -> Tensor:
        """Scores of every item for ``rows``, written into ``out`` when given."""


class RescoringScoreFunction(ScoreFunction):
    """A score function that can re-score candidate items exactly in float32 (for the bf16 shortlist)."""

    @abstractmethod
    def exact(self, rows: Tensor, cand: Tensor) -> Tensor:
        """Float32 scores of each row's candidates (entries < 0 may be scored as item 0; the caller masks them).

        Shapes:
            rows: [B]; cand: [B, C] -> [B, C] float32
        """


class CandidateScoreFunction(ScoreFunction):
    """A score function that yields each row's candidates and their scores: cascades and search indexes.

    :func:`iter_topk` calls :meth:`candidates` with its own ``k`` and exclusions and ranks the candidates directly.
    The dense form (``__call__``) is the candidates for ``n_items`` with the bound :attr:`exclude` masked: exact
    scores on the candidates, ``-inf`` everywhere else.

    Args:
        n_items: catalogue size (the width of the dense form).
        exclude: CSR of items the dense form masks (``iter_topk`` passes its own to :meth:`candidates`).
    """

    def __init__(self, n_items: int, exclude: sp.csr_matrix | RowSets | None = None) -> None:
        self.n_items, self.exclude = n_items, exclude

    @abstractmethod
    def candidates(self, rows: Tensor, k: int, exclude: sp.csr_matrix | RowSets | None
                   ) -> tuple[Tensor, Tensor]:
        """Up to ``k`` candidates per row (a cascade returns its whole shortlist), none of them in ``exclude[rows]``.

        Shapes:
            rows: [B] -> (items [B, m] int64, -1 = none; scores [B, m], -inf for none)
        """

    def __call__(self, rows: Tensor, out: Tensor | None = None) -> Tensor:
        cand, scores = self.candidates(rows, self.n_items, self.exclude)
        result = out if out is not None else scores.new_empty((len(rows), self.n_items))
        result.fill_(float("-inf"))
        ok = cand >= 0
        r = torch.arange(len(cand), device=cand.device)[:, None].expand_as(cand)
        result[r[ok].to(result.device), cand[ok].to(result.device)] = scores[ok].to(result)
        return result


def chunk_size_for(n_items: int, memory_budget: int = 256 << 20, max_chunk: int = 8192, itemsize: int = 4) -> int:
    """Users per chunk so that one score block of ``itemsize``-byte scores fits in ``memory_budget`` bytes."""
    return int(max(1, min(max_chunk, memory_budget // max(1, itemsize * n_items))))


def scoring_dtype(precision: str = "auto", device: str | torch.device = "cpu") -> torch.dtype:
    """The score dtype for a ``--precision`` option: ``32``, ``bf16``, or ``auto`` (bf16 on CUDA with bf16 support).

    Args:
        precision: ``auto``, ``32`` / ``fp32`` / ``float32``, or ``bf16`` / ``bfloat16``.
        device: where the scores are computed (``auto`` picks float32 on CPU).
    """
    p = str(precision).lower()
    if p in ("32", "fp32", "float32", "32-true"):
        return torch.float32
    if p in ("bf16", "bfloat16", "bf16-true", "bf16-mixed"):
        return torch.bfloat16
    if p != "auto":
        raise ValueError(f"precision must be auto, 32 or bf16, got {precision!r}")
    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


class RowSets(NamedTuple):
    """A minimal CSR (``indptr``, ``indices``) of item sets per user; scipy's csr_matrix also fits this shape."""

    indptr: np.ndarray
    indices: np.ndarray

    @classmethod
    def from_pairs(cls, users: np.ndarray, items: np.ndarray, n_users: int) -> RowSets:
        order = np.lexsort((items, users))
        indptr = np.concatenate([[0], np.cumsum(np.bincount(users, minlength=n_users))])
        return cls(indptr, np.asarray(items)[order])


def mask_rows_(scores: Tensor, exclude: sp.csr_matrix | RowSets, rows: np.ndarray) -> None:
    """Set ``scores[j, i] = -inf`` for every item ``i`` in ``exclude[rows[j]]``, in place.

    Shapes:
        scores: [B, N]; rows: [B]
    """
    indptr = exclude.indptr
    starts, ends = indptr[rows], indptr[rows + 1]
    lens = ends - starts
    total = int(lens.sum())
    if total == 0:
        return
    r = np.repeat(np.arange(len(rows)), lens)
    # Gather the column indices of all selected CSR rows without a Python loop.
    offs = np.arange(total) - np.repeat(np.cumsum(lens) - lens, lens) + np.repeat(starts, lens)
    c = exclude.indices[offs]
    dev = scores.device
    scores[torch.from_numpy(r).to(dev), torch.from_numpy(c.astype(np.int64)).to(dev)] = float("-inf")


def iter_topk(score_fn: ScoreFn, users: np.ndarray, n_items: int, k: int, exclude: sp.csr_matrix | None = None,
              chunk_size: int | None = None, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
              ) -> Iterator[tuple[np.ndarray, Tensor, Tensor]]:
    """Yield ``(user_rows, top_items, top_scores)`` per chunk; excluded or missing slots are item -1.

    Args:
        score_fn: ``score_fn(user_rows, out)`` returns scores ``[B, n_items]``, written into ``out`` when given:
            a plain function or a :class:`ScoreFunction`. A :class:`CandidateScoreFunction` (cascades, search
            indexes) is asked for its candidates with this call's ``k`` and ``exclude`` instead, and they are
            ranked directly (no [B, n_items] pass).
        users: the user rows to rank for.
        n_items: catalogue size.
        k: list length.
        exclude: user × item CSR of items never to recommend (e.g. training items); None keeps everything.
        chunk_size: users per chunk; derived from a 256 MiB budget when None.
        device: where the score buffer lives.
        dtype: the score buffer's dtype (float32 when None). A lower precision (bf16) shortlists ``2k`` items per
            user and, when ``score_fn`` is a :class:`RescoringScoreFunction` (as :func:`gemm_score_fn`'s is),
            re-scores them in float32 and keeps the best ``k``; top scores are always returned as float32.

    Shapes:
        top_items, top_scores: [B, k] per chunk
    """
    users = np.asarray(users, dtype=np.int64)
    dtype = dtype or torch.float32
    chunk = chunk_size or chunk_size_for(n_items, itemsize=torch.empty((), dtype=dtype).element_size())
    kk = min(k, n_items)
    exact = score_fn.exact if isinstance(score_fn, RescoringScoreFunction) and dtype != torch.float32 else None
    # Low-precision scores tie and round; a 2k shortlist re-scored in float32 recovers the exact top k.
    kshort = min(n_items, 2 * kk) if exact is not None else kk
    shortlisted = isinstance(score_fn, CandidateScoreFunction)
    buf = None if shortlisted else torch.empty((min(chunk, max(1, len(users))), n_items), device=device,
                                               dtype=dtype)
    for s in range(0, len(users), chunk):
        rows = users[s:s + chunk]
        rows_t = torch.from_numpy(rows).to(device)
        if shortlisted:
            cand, cand_scores = score_fn.candidates(rows_t, kk, exclude)
            vals, pos = torch.topk(cand_scores.float(), min(kk, cand.shape[1]), dim=1, sorted=True)
            idx = torch.gather(cand, 1, pos)
            yield (rows, *_pad(idx, vals, k))
            continue
        scores = score_fn(rows_t, buf[:len(rows)])
        if exclude is not None:
            mask_rows_(scores, exclude, rows)
        vals, idx = torch.topk(scores, kshort, dim=1, sorted=True)
        if exact is not None:
            fine = exact(rows_t, idx).masked_fill_(torch.isneginf(vals), float("-inf"))
            vals, pos = torch.topk(fine, kk, dim=1, sorted=True)
            idx = torch.gather(idx, 1, pos)
        yield (rows, *_pad(idx, vals.float(), k))


def _pad(idx: Tensor, vals: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Item -1 where the score is -inf, and -1 / -inf columns up to ``k``."""
    idx = torch.where(torch.isneginf(vals), torch.full_like(idx, -1), idx)
    if idx.shape[1] < k:
        pad = k - idx.shape[1]
        idx = torch.cat([idx, idx.new_full((len(idx), pad), -1)], 1)
        vals = torch.cat([vals, vals.new_full((len(vals), pad), float("-inf"))], 1)
    return idx, vals


def topk(score_fn: ScoreFn, users: np.ndarray, n_items: int, k: int, exclude: sp.csr_matrix | None = None,
         chunk_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-k items and scores for every user, gathered from :func:`iter_topk`.

    Shapes:
        -> items [U, k] int64 (-1 where fewer than k items qualify), scores [U, k] float32
    """
    items, scores = [], []
    for _, idx, vals in iter_topk(score_fn, users, n_items, k, exclude, chunk_size):
        items.append(idx.cpu().numpy())
        scores.append(vals.cpu().numpy())
    if not items:
        return np.zeros((0, k), dtype=np.int64), np.zeros((0, k), dtype=np.float32)
    return np.concatenate(items), np.concatenate(scores)


def gemm_score_fn(queries: Tensor, items: Tensor) -> GemmScore:
    """A score function over GEMM-ready tables: ``queries[rows] @ items.T`` (see :class:`GemmScore`).

    Shapes:
        queries: [U, D]; items: [N, D]
    """
    return GemmScore(queries, items)


class GemmScore(RescoringScoreFunction):
    """``queries[rows] @ items.T``, written into the reusable buffer, with an exact float32 re-score.

    The GEMM runs in the dtype of ``out`` (tables are cast once, on first use, per dtype), and :meth:`exact`
    re-scores candidate items in float32 for the low-precision shortlist of :func:`iter_topk`.

    Args:
        queries: the query table.
        items: the item table.

    Shapes:
        queries: [U, D]; items: [N, D]; exact: rows [B], cand [B, C] -> [B, C]
    """

    def __init__(self, queries: Tensor, items: Tensor) -> None:
        self.queries, self.items = queries, items
        self._cast: dict[torch.dtype, tuple[Tensor, Tensor]] = {queries.dtype: (queries, items.T.contiguous())}

    def _tables(self, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        if dtype not in self._cast:
            self._cast[dtype] = (self.queries.to(dtype), self._cast[self.queries.dtype][1].to(dtype))
        return self._cast[dtype]

    def __call__(self, rows: Tensor, out: Tensor | None = None) -> Tensor:
        if out is None:
            q_table, i_table = self._tables(self.queries.dtype)
            return q_table[rows] @ i_table
        q_table, i_table = self._tables(out.dtype)
        if out.device != q_table.device:
            # Tables on an accelerator (validation during GPU training), the engine's buffer on the host.
            return out.copy_(q_table[rows.to(q_table.device)] @ i_table)
        return torch.mm(q_table[rows], i_table, out=out)

    def exact(self, rows: Tensor, cand: Tensor) -> Tensor:
        q = self.queries[rows].float()
        return torch.einsum("bd,bcd->bc", q, self.items[cand.clamp(min=0)].float())
