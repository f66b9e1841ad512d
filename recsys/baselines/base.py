"""The base of models fitted in closed form or by an external library rather than by Lightning."""

from __future__ import annotations

from typing import TypeVar

import torch
from torch import Tensor, nn

from recsys.recommender import LightningFit, Recommender
from recsys.scoring.topk import ScoreFn

C = TypeVar("C")


class Baseline(nn.Module, Recommender):
    """A :class:`~recsys.recommender.Recommender` fitted directly on the training matrix (no Lightning loop).

    It goes through the same evaluator and scorer as every trained model: ``score_users`` returns full score rows
    (its :meth:`score_fn`), and its state lives in tensors (buffers) so checkpoints round-trip through
    ``state_dict`` and load with ``torch.load(weights_only=True)``. Factor models also serve user/item tables.
    """

    def fit(self, data, trainer: LightningFit | None = None) -> None:
        """Fit on ``data.train`` (a user × item CSR); ``data`` is the run's ``PreparedData``.

        Args:
            data: the prepared data.
            trainer: unused: baselines are fitted in closed form or by their own library.
        """
        raise NotImplementedError

    def score_fn(self, data, up_to: str = "train") -> ScoreFn:
        """:meth:`score_users`: the fitted state already holds what scoring needs (``up_to`` is the fit's)."""
        return self.score_users

    def score_users(self, users: Tensor, out: Tensor | None = None) -> Tensor:
        """Scores of every item for each user row, written into ``out`` when given.

        Shapes:
            users: [B] -> [B, n_items]
        """
        raise NotImplementedError

    def bind(self, data) -> None:
        """Restore data-dependent context before loading a checkpoint (none: the buffers hold everything)."""

    def capability(self, cap: type[C]) -> C | None:
        """This baseline itself when its class declares ``cap`` (e.g. :class:`recsys.capabilities.ScoresHistories`)."""
        return self if isinstance(self, cap) else None

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Buffers are empty until fit; take the stored shapes so a fresh instance can load a checkpoint.
        for name, buf in list(self._buffers.items()):
            key = prefix + name
            if key in state_dict and buf is not None and buf.shape != state_dict[key].shape:
                self._buffers[name] = torch.empty_like(state_dict[key])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
