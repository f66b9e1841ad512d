"""A Seismic-style blocked inverted index for top-k inner-product retrieval over non-negative concept vectors.

Bruch, Nardini, Rulli and Venturini, "Efficient Inverted Indexes for Approximate Retrieval over Learned Sparse
Representations" (Seismic), SIGIR 2024. The index has one posting list per concept (dimension):

* **Static pruning:** a list keeps only its ``n_postings`` largest entries (λ in the paper).
* **Blocking:** each list is split into blocks by a shallow k-means (random items of the list as centroids, one
  assignment pass by inner product), about ``block_size`` items per block.
* **Summaries:** a block's summary is the coordinate-wise maximum of its items' vectors, so ``q · summary`` bounds
  the score of every item in the block from above; ``summary_energy`` < 1 keeps only the largest summary
  coordinates that hold that share of its L1 mass (smaller, no longer a strict bound: the paper's α).
* **Query processing:** the lists of the query's ``query_cut`` largest coordinates are visited; a block is
  evaluated (exact scores from the forward index) only if ``heap_factor × bound`` beats the current k-th best
  score, and is skipped otherwise.

One deliberate difference: the blocks of all visited lists are taken best-bound-first (one GEMV over their
summaries, then a sort), not list by list. This only changes the order of the same skip test; since bounds come in
descending order, the first block that fails it ends the search. Blocks are evaluated in small groups so the
per-block Python overhead stays low.

With ``n_postings=None``, ``summary_energy=1``, ``query_cut=None`` and ``heap_factor=1`` every skipped block
provably holds no item that beats the final k-th score, so results equal exact top-k (up to ties).
:func:`exact_topk` is the brute-force reference.

Shapes:
    items: [N, K] non-negative; queries: [B, K] non-negative -> ids [B, k] int64 (-1 = none), scores [B, k]
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

import numpy as np

__all__ = ["SeismicIndex", "exact_topk"]


class SeismicIndex:
    """A blocked inverted index over non-negative item vectors (see the module docstring).

    Args:
        n_postings: entries kept per posting list, largest first (None = every non-zero entry: no pruning).
        block_size: target items per block.
        summary_energy: share of each summary's L1 mass kept (1.0 = exact summaries, true upper bounds).
        query_cut: how many of the query's largest coordinates are used to pick lists (None = all non-zero).
        heap_factor: a block is evaluated when ``heap_factor × bound > θ`` (1.0 = safe; < 1 skips more).
        group: blocks evaluated per step between threshold updates.
        seed: seed of the shallow k-means.
    """

    def __init__(self, n_postings: int | None = 4096, block_size: int = 32, summary_energy: float = 1.0,
                 query_cut: int | None = None, heap_factor: float = 1.0, group: int = 8, seed: int = 0) -> None:
        if block_size < 1 or group < 1:
            raise ValueError("block_size and group must be >= 1")
        if not 0 < summary_energy <= 1 or not 0 < heap_factor <= 1:
            raise ValueError("summary_energy and heap_factor must be in (0, 1]")
        self.n_postings, self.block_size, self.summary_energy = n_postings, block_size, summary_energy
        self.query_cut, self.heap_factor, self.group, self.seed = query_cut, heap_factor, group, seed
        self.items: np.ndarray | None = None
        self.stats = {"blocks": 0, "postings": 0, "build_s": 0.0}

    # ------------------------------------------------------------------------------------------------ build
    def build(self, items) -> SeismicIndex:
        """Index ``items`` (a float array or tensor, every entry ≥ 0).

        Shapes:
            items: [N, K]
        """
        t0 = time.perf_counter()
        x = _as_numpy(items)
        if x.ndim != 2:
            raise ValueError(f"items must be [N, K], got shape {x.shape}")
        if (x < 0).any():
            raise ValueError("the inverted index needs non-negative item vectors (explicit concept activations)")
        rng = np.random.default_rng(self.seed)
        n, k = x.shape
        docs, block_ptr, summaries, list_ptr = [], [0], [], [0]
        for j in range(k):
            col = x[:, j]
            nz = np.flatnonzero(col > 0)
            if self.n_postings is not None and len(nz) > self.n_postings:
                nz = nz[np.argpartition(-col[nz], self.n_postings - 1)[:self.n_postings]]
            for block in self._blocks(x, nz, rng):
                docs.append(block)
                block_ptr.append(block_ptr[-1] + len(block))
                summaries.append(x[block].max(axis=0))
            list_ptr.append(len(summaries))
        self.items = x
        self._pos = np.zeros(n, dtype=np.int64)  # scratch for de-duplication in search (fully rewritten per use)
        self.docs = np.concatenate(docs).astype(np.int64) if docs else np.zeros(0, dtype=np.int64)
        self.block_ptr = np.asarray(block_ptr, dtype=np.int64)
        self.summaries = np.stack(summaries).astype(np.float32) if summaries else np.zeros((0, k), np.float32)
        if self.summary_energy < 1:
            self.summaries = _keep_energy(self.summaries, self.summary_energy)
        self.list_ptr = np.asarray(list_ptr, dtype=np.int64)
        self.stats = {"blocks": len(summaries), "postings": int(len(self.docs)),
                      "build_s": time.perf_counter() - t0}
        return self

    def bytes_per_item(self) -> float:
        """Bytes of the built index per item: forward vectors, postings, block pointers and summaries."""
        if self.items is None:
            raise RuntimeError("build the index before measuring it")
        arrays = (self.items, self.docs, self.block_ptr, self.summaries, self.list_ptr)
        return sum(a.nbytes for a in arrays) / max(1, len(self.items))

    def _blocks(self, x: np.ndarray, members: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
        """Shallow k-means of one posting list into ~``block_size`` blocks (empty clusters dropped)."""
        n_blocks = math.ceil(len(members) / self.block_size)
        if n_blocks <= 1:
            return [members] if len(members) else []
        v = x[members]
        centroids = v[rng.choice(len(members), n_blocks, replace=False)]
        assign = np.argmax(v @ centroids.T, axis=1)
        order = np.argsort(assign, kind="stable")
        bounds = np.searchsorted(assign[order], np.arange(n_blocks + 1))
        out = []
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):
            block = members[order[a:b]]
            if len(block) > 4 * self.block_size:
                # A shallow k-means can lump near-duplicate vectors into one huge cluster, whose single bound then
                # forces evaluating all of it: split such clusters into block_size pieces, largest norm first.
                block = block[np.argsort(-np.linalg.norm(x[block], axis=1), kind="stable")]
                out.extend(block[i:i + self.block_size] for i in range(0, len(block), self.block_size))
            elif len(block):
                out.append(block)
        return out

    # ------------------------------------------------------------------------------------------------ search
    def search(self, query, k: int, exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Approximate top-k items of one query.

        Args:
            query: the query vector (non-negative).
            k: how many items.
            exclude: item rows never to return (e.g. the user's training items).

        Shapes:
            query: [K] -> (ids [k] int64, -1 where fewer qualify; scores [k] float32, -inf there)
        """
        if self.items is None:
            raise RuntimeError("build the index before searching it")
        q = _as_numpy(query).astype(np.float32, copy=False)
        coords = np.flatnonzero(q > 0)
        if self.query_cut is not None and len(coords) > self.query_cut:
            coords = coords[np.argpartition(-q[coords], self.query_cut - 1)[:self.query_cut]]
        blocks = _ranges(self.list_ptr[coords], self.list_ptr[coords + 1])
        bounds = self.summaries[blocks] @ q
        order = np.argsort(-bounds, kind="stable")
        blocks, bounds = blocks[order], bounds[order] * self.heap_factor
        seen = np.zeros(len(self.items), dtype=bool)
        if exclude is not None and len(exclude):
            seen[exclude] = True
        top_ids = np.zeros(0, dtype=np.int64)
        top_scores = np.zeros(0, dtype=np.float32)
        theta = -np.inf
        evaluated, scored, s, step = 0, 0, 0, self.group
        while s < len(blocks):
            b, bd = blocks[s:s + step], bounds[s:s + step]
            s += step
            # Groups grow geometrically: small ones first, while θ is still rising fast, then larger ones so that
            # the per-group overhead stays small when many blocks are needed.
            step = min(2 * step, 64 * self.group)
            if len(top_ids) >= k:
                live = bd > theta
                if not live[0]:
                    break  # bounds are sorted: no later block can beat θ either
                b = b[live]
            evaluated += len(b)
            cand = self.docs[_ranges(self.block_ptr[b], self.block_ptr[b + 1])]
            cand = cand[~seen[cand]]
            if not len(cand):
                continue
            # De-duplicate (an item sits in several lists) without a sort: keep each item's last position.
            at = np.arange(len(cand))
            self._pos[cand] = at
            cand = cand[self._pos[cand] == at]
            seen[cand] = True
            scored += len(cand)
            scores = self.items[cand] @ q
            top_ids = np.concatenate([top_ids, cand])
            top_scores = np.concatenate([top_scores, scores])
            if len(top_ids) > k:
                keep = np.argpartition(-top_scores, k - 1)[:k]
                top_ids, top_scores = top_ids[keep], top_scores[keep]
            if len(top_ids) >= k:
                theta = float(top_scores.min())
        #: blocks evaluated and items scored by the last search (the work the bounds did not save).
        self.last_evaluated, self.last_scored = evaluated, scored
        order = np.argsort(-top_scores, kind="stable")
        ids = np.full(k, -1, dtype=np.int64)
        out = np.full(k, -np.inf, dtype=np.float32)
        ids[:len(order)], out[:len(order)] = top_ids[order], top_scores[order]
        return ids, out

    def search_batch(self, queries, k: int, exclude=None, rows: np.ndarray | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`search` for every row of ``queries``.

        Args:
            queries: query vectors.
            k: list length.
            exclude: a CSR-like (``indptr``, ``indices``) of items to exclude per user, or None.
            rows: each query's user row in ``exclude`` (default ``0..B-1``).

        Shapes:
            queries: [B, K] -> (ids [B, k], scores [B, k])
        """
        q = _as_numpy(queries).astype(np.float32, copy=False)
        rows = np.arange(len(q)) if rows is None else np.asarray(rows)
        ids = np.empty((len(q), k), dtype=np.int64)
        scores = np.empty((len(q), k), dtype=np.float32)
        self.batch_scored = 0
        for j in range(len(q)):
            ex = None
            if exclude is not None:
                r = rows[j]
                ex = exclude.indices[exclude.indptr[r]:exclude.indptr[r + 1]]
            ids[j], scores[j] = self.search(q[j], k, ex)
            self.batch_scored += self.last_scored
        return ids, scores

    def iter_topk(self, queries, users: np.ndarray, k: int, exclude=None, chunk_size: int = 1024
                  ) -> Iterator[tuple[np.ndarray, object, object]]:
        """Chunks of ``(user_rows, top_items, top_scores)`` in the format of :func:`recsys.scoring.topk.iter_topk`.

        Shapes:
            queries: [U, K] (all users' vectors, indexed by ``users``) -> per chunk [B, k] tensors
        """
        import torch

        q = _as_numpy(queries)
        users = np.asarray(users, dtype=np.int64)
        for s in range(0, len(users), chunk_size):
            rows = users[s:s + chunk_size]
            ids, scores = self.search_batch(q[rows], k, exclude, rows)
            yield rows, torch.from_numpy(ids), torch.from_numpy(scores)


def exact_topk(queries, items, k: int, exclude=None, rows: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force top-k by inner product (one GEMM per chunk): the reference the index is measured against.

    Items scoring -inf (excluded) are returned as -1.

    Shapes:
        queries: [B, K]; items: [N, K] -> (ids [B, k], scores [B, k])
    """
    import torch

    from recsys.scoring.topk import gemm_score_fn, topk

    q = torch.as_tensor(_as_numpy(queries), dtype=torch.float32)
    rows = np.arange(len(q)) if rows is None else np.asarray(rows)
    fn = gemm_score_fn(q, torch.as_tensor(_as_numpy(items), dtype=torch.float32))
    if exclude is not None:
        # topk masks by the score function's row numbering; map query positions to their users' exclusion rows.
        from recsys.scoring.topk import RowSets

        lens = exclude.indptr[rows + 1] - exclude.indptr[rows]
        idx = np.concatenate([exclude.indices[exclude.indptr[r]:exclude.indptr[r + 1]] for r in rows]) if len(
            rows) else np.zeros(0, dtype=np.int64)
        exclude = RowSets(np.concatenate([[0], np.cumsum(lens)]), idx)
    return topk(fn, np.arange(len(q)), int(_as_numpy(items).shape[0]), k, exclude)


def _ranges(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """The concatenation of ``arange(starts[i], ends[i])`` over i, without a Python loop."""
    lens = ends - starts
    return np.repeat(starts - np.cumsum(lens) + lens, lens) + np.arange(int(lens.sum()))


def _keep_energy(summaries: np.ndarray, energy: float) -> np.ndarray:
    """Zero each row's smallest coordinates, keeping the largest ones that hold ``energy`` of its L1 mass."""
    order = np.argsort(-summaries, axis=1)
    sorted_vals = np.take_along_axis(summaries, order, axis=1)
    cum = np.cumsum(sorted_vals, axis=1)
    total = cum[:, -1:]
    # Keep a coordinate while the mass before it is still below the target share.
    keep_sorted = (cum - sorted_vals) < energy * total
    keep = np.zeros_like(keep_sorted)
    np.put_along_axis(keep, order, keep_sorted, axis=1)
    return np.where(keep, summaries, 0.0).astype(np.float32)


def _as_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(x, dtype=np.float32)
