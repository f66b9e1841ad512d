"""Cheaper retrieval from the same tables: Matryoshka prefixes, coarse-to-fine shortlists and Hamming codes.

Every function returns a :class:`recsys.scoring.topk.ScoreFunction` for :func:`recsys.scoring.topk.iter_topk`, so
the evaluator and batch scoring use them unchanged. A cascade (:class:`CascadeScore`) is a
:class:`~recsys.scoring.topk.CandidateScoreFunction`: the engine ranks its shortlist directly; its dense form is the
exact (fine) scores on each row's shortlist and ``-inf`` elsewhere. :mod:`recsys.scoring.index` wraps these as
item indexes.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from recsys.scoring.topk import CandidateScoreFunction, ScoreFunction, mask_rows_


def prefix_tables(queries: Tensor, items: Tensor, dim: int | None, normalize: bool = False
                  ) -> tuple[Tensor, Tensor]:
    """The first ``dim`` coordinates of scorer-prepared tables (Matryoshka serving).

    With ``normalize`` (cosine scorers) the prefixes are re-normalised: the cosine of the prefixes, up to a
    per-query scale that does not change rankings.

    Shapes:
        queries: [U, D]; items: [N, D] -> [U, dim], [N, dim]
    """
    if dim is None or dim >= queries.shape[1]:
        return queries, items
    return prefix_table(queries, dim, normalize), prefix_table(items, dim, normalize)


def prefix_table(x: Tensor, dim: int | None, normalize: bool = False) -> Tensor:
    """One side of :func:`prefix_tables`: the first ``dim`` coordinates, re-normalised with ``normalize``.

    Shapes:
        x: [N, D] -> [N, min(dim, D)]
    """
    if dim is None or dim >= x.shape[1]:
        return x
    if dim < 1:
        raise ValueError(f"prefix dim must be positive, got {dim}")
    x = x[:, :dim].contiguous()
    return F.normalize(x, dim=-1) if normalize else x


def pack_bits(x: Tensor | np.ndarray) -> np.ndarray:
    """Signs of embeddings packed 8 per byte (bit set where the coordinate is ≥ 0).

    Shapes:
        x: [N, D] -> uint8 [N, ceil(D / 8)]
    """
    a = x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)
    return np.packbits(a >= 0, axis=1)


def hamming_distances(q_bits: np.ndarray, item_bits: np.ndarray, query_block: int = 16, item_block: int = 8192
                      ) -> np.ndarray:
    """Hamming distances between packed codes: XOR, then a popcount per 64-bit word.

    Codes are viewed as uint64 words (padded with zero bytes), so a pair costs ``ceil(D/64)`` XOR + popcount.
    Blocks of ``query_block × item_block`` keep the temporaries in cache and are written in place: about 2x faster
    than whole-array numpy expressions, whose temporaries make the kernel memory-bound.

    Shapes:
        q_bits: [B, W] uint8; item_bits: [N, W] uint8 -> [B, N] uint8 (uint16 when codes exceed 255 bits)
    """
    qw, iw = _as_words(q_bits), _as_words(item_bits)
    dtype = np.uint8 if 8 * q_bits.shape[1] < 256 else np.uint16
    out = np.empty((len(qw), len(iw)), dtype=dtype)
    xor = np.empty((query_block, item_block), dtype=np.uint64)
    cnt = np.empty((query_block, item_block), dtype=np.uint8)
    for s in range(0, len(qw), query_block):
        q = qw[s:s + query_block]
        for t in range(0, len(iw), item_block):
            it = iw[t:t + item_block]
            x, c, o = xor[:len(q), :len(it)], cnt[:len(q), :len(it)], out[s:s + query_block, t:t + item_block]
            np.bitwise_xor(q[:, None, 0], it[None, :, 0], out=x)
            np.bitwise_count(x, out=c)
            o[...] = c
            for w in range(1, qw.shape[1]):
                np.bitwise_xor(q[:, None, w], it[None, :, w], out=x)
                np.bitwise_count(x, out=c)
                o += c
    return out


def _as_words(bits: np.ndarray) -> np.ndarray:
    pad = (-bits.shape[1]) % 8
    if pad:
        bits = np.concatenate([bits, np.zeros((len(bits), pad), dtype=np.uint8)], axis=1)
    return np.ascontiguousarray(bits).view(np.uint64)


def shortlist_candidates(coarse: Tensor, queries: Tensor, items: Tensor, rows: Tensor, shortlist: int,
                         exclude=None) -> tuple[Tensor, Tensor]:
    """Each row's ``shortlist`` best coarse candidates and their exact scores (``-inf`` for excluded ones).

    Excluded items (``exclude[rows]``, e.g. training items) are masked before the shortlist so that they take no
    shortlist slots.

    Shapes:
        coarse: [B, N]; queries: [U, D]; items: [N, D]; rows: [B] -> (candidates [B, m], scores [B, m])
    """
    # Integer coarse scores (Hamming similarities, all ≥ 1) stay integer: converting [B, N] to float costs about as
    # much as the Hamming kernel. 0 then marks excluded items.
    floor = float("-inf") if coarse.is_floating_point() else 0
    if exclude is not None:
        if coarse.is_floating_point():
            mask_rows_(coarse, exclude, rows.cpu().numpy())
        else:
            _mask_integer_rows_(coarse, exclude, rows.cpu().numpy())
    m = min(shortlist, coarse.shape[1])
    cand = torch.topk(coarse, m, dim=1, sorted=False).indices
    fine = torch.bmm(items[cand], queries[rows].unsqueeze(-1)).squeeze(-1)
    return cand, fine.masked_fill(coarse.gather(1, cand) == floor, float("-inf"))


def shortlist_rescore(coarse: Tensor, queries: Tensor, items: Tensor, rows: Tensor, shortlist: int,
                      exclude=None, out: Tensor | None = None) -> Tensor:
    """Keep each row's ``shortlist`` best coarse scores and give them exact scores; ``-inf`` elsewhere.

    The dense form of :func:`shortlist_candidates` (the ``ScoreFn`` contract); ``iter_topk`` uses the candidates
    directly and skips the [B, N] fill, scatter and top-k.

    Shapes:
        coarse: [B, N]; queries: [U, D]; items: [N, D]; rows: [B] -> [B, N]
    """
    cand, fine = shortlist_candidates(coarse, queries, items, rows, shortlist, exclude)
    result = out if out is not None else fine.new_empty(coarse.shape)
    result.fill_(float("-inf"))
    return result.scatter_(1, cand, fine.to(result.dtype))


class CascadeScore(CandidateScoreFunction):
    """A cascade: a coarse pass ``coarse(rows) -> [B, N]`` shortlists, the float tables re-rank exactly.

    Args:
        coarse: the coarse scores of all items for a chunk of rows (float, or integer Hamming similarities).
        queries, items: the fine (re-ranking) tables.
        shortlist: candidates per row kept by the coarse pass.
        exclude: CSR of items the dense form never shortlists.

    Shapes:
        queries: [U, D]; items: [N, D]; candidates: rows [B] -> ([B, m], [B, m]), m = min(shortlist, N)
    """

    def __init__(self, coarse, queries: Tensor, items: Tensor, shortlist: int, exclude=None) -> None:
        super().__init__(items.shape[0], exclude)
        self.coarse, self.queries, self.items, self.shortlist = coarse, queries, items, shortlist

    def candidates(self, rows: Tensor, k: int, exclude) -> tuple[Tensor, Tensor]:
        # The shortlist size is the cascade's own (the spec's ``shortlist``); k only bounds what the engine keeps.
        return shortlist_candidates(self.coarse(rows), self.queries, self.items, rows, self.shortlist, exclude)

    def __call__(self, rows: Tensor, out: Tensor | None = None) -> Tensor:
        return shortlist_rescore(self.coarse(rows), self.queries, self.items, rows, self.shortlist, self.exclude,
                                 out)


def _mask_integer_rows_(scores: Tensor, exclude, rows: np.ndarray) -> None:
    """``mask_rows_`` for integer scores: excluded entries become 0 (below every Hamming similarity)."""
    indptr = exclude.indptr
    starts, lens = indptr[rows], indptr[rows + 1] - indptr[rows]
    total = int(lens.sum())
    if total == 0:
        return
    r = np.repeat(np.arange(len(rows)), lens)
    offs = np.arange(total) - np.repeat(np.cumsum(lens) - lens, lens) + np.repeat(starts, lens)
    scores[torch.from_numpy(r), torch.from_numpy(exclude.indices[offs].astype(np.int64))] = 0


def prefix_cascade_fn(queries: Tensor, items: Tensor, coarse_dim: int, shortlist: int, exclude=None,
                      normalize: bool = False) -> CascadeScore:
    """Coarse-to-fine: shortlist by the first ``coarse_dim`` coordinates, re-rank with all of them.

    Shapes:
        queries: [U, D]; items: [N, D]
    """
    cq, ci = prefix_tables(queries, items, coarse_dim, normalize)
    ci_t = ci.T.contiguous()
    return CascadeScore(lambda rows: cq[rows] @ ci_t, queries, items, shortlist, exclude)


def hamming_cascade_fn(queries: Tensor, items: Tensor, shortlist: int, exclude=None, bits: int | None = None
                       ) -> CascadeScore:
    """Hamming shortlist on packed sign bits, re-ranked by the float tables (binary codes, then the float model).

    Args:
        queries, items: float (scorer-prepared) tables; their signs are the codes.
        shortlist: candidates per user kept by the Hamming pass.
        exclude: CSR of items never to return (masked before the shortlist).
        bits: use the signs of the first ``bits`` coordinates only (all when None).

    Shapes:
        queries: [U, D]; items: [N, D]
    """
    b = bits or queries.shape[1]
    q_bits, i_bits = pack_bits(queries[:, :b]), pack_bits(items[:, :b])
    return CascadeScore(lambda rows: hamming_similarities(q_bits[rows.cpu().numpy()], i_bits), queries, items,
                        shortlist, exclude)


def hamming_similarities(q_bits: np.ndarray, item_bits: np.ndarray) -> Tensor:
    """``c − hamming`` with ``c`` above every distance, so all values are ≥ 1 (0 is free to mark exclusions).

    Shapes:
        q_bits: [B, W]; item_bits: [N, W] -> [B, N] uint8 (int32 for codes over 254 bits)
    """
    d = hamming_distances(q_bits, item_bits)
    if d.dtype == np.uint8 and 8 * q_bits.shape[1] < 255:
        return torch.from_numpy(np.subtract(np.uint8(255), d, out=d))
    return torch.from_numpy(65536 - d.astype(np.int32))


def hamming_score_fn(queries: Tensor, items: Tensor, bits: int | None = None) -> HammingScore:
    """Codes alone: ``-hamming(q, i)`` as the score (binary-only retrieval, no re-ranking).

    Shapes:
        queries: [U, D]; items: [N, D]
    """
    b = bits or queries.shape[1]
    return HammingScore(pack_bits(queries[:, :b]), pack_bits(items[:, :b]))


class HammingScore(ScoreFunction):
    """``-hamming(q_bits[rows], item_bits)`` as the score: packed codes alone.

    Args:
        q_bits, item_bits: packed sign codes (:func:`pack_bits`).

    Shapes:
        q_bits: [U, W] uint8; item_bits: [N, W] uint8; rows [B] -> [B, N]
    """

    def __init__(self, q_bits: np.ndarray, item_bits: np.ndarray) -> None:
        self.q_bits, self.item_bits = q_bits, item_bits

    def __call__(self, rows: Tensor, out: Tensor | None = None) -> Tensor:
        d = torch.from_numpy(hamming_distances(self.q_bits[rows.cpu().numpy()], self.item_bits)).float().neg_()
        if out is not None:
            return out.copy_(d)
        return d
