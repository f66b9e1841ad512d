"""Vectorised negative sampling: uniform or popularity-weighted over items a user has not interacted with."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


class NegativeSampler:
    """Draw negatives for (user, ·) pairs, excluding each user's training items, with no per-sample Python loop.

    Rejection sampling: draw all candidates at once, find the ones that hit a training item by a binary search of
    ``user * n_items + item`` keys in the sorted CSR, redraw only those. Users who have interacted with nearly
    the whole catalogue fall back to allowing positives after ``max_rounds`` rather than looping forever.

    Args:
        train: user × item CSR of training interactions.
        distribution: ``"uniform"`` or ``"popularity"`` (probability ∝ train count ** ``alpha``).
        alpha: popularity exponent (0.75 as in word2vec).
        max_rounds: rejection rounds before giving up on the remaining collisions.
        blocked: item rows never drawn for anyone (the cold-item protocol's held-out items), or None.
    """

    def __init__(self, train: sp.csr_matrix, distribution: str = "uniform", alpha: float = 0.75,
                 max_rounds: int = 20, blocked: np.ndarray | None = None) -> None:
        if distribution not in ("uniform", "popularity"):
            raise ValueError(f"distribution must be 'uniform' or 'popularity', not {distribution!r}")
        train = train.tocsr()
        train.sort_indices()
        self.n_items = train.shape[1]
        rows = np.repeat(np.arange(train.shape[0], dtype=np.int64), np.diff(train.indptr))
        self._keys = rows * self.n_items + train.indices.astype(np.int64)
        self.max_rounds = max_rounds
        self._cdf = None
        self._blocked = None
        if blocked is not None and len(blocked):
            self._blocked = np.zeros(self.n_items, dtype=bool)
            self._blocked[np.asarray(blocked, dtype=np.int64)] = True
        if distribution == "popularity" or self._blocked is not None:
            pop = (np.asarray(train.sum(axis=0)).ravel().astype(np.float64) ** alpha + 1e-12
                   if distribution == "popularity" else np.ones(self.n_items))
            if self._blocked is not None:
                # Drawn from the allowed items only (no rejection loop that a large blocked share would slow).
                pop[self._blocked] = 0.0
            self._cdf = np.cumsum(pop / pop.sum())

    @classmethod
    def for_data(cls, data, distribution: str = "uniform") -> NegativeSampler:
        """A sampler over ``data``'s training matrix that never draws its cold-item protocol's items."""
        return cls(data.train, distribution, blocked=data.cold_items)

    def _draw(self, rng: np.random.Generator, shape) -> np.ndarray:
        if self._cdf is None:
            return rng.integers(0, self.n_items, size=shape, dtype=np.int64)
        idx = np.minimum(np.searchsorted(self._cdf, rng.random(size=shape), side="right"), self.n_items - 1)
        if self._blocked is not None:
            # A draw past the last allowed item's step of the CDF (float rounding) lands on a blocked row: step back.
            last = int(np.flatnonzero(~self._blocked)[-1])
            idx = np.minimum(idx, last)
        return idx

    def is_positive(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Whether each (user, item) pair is a training interaction.

        Shapes:
            users: broadcastable to items; items: [...] -> [...] bool
        """
        keys = np.asarray(users, dtype=np.int64) * self.n_items + np.asarray(items, dtype=np.int64)
        if len(self._keys) == 0:
            return np.zeros(keys.shape, dtype=bool)
        pos = np.minimum(np.searchsorted(self._keys, keys), len(self._keys) - 1)
        return self._keys[pos] == keys

    def sample(self, users: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
        """Negatives for each user.

        Shapes:
            users: [B] -> [B, n] int64
        """
        users = np.asarray(users, dtype=np.int64)
        out = self._draw(rng, (len(users), n))
        u = np.broadcast_to(users[:, None], out.shape)
        bad = self.is_positive(u, out)
        for _ in range(self.max_rounds):
            if not bad.any():
                break
            out[bad] = self._draw(rng, int(bad.sum()))
            bad[bad] = self.is_positive(u[bad], out[bad])
        return out
