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

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    import scipy.sparse as sp

ScoreFn = Callable[[Tensor, Tensor | None], Tensor]


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
        score_fn: ``score_fn(user_rows, out)`` returns scores ``[B, n_items]``, written into ``out`` when given.
            A cascade may also offer ``candidates(user_rows) -> (items [B, m], scores [B, m])`` with its own
            ``exclude``; when that is ``exclude`` itself, the shortlist is ranked directly (no [B, n_items] pass).
        users: the user rows to rank for.
        n_items: catalogue size.
        k: list length.
        exclude: user × item CSR of items never to recommend (e.g. training items); None keeps everything.
        chunk_size: users per chunk; derived from a 256 MiB budget when None.
        device: where the score buffer lives.
        dtype: the score buffer's dtype (float32 when None). A lower precision (bf16) shortlists ``2k`` items per
            user and, when ``score_fn`` has an ``exact(user_rows, items)`` method (as :func:`gemm_score_fn` does),
            re-scores them in float32 and keeps the best ``k``; top scores are always returned as float32.

    Shapes:
        top_items, top_scores: [B, k] per chunk
    """
    users = np.asarray(users, dtype=np.int64)
    dtype = dtype or torch.float32
    chunk = chunk_size or chunk_size_for(n_items, itemsize=torch.empty((), dtype=dtype).element_size())
    kk = min(k, n_items)
    exact = getattr(score_fn, "exact", None) if dtype != torch.float32 else None
    # Low-precision scores tie and round; a 2k shortlist re-scored in float32 recovers the exact top k.
    kshort = min(n_items, 2 * kk) if exact is not None else kk
    candidates = getattr(score_fn, "candidates", None)
    if candidates is not None and getattr(score_fn, "exclude", None) is not exclude:
        candidates = None  # the cascade masked other items than asked: rank its dense scores instead
    buf = None if candidates is not None else torch.empty((min(chunk, max(1, len(users))), n_items),
                                                          device=device, dtype=dtype)
    for s in range(0, len(users), chunk):
        rows = users[s:s + chunk]
        rows_t = torch.from_numpy(rows).to(device)
        if candidates is not None:
            cand, cand_scores = candidates(rows_t)
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


def gemm_score_fn(queries: Tensor, items: Tensor) -> ScoreFn:
    """A score function over GEMM-ready tables: ``queries[rows] @ items.T``, written into the reusable buffer.

    The GEMM runs in the dtype of ``out`` (tables are cast once, on first use, per dtype), and ``score.exact(rows,
    cand)`` re-scores candidate items in float32 for the low-precision shortlist of :func:`iter_topk`.

    Shapes:
        queries: [U, D]; items: [N, D]; exact: rows [B], cand [B, C] -> [B, C]
    """
    items_t = items.T.contiguous()
    cast: dict[torch.dtype, tuple[Tensor, Tensor]] = {queries.dtype: (queries, items_t)}

    def tables(dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        if dtype not in cast:
            cast[dtype] = (queries.to(dtype), items_t.to(dtype))
        return cast[dtype]

    def score(rows: Tensor, out: Tensor | None) -> Tensor:
        if out is None:
            return queries[rows] @ items_t
        q_table, i_table = tables(out.dtype)
        return torch.mm(q_table[rows], i_table, out=out)

    def exact(rows: Tensor, cand: Tensor) -> Tensor:
        q = queries[rows].float()
        return torch.einsum("bd,bcd->bc", q, items[cand.clamp(min=0)].float())

    score.exact = exact
    return score
