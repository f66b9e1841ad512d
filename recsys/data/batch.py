"""Typed training and query batches that move between devices as one object."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor


@dataclass
class Batch:
    """What an encoder needs to embed a batch of queries and candidate items.

    Args:
        users: user rows.
        items: candidate item rows; for training, column 0 is the positive and the rest are negatives.
        history: the users' item histories, most recent last, right-aligned and left-padded with -1 (sequence and
            history-aggregating encoders); None when no encoder needs it.

    Shapes:
        users: [B]; items: [B, C]; history: [B, L]
    """

    users: Tensor
    items: Tensor | None = None
    history: Tensor | None = None

    def to(self, device: torch.device | str) -> Batch:
        return replace(self, **{f.name: (v.to(device) if isinstance(v := getattr(self, f.name), Tensor) else v)
                                for f in fields(self)})

    def __len__(self) -> int:
        return len(self.users)
