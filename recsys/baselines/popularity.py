"""Most-popular: the non-personalised sanity baseline every recommender has to beat."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from recsys.baselines.base import Baseline
from recsys.capabilities import Histories, ScoresHistories
from recsys.recommender import LightningFit

__all__ = ["MostPopular"]


class MostPopular(ScoresHistories, Baseline):
    """Scores every item by its number of training interactions, the same list for every user.

    A user given by a history alone (:class:`~recsys.capabilities.ScoresHistories`) gets the same list: the
    reference every fold-in has to beat.

    A strong baseline on popularity-skewed logs (Cremonesi, Koren and Turrin, "Performance of Recommender
    Algorithms on Top-N Recommendation Tasks", RecSys 2010); a model that does not beat it has learned little.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("popularity", torch.empty(0))

    def fit(self, data, trainer: LightningFit | None = None) -> None:
        """Count each item's training interactions (stored entries of ``data.train``)."""
        counts = np.diff(data.train.tocsc().indptr)
        self.popularity = torch.from_numpy(counts.astype(np.float32))

    @torch.no_grad()
    def score_users(self, users: Tensor, out: Tensor | None = None) -> Tensor:
        """The popularity row, broadcast to every user.

        Shapes:
            users: [B] -> [B, n_items]
        """
        rows = self.popularity.expand(len(users), -1)
        if out is None:
            return rows.clone()
        return out.copy_(rows)

    def score_histories(self, histories: Histories, rows: Tensor, out: Tensor | None = None) -> Tensor:
        """The popularity row, whatever the history.

        Shapes:
            rows: [R] -> [R, n_items]
        """
        return self.score_users(rows, out)
