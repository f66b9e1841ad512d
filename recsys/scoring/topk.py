"""Chunked full-ranking top-k: GEMM (or any score function) + seen-item masking + ``torch.topk``.

Buffers are allocated once per call and reused for every chunk; the chunk size comes from a memory budget.
This one engine serves validation, ``recsys evaluate``, ``recsys score`` and the benchmarks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    import scipy.sparse as sp

ScoreFn = Callable[[Tensor, Tensor | None], Tensor]


def chunk_size_for(n_items: int, memory_budget: int = 256 << 20, max_chunk: int = 8192) -> int:
    """Users per chunk so that one float32 score block fits in ``memory_budget`` bytes."""
    return int(max(1, min(max_chunk, memory_budget // max(1, 4 * n_items))))


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
    scores[torch.from_numpy(r), torch.from_numpy(c.astype(np.int64))] = float("-inf")


def iter_topk(score_fn: ScoreFn, users: np.ndarray, n_items: int, k: int, exclude: sp.csr_matrix | None = None,
              chunk_size: int | None = None, device: str | torch.device = "cpu"
              ) -> Iterator[tuple[np.ndarray, Tensor, Tensor]]:
    """Yield ``(user_rows, top_items, top_scores)`` per chunk; excluded or missing slots are item -1.

    Args:
        score_fn: ``score_fn(user_rows, out)`` returns scores ``[B, n_items]``, written into ``out`` when given.
        users: the user rows to rank for.
        n_items: catalogue size.
        k: list length.
        exclude: user × item CSR of items never to recommend (e.g. training items); None keeps everything.
        chunk_size: users per chunk; derived from a 256 MiB budget when None.
        device: where the score buffer lives.

    Shapes:
        top_items, top_scores: [B, k] per chunk
    """
    users = np.asarray(users, dtype=np.int64)
    chunk = chunk_size or chunk_size_for(n_items)
    kk = min(k, n_items)
    buf = torch.empty((min(chunk, max(1, len(users))), n_items), device=device)
    for s in range(0, len(users), chunk):
        rows = users[s:s + chunk]
        out = buf[:len(rows)]
        scores = score_fn(torch.from_numpy(rows).to(device), out)
        if exclude is not None:
            mask_rows_(scores, exclude, rows)
        vals, idx = torch.topk(scores, kk, dim=1, sorted=True)
        idx = torch.where(torch.isneginf(vals), torch.full_like(idx, -1), idx)
        if kk < k:
            pad = k - kk
            idx = torch.cat([idx, idx.new_full((len(rows), pad), -1)], 1)
            vals = torch.cat([vals, vals.new_full((len(rows), pad), float("-inf"))], 1)
        yield rows, idx, vals


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


def gemm_score_fn(queries: Tensor, items: Tensor) -> ScoreFn:
    """A score function over GEMM-ready tables: ``queries[rows] @ items.T``, written into the reusable buffer.

    Shapes:
        queries: [U, D]; items: [N, D]
    """
    items_t = items.T.contiguous()

    def score(rows: Tensor, out: Tensor | None) -> Tensor:
        q = queries[rows]
        return torch.mm(q, items_t, out=out) if out is not None else q @ items_t

    return score
