"""Compatible upgrades by stationarity: every model is trained against one fixed regular-simplex classifier (CoReS).

A regular ``d``-simplex has ``d + 1`` unit vertices in ``R^d`` whose pairwise cosine is exactly ``-1/d``: the most
spread-out set of ``d + 1`` directions there is. CoReS fixes a classifier whose weights are these vertices (never
learned) and trains every model of a series against it, so class ``c``'s features point at the same vertex in a
model trained today and in one trained next year: their embeddings are comparable without ever seeing each other.

For a recommender the "classes" are groups of items. Each item is assigned once, deterministically, to one vertex
(its *prototype*): by a seeded clustering of the training interactions (items consumed by the same users share a
prototype, so the anchor agrees with the collaborative signal instead of fighting it), or by a seeded hash of its
external ID (stable when the catalogue or the log changes). An auxiliary cross-entropy over the fixed simplex
classifier (a fixed linear layer, as in CoReS) pulls each item's embedding (the first ``simplex_dim``
coordinates) towards its prototype and each user's towards the prototype of the item in its training pair. The
served embeddings are the inner encoder's, unchanged:
the simplex only shapes them during training, so two models fitted with the same seed and assignment on the same
catalogue share one coordinate frame, and ``recsys evaluate --gallery OLD`` can score new queries against an old
model's items.

Biondi, Pernici, Bruni & Del Bimbo, "CoReS: Compatible Representations via Stationarity", TPAMI 2023; the fixed
simplex classifier of Pernici, Bruni, Baecchi & Del Bimbo, "Regular Polytope Networks", TNNLS 2021.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from recsys.capabilities import StepOutput
from recsys.data.batch import Batch
from recsys.encoders.base import TwoSidedEncoder
from recsys.encoders.wrapper import EncoderWrapper
from recsys.errors import UsageError

__all__ = ["StationarySimplex", "cluster_assignment", "hash_assignment", "simplex_vertices"]


def simplex_vertices(d: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """The ``d + 1`` vertices of a regular simplex centred at the origin of ``R^d``, in closed form.

    Built from the Helmert matrix ``H`` (``d × (d + 1)``, orthonormal rows orthogonal to the all-ones vector):
    ``H·e_i`` is the centred basis vector ``e_i - 1/(d+1)`` expressed in the hyperplane, so the vertices are the
    columns of ``H`` rescaled to unit norm. No randomness and no optimisation: every run, on every machine, gets
    the same vertices (up to float rounding of one closed formula in float64).

    Args:
        d: the dimension (≥ 1).
        dtype: the returned dtype (computed in float64).

    Shapes:
        -> [d + 1, d]; rows have unit norm and pairwise inner product ``-1/d``.
    """
    if not isinstance(d, int) or isinstance(d, bool) or d < 1:
        raise UsageError(f"simplex_dim must be a positive integer, got {d!r}")
    k = torch.arange(1, d + 1, dtype=torch.float64)[:, None]  # Helmert row k (1-based)
    j = torch.arange(1, d + 2, dtype=torch.float64)[None, :]  # column j (1-based)
    norm = torch.sqrt(k * (k + 1))
    helmert = torch.where(j <= k, 1.0 / norm, torch.where(j == k + 1, -k / norm, torch.zeros(())))
    return (helmert.T * np.sqrt((d + 1) / d)).to(dtype)


def hash_assignment(item_ids: np.ndarray, n_prototypes: int, seed: int = 0) -> np.ndarray:
    """A seeded, uniform assignment of items to prototypes from their external IDs alone.

    The same ID gets the same prototype whatever else is in the catalogue, so the assignment survives new items
    and a grown log (the stationarity CoReS relies on).

    Args:
        item_ids: external item IDs (integers or strings).
        n_prototypes: the number of prototypes.
        seed: the hash key's seed.

    Shapes:
        item_ids: [N] -> [N] (int64 in [0, n_prototypes))
    """
    import pandas as pd

    ids = np.asarray(item_ids)
    if ids.dtype.kind in "OUS":
        ids = ids.astype(str).astype(object)
    # pandas' hash is stable across processes (Python's own str hash is salted per process); it ignores its key
    # for numbers, so the seed is mixed in afterwards with splitmix64's finaliser (every bit of h and seed counts).
    h = pd.util.hash_array(ids, categorize=False)
    with np.errstate(over="ignore"):
        h = h + np.uint64(0x9E3779B97F4A7C15) * np.uint64(seed + 1)
        h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        h = h ^ (h >> np.uint64(31))
    return (h % np.uint64(n_prototypes)).astype(np.int64)


def cluster_assignment(train, n_prototypes: int, seed: int = 0, rank: int = 32, iterations: int = 25,
                       item_ids: np.ndarray | None = None) -> np.ndarray:
    """A seeded spherical k-means of the items' co-consumption profiles: one cluster per prototype.

    Item profiles are the leading singular directions of the binary training matrix (a randomized SVD with a
    seeded sketch and two power iterations), L2-normalised; Lloyd's algorithm then starts from seeded distinct
    items. Everything is drawn from ``np.random.default_rng(seed)``, so the same data and seed give the same
    clusters in every run; cluster ``k`` is prototype ``k``. Items without training interactions have no profile
    and take :func:`hash_assignment` (of ``item_ids`` when given, else of their row).

    Args:
        train: the binary training matrix (scipy sparse, users × items).
        n_prototypes: the number of clusters.
        seed: the sketch's and the initialisation's seed.
        rank: the profiles' dimension.
        iterations: Lloyd iterations.
        item_ids: external item IDs for the fallback of items without interactions.

    Shapes:
        train: [U, N] -> [N] (int64 in [0, n_prototypes))
    """
    import scipy.sparse as sp

    x = sp.csr_matrix(train, dtype=np.float64)
    n_users, n_items = x.shape
    rng = np.random.default_rng(seed)
    r = max(1, min(rank, n_users, n_items))
    q = x.T @ rng.standard_normal((n_users, min(r + 8, n_users)))
    for _ in range(2):  # power iterations, re-orthonormalised: the sketch converges to the top singular space
        q, _ = np.linalg.qr(q)
        q = x.T @ (x @ q)
    q, _ = np.linalg.qr(q)
    u, s, _ = np.linalg.svd(np.asarray(x @ q).T, full_matrices=False)  # the small r' × U problem
    profiles = (q @ u[:, :r]) * s[:r]
    norms = np.linalg.norm(profiles, axis=1)
    seen = norms > 1e-12
    out = hash_assignment(np.arange(n_items) if item_ids is None else item_ids, n_prototypes, seed)
    if not seen.any():
        return out
    z = profiles[seen] / norms[seen, None]
    k = min(n_prototypes, len(z))
    centroids = z[rng.choice(len(z), size=k, replace=False)]
    labels = np.zeros(len(z), dtype=np.int64)
    for _ in range(iterations):
        labels = (z @ centroids.T).argmax(1)
        for c in range(k):
            members = z[labels == c]
            if len(members):  # an empty cluster keeps its centroid (its prototype stays unused)
                m = members.sum(0)
                centroids[c] = m / max(np.linalg.norm(m), 1e-12)
    out[seen] = labels
    return out


class StationarySimplex(EncoderWrapper):
    """An encoder trained against a fixed regular-simplex classifier over item prototypes (CoReS for recommenders).

    The wrapper serves the inner encoder's embeddings unchanged; during training it adds ``weight ×`` the
    cross-entropy of the candidates' (and, with ``queries``, the users') first ``simplex_dim`` coordinates,
    scored by inner product (as CoReS's fixed linear classifier; ``normalize``: by cosine) against the
    ``simplex_dim + 1`` fixed vertices at ``temperature``, towards their items' prototypes. Vertices
    are built in closed form (:func:`simplex_vertices`) and the assignment is a deterministic function of ``seed``
    and the data (``cluster``) or of ``seed`` and the item IDs (``hash``): train the old and
    the new model with the same ``simplex_dim``, ``assignment`` and ``seed`` and their embeddings are compatible.

    Args:
        encoder: the wrapped two-sided encoder (its capabilities are kept).
        simplex_dim: the simplex's dimension ``d`` (``d + 1`` prototypes) on the first ``d`` coordinates; None: the
            encoder's whole width. A wider new model (more coordinates than the old one) keeps the simplex on the
            old model's width, the coordinates a gallery is scored with.
        assignment: ``cluster`` (seeded k-means of co-consumption: anchors agree with the collaborative signal; the
            same log is needed across models) or ``hash`` (seeded hash of external item IDs: survives catalogue
            and log changes).
        seed: seeds the assignment; the vertices need none.
        weight: weight of the auxiliary cross-entropy.
        temperature: the logits' temperature.
        queries: also pull each training user towards its positive item's prototype.
        normalize: cosine logits instead of inner products. Its gradient grows as ``1/‖x‖``, so with small initial
            embeddings (MF's ``init_std: 0.01``) it overwhelms the ranking loss: on P1 it stalled BPR (test
            ndcg@20 0.065 against 0.219); off by default.

    Shapes:
        batch.users: [B]; batch.items: [B, C] -> (query [B, D], items [B, C, D]); prototypes: [simplex_dim + 1,
        simplex_dim]; assignment: [n_items]
    """

    def __init__(self, encoder: TwoSidedEncoder, simplex_dim: int | None = None,
                 assignment: Literal["cluster", "hash"] = "cluster", seed: int = 0, weight: float = 0.1,
                 temperature: float = 1.0, queries: bool = True, normalize: bool = False) -> None:
        super().__init__(encoder)
        if simplex_dim is not None and (not isinstance(simplex_dim, int) or isinstance(simplex_dim, bool)
                                        or simplex_dim < 1):
            raise UsageError(f"StationarySimplex simplex_dim must be a positive integer or null, got {simplex_dim!r}")
        if assignment not in ("cluster", "hash"):
            raise UsageError(f"StationarySimplex assignment must be 'cluster' or 'hash', got {assignment!r}")
        if not (isinstance(weight, (int, float)) and weight >= 0):
            raise UsageError(f"StationarySimplex weight must be a non-negative number, got {weight!r}")
        if not (isinstance(temperature, (int, float)) and temperature > 0):
            raise UsageError(f"StationarySimplex temperature must be a positive number, got {temperature!r}")
        self.simplex_dim, self.assignment_kind, self.seed = simplex_dim, assignment, int(seed)
        self.weight, self.temperature, self.queries = float(weight), float(temperature), bool(queries)
        self.normalize = bool(normalize)
        # Fixed geometry, not learned and not stored: rebuilt in closed form whenever the width is known.
        self.register_buffer("prototypes", torch.zeros(0, 0), persistent=False)
        # The assignment is part of the model (stored): a served run keeps the prototypes it was trained with.
        self.register_buffer("assignment", torch.zeros(0, dtype=torch.long))

    def bind_wrapper(self, data) -> None:
        d = self.out_dim if self.simplex_dim is None else self.simplex_dim
        if d > self.out_dim:
            raise UsageError(f"StationarySimplex simplex_dim ({d}) exceeds the encoder's width ({self.out_dim})")
        self.prototypes = simplex_vertices(d).to(self.assignment.device)
        ids = np.asarray(data.item_vocab.ids)
        if self.assignment_kind == "hash":
            rows = hash_assignment(ids, d + 1, self.seed)
        else:
            rows = cluster_assignment(data.csr("train"), d + 1, self.seed, item_ids=ids)
        self.assignment = torch.from_numpy(rows).to(self.assignment.device)

    def wrapper_catalogue_state(self) -> list[str]:
        # One prototype per item of the bound catalogue, rebuilt by bind_wrapper: another dataset gets its own.
        return ["assignment"]

    def prototype_logits(self, x: Tensor) -> Tensor:
        """Logits of embeddings' first ``simplex_dim`` coordinates against the fixed vertices, at the temperature.

        Shapes:
            x: [..., D] -> [..., simplex_dim + 1]
        """
        p = self.prototypes.to(x.dtype)
        x = x[..., :p.shape[1]]
        return (F.normalize(x, dim=-1) if self.normalize else x) @ p.T / self.temperature

    def wrapper_losses(self, batch: Batch, inner: StepOutput, state=None) -> dict[str, Tensor]:
        if not self.weight or batch.items is None:
            return {}
        query, cand = self.inner_rows(batch, inner)
        items = batch.items.reshape(-1)
        target = self.assignment[items]
        loss = F.cross_entropy(self.prototype_logits(cand.reshape(-1, cand.shape[-1])), target)
        if self.queries:
            # Users have no class of their own; the item of their training pair names the vertex to lean towards.
            loss = loss + F.cross_entropy(self.prototype_logits(query), self.assignment[batch.items[:, 0]])
        return {"simplex": self.weight * loss}
