"""Fault injection for tests of recovery: a Lightning callback that kills its own process mid-epoch."""

from __future__ import annotations

import os
import signal

import lightning as L

__all__ = ["KillAt"]


class KillAt(L.Callback):
    """SIGKILL the training process at a given epoch and batch (no cleanup runs: like an OOM kill or a lost node).

    Args:
        epoch: the 0-based epoch to die in.
        batch: the batch index within that epoch to die before.
    """

    def __init__(self, epoch: int, batch: int = 0) -> None:
        self.epoch, self.batch = epoch, batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            os.kill(os.getpid(), signal.SIGKILL)
