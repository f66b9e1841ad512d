"""Faiss item indexes (the optional ``[ann]`` extra): flat, IVF and HNSW inner product, and binary sign codes.

Every index here is an :class:`recsys.scoring.index.ItemIndex` whose score function is a
:class:`recsys.scoring.index.SearchScore` (or, for a re-ranked binary shortlist, a
:class:`~recsys.scoring.topk.CandidateScoreFunction`), so evaluation and batch scoring rank through the same
top-k engine as every other index. Faiss has no per-query exclusions in a batched search, so
:func:`search_excluding` over-fetches each query by its own exclusion count and drops the excluded items: an
excluded item never appears, and exactly ``k`` remain whenever the catalogue (and, for an approximate index, what it
reaches) allows. ``faiss:flat`` then returns the exact engine's top-k.

The tables are the scorer-prepared ones (unit-norm for cosine scorers, queries divided by the temperature), so the
inner product of a faiss index is the trained score, as on the exact path; nothing is re-normalised here.
The specs are :class:`recsys.scoring.index.FaissSpec` (``faiss:flat``, ``faiss:ivf,nlist=N,nprobe=P``,
``faiss:hnsw,m=M,ef_search=E``, ``faiss:binary[,shortlist=S]``).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from recsys.errors import MissingDependencyError
from recsys.scoring.cascade import pack_bits
from recsys.scoring.index import ItemIndex, SearchScore
from recsys.scoring.topk import CandidateScoreFunction

__all__ = ["FaissBinaryIndex", "FaissIndex", "FaissRerankScore", "INSTALL_HINT", "blas_from", "import_faiss",
           "search_excluding"]

#: what to install for the faiss backend (named by every missing-faiss error).
INSTALL_HINT = "pip install 'recsys[ann]'"


def import_faiss():
    """The ``faiss`` module.

    Raises:
        MissingDependencyError: faiss is not installed (one line naming the ``[ann]`` extra).
    """
    # faiss's loader logs each CPU-feature build it tries at INFO, which the CLI's logging would print.
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    try:
        import faiss
    except ImportError:
        raise MissingDependencyError(f"faiss is not installed: {INSTALL_HINT}") from None
    return faiss


def _excluded_pairs(exclude, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(position in ``rows``, item) of every excluded pair of ``rows``: the CSR rows gathered without a loop.

    Shapes:
        rows: [B] -> (positions [P] int64, items [P] int64)
    """
    if exclude is None or not len(rows):
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    starts, lens = exclude.indptr[rows], exclude.indptr[rows + 1] - exclude.indptr[rows]
    total = int(lens.sum())
    offs = np.arange(total) - np.repeat(np.cumsum(lens) - lens, lens) + np.repeat(starts, lens)
    return np.repeat(np.arange(len(rows)), lens), exclude.indices[offs].astype(np.int64)


def search_excluding(search: Callable, queries: np.ndarray, k: int, n_items: int, exclude=None,
                     rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The best ``k`` results of a faiss-style ``search`` per query, none of them in ``exclude[rows]``.

    Each query is searched to depth at least ``k + e`` (``e`` its exclusion count, rounded up to a power of two,
    and groups of under :data:`MIN_BATCH` queries searched with the next deeper group, so that a chunk makes a few
    batched calls), so at most ``e`` of its results are excluded: at least ``k`` remain whenever the catalogue holds
    them and the index reaches them (always for a flat index). Kept results stay in the index's order.

    Args:
        search: ``search(queries, depth) -> (scores [B, depth], ids [B, depth])``, best first, id -1 for none
            (faiss's ``Index.search``; scores higher-is-better).
        queries: the query vectors (or codes) of ``rows``.
        k: results wanted per query.
        n_items: catalogue size (depths never exceed it).
        exclude: CSR (``indptr``, ``indices``) of items per user row never to return; None keeps everything.
        rows: the user rows of ``queries`` in ``exclude`` (``0..B-1`` when None).

    Shapes:
        queries: [B, ...]; rows: [B] -> (ids [B, min(k, N)] int64, -1 = none; scores [B, min(k, N)] float32, -inf)
    """
    b, kk = len(queries), min(k, n_items)
    rows = np.arange(b) if rows is None else np.asarray(rows, dtype=np.int64)
    counts = (np.zeros(b, dtype=np.int64) if exclude is None
              else (exclude.indptr[rows + 1] - exclude.indptr[rows]).astype(np.int64))
    extra = np.where(counts > 0, 2 ** np.ceil(np.log2(np.maximum(counts, 1))).astype(np.int64), 0)
    depth = _merge_small_groups(np.minimum(n_items, kk + extra))
    out_ids = np.full((b, kk), -1, dtype=np.int64)
    out_scores = np.full((b, kk), -np.inf, dtype=np.float32)
    if kk == 0:
        return out_ids, out_scores
    for d in np.unique(depth):
        sel = np.flatnonzero(depth == d)
        scores, ids = search(np.ascontiguousarray(queries[sel]), int(d))
        ids, scores = ids.astype(np.int64, copy=False), scores.astype(np.float32, copy=False)
        bad = ids < 0
        if counts[sel].any():
            pos, items = _excluded_pairs(exclude, rows[sel])
            keys = np.arange(len(sel))[:, None] * n_items + np.maximum(ids, 0)
            bad |= np.isin(keys, pos * n_items + items)
        if bad.any():
            # A stable sort on the drop flag moves the kept results to the front in their order.
            order = np.argsort(bad, axis=1, kind="stable")[:, :kk]
            ids, scores, bad = (np.take_along_axis(a, order, axis=1) for a in (ids, scores, bad))
        else:
            ids, scores, bad = ids[:, :kk], scores[:, :kk], bad[:, :kk]
        out_ids[sel] = np.where(bad, -1, ids)
        out_scores[sel] = np.where(bad, -np.inf, scores)
    return out_ids, out_scores


#: fewest queries per faiss call: smaller groups are searched deeper with the next group, since faiss searches
#: small batches query by query, without BLAS (under 20 queries even within :func:`blas_from`).
MIN_BATCH = 32


def _merge_small_groups(depth: np.ndarray) -> np.ndarray:
    """``depth`` with each group of fewer than :data:`MIN_BATCH` rows raised to the next deeper group's depth.

    Shapes:
        depth: [B] -> [B]
    """
    levels, sizes = np.unique(depth, return_counts=True)
    target, pending, acc = levels.copy(), [], 0
    for i, size in enumerate(sizes):
        pending.append(i)
        acc += size
        if acc >= MIN_BATCH or i == len(levels) - 1:
            target[pending] = levels[i]
            pending, acc = [], 0
    return target[np.searchsorted(levels, depth)]


@contextlib.contextmanager
def blas_from(faiss, d: int, min_queries: int = 20):
    """Within the block, faiss's exhaustive searches use BLAS from ``min_queries`` queries of ``d`` dims on.

    Faiss 1.12+ leaves its one-query-at-a-time loop for BLAS only at ``queries·d ≥ 128000`` (2000 queries at
    d = 64), a threshold for many threads: on one thread the loop is ~5x slower than BLAS at the engine's chunk
    sizes (335 queries for 200k items). Older faiss compares the query count alone with 20, which this keeps.
    The global is restored on exit (faiss has no per-call setting).
    """
    old = faiss.cvar.distance_compute_blas_threshold
    faiss.cvar.distance_compute_blas_threshold = min(old, min_queries * d)
    try:
        yield
    finally:
        faiss.cvar.distance_compute_blas_threshold = old


def _float32(x: Tensor) -> np.ndarray:
    return np.ascontiguousarray(x.detach().cpu().float().numpy())


class FaissIndex(ItemIndex):
    """A faiss inner-product index over the float item table: ``flat`` (exact), ``ivf`` or ``hnsw``.

    Args:
        items: scorer-prepared item table.
        index: ``flat`` (``IndexFlatIP``), ``ivf`` (``IndexIVFFlat``, k-means trained on the item table) or
            ``hnsw`` (``IndexHNSWFlat``).
        nlist: ``ivf`` lists (``√N`` when None, at most ``N``); nprobe: lists visited per query (8 when None, at
            most ``nlist``).
        m: ``hnsw`` neighbours per node (32 when None); ef_search: its search beam (64 when None; faiss widens it
            to the depth searched).

    Shapes:
        items: [N, D]; queries: [U, D]
    """

    def __init__(self, items: Tensor, index: str = "flat", nlist: int | None = None, nprobe: int | None = None,
                 m: int | None = None, ef_search: int | None = None) -> None:
        faiss = import_faiss()
        x = _float32(items)
        n, d = x.shape
        ip = faiss.METRIC_INNER_PRODUCT
        if index == "flat":
            built = faiss.IndexFlatIP(d)
        elif index == "ivf":
            lists = max(1, min(n, nlist or round(math.sqrt(n))))
            built = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, lists, ip)
            built.train(x)
            built.nprobe = min(lists, nprobe or 8)
        elif index == "hnsw":
            built = faiss.IndexHNSWFlat(d, m or 32, ip)
            built.hnsw.efSearch = ef_search or 64
        else:
            raise ValueError(f"faiss index must be flat, ivf or hnsw, not {index!r}")
        built.add(x)
        self.faiss, self.index, self.kind, self.n_items = faiss, built, index, n

    def _search(self, q: np.ndarray, k: int, exclude, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with blas_from(self.faiss, q.shape[1]):
            return search_excluding(self.index.search, q, k, self.n_items, exclude, rows)

    def score_function(self, queries: Tensor | None = None, exclude=None) -> SearchScore:
        return SearchScore(self._search, _float32(self._query_table(queries)), self.n_items, exclude)

    def bytes_per_item(self) -> float:
        return len(self.faiss.serialize_index(self.index)) / max(1, self.n_items)

    def write(self, path: str | Path) -> None:
        """Write the faiss index (``faiss.read_index`` reads it back)."""
        self.faiss.write_index(self.index, str(path))


class FaissBinaryIndex(ItemIndex):
    """Sign-bit codes in a faiss ``IndexBinaryFlat``: Hamming ranking, or a Hamming shortlist re-ranked in float.

    The codes are :func:`recsys.scoring.cascade.pack_bits` of the item table (bit set where a coordinate is
    ``>= 0``, zero bits padding to whole bytes), the codes of ``hamming:``; codes alone score ``-hamming`` as
    :class:`recsys.scoring.cascade.HammingScore` does. With a ``shortlist``, each query's ``shortlist`` nearest
    non-excluded codes are re-scored by the float inner product, as ``hamming:shortlist=S`` does.

    Args:
        items: scorer-prepared item table (kept in float only with a ``shortlist``).
        shortlist: candidates per query re-ranked in float; None ranks by the codes alone.

    Shapes:
        items: [N, D]; queries: [U, D]
    """

    def __init__(self, items: Tensor, shortlist: int | None = None) -> None:
        faiss = import_faiss()
        codes = pack_bits(items)
        self.index = faiss.IndexBinaryFlat(8 * codes.shape[1])
        self.index.add(np.ascontiguousarray(codes))
        self.faiss, self.shortlist, self.n_items = faiss, shortlist, items.shape[0]
        self.fine = None if shortlist is None else _float32(items)

    def _hamming_search(self, q_bits: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
        dist, ids = self.index.search(q_bits, depth)
        return -dist.astype(np.float32), ids

    def _search(self, q_bits: np.ndarray, k: int, exclude, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return search_excluding(self._hamming_search, q_bits, k, self.n_items, exclude, rows)

    def score_function(self, queries: Tensor | None = None, exclude=None) -> SearchScore | FaissRerankScore:
        q = self._query_table(queries)
        q_bits = pack_bits(q)
        if self.fine is None:
            return SearchScore(self._search, q_bits, self.n_items, exclude)
        return FaissRerankScore(self._search, q_bits, _float32(q), self.fine, self.shortlist, exclude)

    def bytes_per_item(self) -> float:
        fine = 0 if self.fine is None else 4 * self.fine.shape[1]
        return float(self.index.code_size + fine)

    def write(self, path: str | Path) -> None:
        """Write the binary index (``faiss.read_index_binary`` reads it back)."""
        self.faiss.write_index_binary(self.index, str(path))


class FaissRerankScore(CandidateScoreFunction):
    """A faiss shortlist (of non-excluded items) re-scored exactly by the float tables.

    As :class:`recsys.scoring.cascade.CascadeScore`, the shortlist length is the index's own; the engine's ``k``
    only bounds what it keeps, and the dense form is the exact scores on each row's shortlist, ``-inf`` elsewhere.
    The re-scoring is faiss's ``fvec_inner_products_by_idx``, which reads each candidate's row in place (gathering
    ``[B, S, D]`` candidate vectors first, as ``torch.bmm`` needs, is over 10x slower at ``S`` = 1000).

    Args:
        search: ``search(codes, k, exclude, rows) -> (ids, scores)`` (:func:`search_excluding` over the index).
        codes: the queries in the index's space (packed sign bits), indexed by user row.
        queries, items: the float tables that re-rank (float32, C-contiguous).
        shortlist: candidates per row.
        exclude: CSR of items the dense form never shortlists.

    Shapes:
        codes: [U, W]; queries: [U, D]; items: [N, D]; candidates: rows [B] -> ([B, m], [B, m]), m = min(S, N)
    """

    def __init__(self, search: Callable, codes: np.ndarray, queries: np.ndarray, items: np.ndarray, shortlist: int,
                 exclude=None) -> None:
        super().__init__(items.shape[0], exclude)
        self.search, self.codes, self.queries, self.items, self.shortlist = search, codes, queries, items, shortlist
        self.faiss = import_faiss()

    def candidates(self, rows: Tensor, k: int, exclude) -> tuple[Tensor, Tensor]:
        r = rows.cpu().numpy()
        ids, _ = self.search(self.codes[r], self.shortlist, exclude, r)
        q, safe = np.ascontiguousarray(self.queries[r]), np.ascontiguousarray(np.maximum(ids, 0))
        fine = np.empty(ids.shape, dtype=np.float32)
        ptr = self.faiss.swig_ptr
        self.faiss.fvec_inner_products_by_idx(ptr(fine), ptr(q), ptr(self.items), ptr(safe), self.items.shape[1],
                                              len(r), ids.shape[1])
        fine[ids < 0] = -np.inf
        return torch.from_numpy(ids).to(rows.device), torch.from_numpy(fine).to(rows.device)
