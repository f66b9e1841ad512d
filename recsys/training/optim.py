"""Optimizers that reference codes train with and torch lacks."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT

__all__ = ["RowSparseRMSprop"]


class RowSparseRMSprop(torch.optim.Optimizer):
    """RMSProp as TensorFlow 1's ``tf.train.RMSPropOptimizer`` applies it to embedding tables.

    The NGCF authors' ``BPRMF.py`` (the MF row of the NGCF and LightGCN papers' Gowalla tables) trains with it. Two
    differences from ``torch.optim.RMSprop`` change the dynamics of an embedding table: TensorFlow starts the mean
    square at ``initial_accumulator_value`` (1.0), not 0; and a gathered table receives a sparse gradient, so only
    the rows a step touched have their mean square decayed and are moved (``SparseApplyRMSProp``), where torch's
    dense update decays every row's mean square each step, so a row unseen for many steps takes a very large step
    when it next appears. Rows with an all-zero gradient count as untouched. The update is
    ``ms ← ρ ms + (1 - ρ) g²; p ← p - lr · g / sqrt(ms + eps)``.

    Args:
        params: the parameters (tensors of any shape; rows are the first dimension).
        lr: learning rate.
        alpha: the decay ρ (TensorFlow's ``decay``, 0.9).
        eps: added inside the square root (TensorFlow's ``epsilon``, 1e-10).
        initial_accumulator_value: the mean square's starting value (1.0 in TensorFlow).
    """

    def __init__(self, params: ParamsT, lr: float = 0.01, alpha: float = 0.9, eps: float = 1e-10,
                 initial_accumulator_value: float = 1.0) -> None:
        if lr <= 0 or not 0.0 <= alpha < 1.0 or eps < 0 or initial_accumulator_value < 0:
            raise ValueError(f"RowSparseRMSprop: need lr > 0, 0 <= alpha < 1, eps >= 0 and "
                             f"initial_accumulator_value >= 0 (got {lr}, {alpha}, {eps}, {initial_accumulator_value})")
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, initial_accumulator_value=initial_accumulator_value))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["square_avg"] = torch.full_like(p, group["initial_accumulator_value"])
                self._update(p, p.grad, state["square_avg"], group)
        return loss

    @staticmethod
    def _update(p: Tensor, g: Tensor, ms: Tensor, group: dict) -> None:
        if g.is_sparse:
            raise RuntimeError("RowSparseRMSprop takes dense gradients (rows with an all-zero gradient are skipped)")
        if p.dim() < 2:
            ms.mul_(group["alpha"]).addcmul_(g, g, value=1.0 - group["alpha"])
            p.addcdiv_(g, ms.add(group["eps"]).sqrt_(), value=-group["lr"])
            return
        flat = g.reshape(g.shape[0], -1)
        rows = flat.ne(0).any(dim=1).nonzero().squeeze(1)
        if len(rows) == 0:
            return
        gr = flat.index_select(0, rows)
        m = ms.reshape(ms.shape[0], -1).index_select(0, rows).mul_(group["alpha"]).addcmul_(gr, gr,
                                                                                          value=1.0 - group["alpha"])
        ms.reshape(ms.shape[0], -1).index_copy_(0, rows, m)
        step = gr.div_(m.add_(group["eps"]).sqrt_()).mul_(-group["lr"])
        p.reshape(p.shape[0], -1).index_add_(0, rows, step)
