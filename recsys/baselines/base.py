"""The interface of models fitted in closed form or by an external library rather than by Lightning."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Baseline(nn.Module):
    """A recommender that is fitted directly on the training matrix (no Lightning loop).

    It goes through the same evaluator and scorer as every trained model: ``score_users`` returns full score rows,
    and its state lives in tensors (buffers) so checkpoints round-trip through ``state_dict`` and load with
    ``torch.load(weights_only=True)``.
    """

    def fit(self, data) -> None:
        """Fit on ``data.train`` (a user × item CSR); ``data`` is the run's ``PreparedData``."""
        raise NotImplementedError

    def score_users(self, users: Tensor, out: Tensor | None = None) -> Tensor:
        """Scores of every item for each user row, written into ``out`` when given.

        Shapes:
            users: [B] -> [B, n_items]
        """
        raise NotImplementedError

    def bind(self, data) -> None:
        """Restore data-dependent context after loading a checkpoint (e.g. the training matrix)."""

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Buffers are empty until fit; take the stored shapes so a fresh instance can load a checkpoint.
        for name, buf in list(self._buffers.items()):
            key = prefix + name
            if key in state_dict and buf is not None and buf.shape != state_dict[key].shape:
                self._buffers[name] = torch.empty_like(state_dict[key])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
