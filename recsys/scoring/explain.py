"""Per-(user, item) explanations in an explicit concept space: the score split into concept contributions.

In an explicit space (SESA) both sides are non-negative concept activations and the score is an inner product
of the scorer-prepared vectors, so ``score = Σ_k q_k · i_k`` and each term is concept k's contribution. Works on
the GEMM-ready tables a run stores, so it needs neither the model code nor Lightning.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["concept_contributions", "top_concepts"]


def concept_contributions(queries: Tensor, items: Tensor) -> Tensor:
    """Concept contributions of aligned (query, item) pairs; they sum to the pairs' scores.

    Args:
        queries: scorer-prepared query vectors, one per pair.
        items: scorer-prepared item vectors, one per pair (or ``[B, C, K]`` candidates per query).

    Shapes:
        queries: [B, K]; items: [B, K] or [B, C, K] -> [B, K] or [B, C, K]
    """
    return queries * items if items.dim() == 2 else queries[:, None, :] * items


def top_concepts(queries: Tensor, items: Tensor, names: Sequence[str], top: int = 3
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The ``top`` largest concept contributions of each pair and their shares of the score.

    A share is ``contribution / score``; pairs with a score ≤ 0 (no shared concept) get no concepts (-1, share 0),
    since shares of a non-positive total mean nothing.

    Args:
        queries, items: aligned scorer-prepared vectors (see :func:`concept_contributions`).
        names: the concept names (``len(names) == K``); used only to check the width.
        top: how many concepts per pair.

    Shapes:
        queries, items: [B, K] -> (concept indices [B, top] int64, -1 = none; shares [B, top] float32)
    """
    if queries.shape[-1] != len(names):
        raise ValueError(f"vectors have {queries.shape[-1]} dimensions for {len(names)} concept names")
    contrib = concept_contributions(queries.detach().float(), items.detach().float())
    score = contrib.sum(-1, keepdim=True)
    t = min(top, contrib.shape[-1])
    vals, idx = torch.topk(contrib, t, dim=-1)
    ok = (score > 0) & (vals > 0)
    shares = torch.where(ok, vals / score.clamp_min(1e-30), torch.zeros_like(vals))
    idx = torch.where(ok, idx, torch.full_like(idx, -1))
    if t < top:
        idx = torch.cat([idx, idx.new_full((*idx.shape[:-1], top - t), -1)], -1)
        shares = torch.cat([shares, shares.new_zeros((*shares.shape[:-1], top - t))], -1)
    return idx.numpy(), shares.numpy().astype(np.float32)


class Explainer:
    """Builds the ``explanation`` column of ``recsys score --explain`` from a run's stored explicit tables.

    Each row gets a list of up to ``top`` ``{concept, share}`` structs, largest contribution first.

    Args:
        queries: the stored (scorer-prepared) user table.
        items: the stored (scorer-prepared) item table.
        names: concept names, one per dimension.
        top: concepts per row.

    Shapes:
        queries: [U, K]; items: [N, K]
    """

    def __init__(self, queries: Tensor, items: Tensor, names: Sequence[str], top: int = 3) -> None:
        if queries.shape[1] != len(names) or items.shape[1] != len(names):
            raise ValueError(f"tables have {queries.shape[1]}/{items.shape[1]} dimensions for {len(names)} concepts")
        self.queries, self.items, self.top = queries, items, top
        self.names = np.asarray(list(names), dtype=object)

    @staticmethod
    def field():
        import pyarrow as pa

        return pa.field("explanation", pa.list_(pa.struct([("concept", pa.string()), ("share", pa.float32())])))

    def column(self, users: np.ndarray, items: np.ndarray):
        """The explanation of each (user row, item row) pair, as an Arrow list array."""
        import pyarrow as pa

        idx, shares = top_concepts(self.queries[torch.from_numpy(np.asarray(users, dtype=np.int64))],
                                   self.items[torch.from_numpy(np.asarray(items, dtype=np.int64))], self.names,
                                   self.top)
        ok = idx >= 0
        offsets = np.concatenate([[0], np.cumsum(ok.sum(1))]).astype(np.int32)
        values = pa.StructArray.from_arrays([pa.array(self.names[idx[ok]].tolist(), pa.string()),
                                             pa.array(shares[ok], pa.float32())], names=["concept", "share"])
        return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), values, type=self.field().type)


def attach_explicit(job) -> None:
    """Give a scoring job the ``explanation`` column, computed from its run's stored explicit tables.

    The top-k itself is the job's (exact, or through any ``--index`` such as ``seismic``); only the column is added.

    Args:
        job: the scoring job (:class:`recsys.scoring.batch._ScoringJob`); its ``run`` payload holds the tables.

    Raises:
        DataError: the run has no stored tables or no concept names (not an explicit-concept model).
    """
    from recsys.errors import DataError

    payload = job.run.payload
    if payload.tables is None or not payload.concepts:
        raise DataError("--explain needs a model with explicit concept dimensions (e.g. SESA); this run stores no "
                        "concept names", file=str(job.run.path / job.run.MODEL))
    job.explainer = Explainer(*payload.tables, payload.concepts)
    job.schema = job.schema.append(Explainer.field())
