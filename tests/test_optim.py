"""RowSparseRMSprop: TensorFlow 1's RMSProp on embedding tables (untouched rows keep their state)."""

import numpy as np
import pytest
import torch

from recsys.training import RowSparseRMSprop


def _reference(w, grads, lr, rho, eps, init):
    """TensorFlow's SparseApplyRMSProp, written out row by row."""
    w, ms = w.copy(), np.full_like(w, init)
    for g in grads:
        for r in range(len(w)):
            if np.any(g[r] != 0):
                ms[r] = rho * ms[r] + (1 - rho) * g[r] ** 2
                w[r] -= lr * g[r] / np.sqrt(ms[r] + eps)
    return w, ms


def test_matches_tensorflow_sparse_rmsprop():
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(6, 3))
    grads = []
    for _ in range(5):
        g = rng.normal(size=(6, 3))
        g[rng.random(6) < 0.5] = 0.0  # rows the step did not touch
        grads.append(g)
    p = torch.nn.Parameter(torch.tensor(w0))
    opt = RowSparseRMSprop([p], lr=0.05, alpha=0.9, eps=1e-10)
    for g in grads:
        p.grad = torch.tensor(g)
        opt.step()
    ref_w, ref_ms = _reference(w0, grads, 0.05, 0.9, 1e-10, 1.0)
    np.testing.assert_allclose(p.detach().numpy(), ref_w, rtol=1e-12)
    np.testing.assert_allclose(opt.state[p]["square_avg"].numpy(), ref_ms, rtol=1e-12)


def test_vector_parameters_and_bad_options():
    p = torch.nn.Parameter(torch.ones(3))
    opt = RowSparseRMSprop([p], lr=0.1)
    p.grad = torch.tensor([1.0, 0.0, -2.0])
    opt.step()
    ms = 0.9 + 0.1 * torch.tensor([1.0, 0.0, 4.0])
    torch.testing.assert_close(p.detach(), 1 - 0.1 * torch.tensor([1.0, 0.0, -2.0]) / ms.add(1e-10).sqrt())
    with pytest.raises(ValueError, match="RowSparseRMSprop"):
        RowSparseRMSprop([p], lr=0.0)
