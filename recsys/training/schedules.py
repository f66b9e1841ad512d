"""Learning-rate schedules that ``RecModel(lr_schedule=...)`` steps once per optimizer step.

A schedule is a typed object (YAML: ``class_path``) that builds a torch scheduler once the run's length is known:
the total number of optimizer steps comes from the Lightning trainer (``estimated_stepping_batches``, which already
counts ``accumulate_grad_batches`` and ``max_epochs``), never from configuration.
"""

from __future__ import annotations

import math
import warnings
from typing import Literal

import torch
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

from recsys.errors import UsageError

__all__ = ["LRSchedule", "WarmupLinear"]


class LRSchedule:
    """Builds the scheduler of one run from its optimizer and its total number of optimizer steps."""

    def build(self, optimizer: torch.optim.Optimizer, total_steps: int) -> LRScheduler:
        """The scheduler, stepped once per optimizer step (Lightning ``interval: "step"``).

        Args:
            optimizer: the run's optimizer.
            total_steps: optimizer steps in the whole run (``trainer.estimated_stepping_batches``).
        """
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class WarmupLinear(LRSchedule):
    """Linear warm-up from 0 to the optimizer's lr, then linear decay to 0 at the run's last step.

    Recformer (Li et al., KDD 2023) trains this way: pre-training with transformers'
    ``get_linear_schedule_with_warmup`` and 0 warm-up steps (AaronHeee/RecFormer ``recformer/litmodels.py``),
    fine-tuning with its own copy of it and 100 warm-up steps (``optimization.py``, ``finetune.py --warmup_steps``).
    At optimizer step ``s`` of ``T`` with ``W`` warm-up steps the lr is multiplied by ``s / W`` while ``s < W``,
    then by

    - ``decay_from="warmup"``: ``max(0, (T - s) / (T - W))``, the peak at step ``W`` (transformers' version);
    - ``decay_from="start"``: ``max(0, 1 - s / T)``, a line from step 0, so it drops to ``1 - W / T`` at step ``W``
      (the official ``optimization.py``, which fine-tuning uses).

    The two agree when ``W = 0``.

    Args:
        warmup_steps: ``W`` in optimizer steps (not batches: 8 accumulated batches are one step).
        warmup_ratio: ``W = ceil(warmup_ratio × T)`` instead (transformers' ``TrainingArguments`` convention);
            at most one of the two is non-zero.
        decay_from: where the decay line starts, as above.
    """

    def __init__(self, warmup_steps: int = 0, warmup_ratio: float = 0.0,
                 decay_from: Literal["warmup", "start"] = "warmup") -> None:
        opt = "--model.init_args.lr_schedule.init_args"
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
            raise UsageError(f"{opt}.warmup_steps must be an integer >= 0, got {warmup_steps!r}")
        if (isinstance(warmup_ratio, bool) or not isinstance(warmup_ratio, (int, float))
                or not 0.0 <= warmup_ratio < 1.0):
            raise UsageError(f"{opt}.warmup_ratio must be a number in [0, 1), got {warmup_ratio!r}")
        if warmup_steps and warmup_ratio:
            raise UsageError(f"{opt}.warmup_steps and {opt}.warmup_ratio both set ({warmup_steps}, "
                             f"{warmup_ratio}): give one")
        if decay_from not in ("warmup", "start"):
            raise UsageError(f"{opt}.decay_from must be 'warmup' or 'start', got {decay_from!r}")
        self.warmup_steps, self.warmup_ratio, self.decay_from = warmup_steps, float(warmup_ratio), decay_from

    def warmup(self, total_steps: int) -> int:
        """``W`` for a run of ``total_steps`` optimizer steps."""
        return math.ceil(self.warmup_ratio * total_steps) if self.warmup_ratio else self.warmup_steps

    def factor(self, step: int, total_steps: int) -> float:
        """The lr multiplier at optimizer step ``step`` (0-based: the first update uses step 0)."""
        w = self.warmup(total_steps)
        if step < w:
            return step / max(1, w)
        if self.decay_from == "start":
            return max(0.0, 1.0 - step / max(1, total_steps))
        return max(0.0, (total_steps - step) / max(1, total_steps - w))

    def build(self, optimizer: torch.optim.Optimizer, total_steps: int) -> LRScheduler:
        w = self.warmup(total_steps)
        if w >= total_steps > 1:
            # Not an error: a short (CPU, fast_dev_run) run of an official config still trains, at a lower lr.
            warnings.warn(f"lr_schedule: {w} warm-up steps >= the run's {total_steps} optimizer steps, so the lr "
                          f"never reaches its peak", stacklevel=2)
        # A closure, not a stored callable: LambdaLR then checkpoints only its step count, and a resumed run
        # rebuilds the same closure from the same trainer-derived total.
        return LambdaLR(optimizer, lambda step: self.factor(step, total_steps))

    def __repr__(self) -> str:
        return (f"WarmupLinear(warmup_steps={self.warmup_steps}, warmup_ratio={self.warmup_ratio}, "
                f"decay_from={self.decay_from!r})")
