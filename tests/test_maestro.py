"""Maestro's hierarchical group lasso in LowRank: the penalty's known values, rank discovery on a rank-4 matrix,
pruning at epoch boundaries, the stored rank, and the encoder contract around MF and LightGCN."""

import types

import pytest
import torch

from recsys.data.batch import Batch
from recsys.encoders import LightGCN, LowRank, MatrixFactorization
from recsys.encoders.lowrank import nested_group_norms
from recsys.errors import UsageError
from recsys.testing import EncoderConformance, checkerboard

pytestmark = pytest.mark.usefixtures("one_thread")


class TestMaestroMF(EncoderConformance):
    def make_encoder(self):
        return LowRank(MatrixFactorization(dim=8), dim=16, group_lasso=1e-3)


class TestMaestroLightGCN(EncoderConformance):
    def make_encoder(self):
        return LowRank(LightGCN(dim=8, n_layers=2), dim=16, group_lasso=1e-3)


def test_nested_group_norms_known_answer():
    a = torch.tensor([[1.0, 2.0, 0.0], [0.0, 1.0, 2.0]])  # components' squared norms 1, 5, 4
    b = torch.tensor([[3.0, 0.0, 0.0]])  # 9, 0, 0
    got = nested_group_norms([a, b], [0.5, 1.0])
    # Tails from b on: 0.5·(1+5+4) + 9, 0.5·(5+4), 0.5·4.
    torch.testing.assert_close(got, torch.tensor([14.0, 4.5, 2.0]).sqrt())


def test_group_lasso_term_is_the_sum_of_nested_norms():
    torch.manual_seed(0)
    enc = LowRank(MatrixFactorization(dim=8), dim=16, group_lasso=0.5, p_full=1.0)
    data = checkerboard()
    enc.bind(data)
    enc.train()
    batch = Batch(torch.arange(6), torch.randint(0, data.n_items, (6, 3)))
    out = enc(batch)
    q = enc.encoder.user.table.weight[batch.users]
    c = enc.encoder.item.table.weight[batch.items].reshape(-1, 8)
    want = 0.5 * nested_group_norms([q, c, enc.basis.T], [1 / 6, 1 / 18, 1.0]).sum()
    torch.testing.assert_close(out.losses["group_lasso"], want)
    out.losses["group_lasso"].backward()
    assert enc.basis.grad[-1].abs().sum() > 0
    # Off by default: plain ordered dropout adds no term and never prunes.
    plain = LowRank(MatrixFactorization(dim=8), dim=16)
    plain.bind(data)
    assert "group_lasso" not in plain(batch).losses


def _fit_rank4(group_lasso: float, p_full: float, epochs: int = 30, steps: int = 50) -> LowRank:
    """Fit ``LowRank(MF(16))`` to a rank-4 matrix (singular values 32, 28, 24, 20) by MSE, pruning each epoch."""
    torch.manual_seed(0)
    n_users, n_items = 60, 50
    qu, _ = torch.linalg.qr(torch.randn(n_users, 4))
    qv, _ = torch.linalg.qr(torch.randn(n_items, 4))
    target = qu @ torch.diag(torch.tensor([32.0, 28.0, 24.0, 20.0])) @ qv.T
    enc = LowRank(MatrixFactorization(dim=16, init_std=0.1), dim=16, p_full=p_full, group_lasso=group_lasso,
                  prune_threshold=0.02)
    enc.bind(types.SimpleNamespace(n_users=n_users, n_items=n_items))
    enc.train()
    opt = torch.optim.Adam(enc.parameters(), lr=0.01)
    batch = Batch(torch.arange(n_users), torch.arange(n_items).expand(n_users, n_items))
    for epoch in range(epochs):
        enc.on_train_epoch_start(epoch)
        for _ in range(steps):
            out = enc(batch)
            scores = (out.candidates @ out.query.unsqueeze(-1)).squeeze(-1)
            loss = (scores - target).pow(2).mean() + sum(out.losses.values())
            opt.zero_grad()
            loss.backward()
            opt.step()
    enc.eval()
    with torch.no_grad():
        enc.fit_error = float(((enc.encode_queries(batch) @ enc.item_table().T) - target).pow(2).mean() /
                              target.pow(2).mean())
    return enc


@pytest.mark.parametrize("group_lasso,p_full", [(0.01, 1.0), (0.003, 0.25)], ids=["lasso", "lasso+ordered"])
def test_group_lasso_discovers_rank_4(group_lasso, p_full, caplog):
    with caplog.at_level("INFO", logger="recsys.encoders.lowrank"):
        enc = _fit_rank4(group_lasso, p_full)
    assert enc.discovered_rank() == 4
    assert enc.fit_error < 0.01  # the four true components are kept, and fit
    assert "rank 16 ->" in caplog.text
    # Served, stored and reported at the discovered rank.
    assert enc.item_table().shape == (50, 16) and enc.bytes_per_item() == 16
    assert enc.parameter_count(n_rows=110) == 110 * 4 + 4 * 16
    extras = enc.serving_extras(lambda e: (e.encode_queries(Batch(torch.arange(60))), e.item_table()))
    assert extras["item_factors"].shape == (50, 4) and extras["basis"].shape == (4, 16)


def test_without_lasso_nothing_is_pruned():
    enc = _fit_rank4(0.0, 1.0, epochs=3)
    assert enc.discovered_rank() == 16


def test_discovered_rank_is_stored_with_the_model():
    enc = _fit_rank4(0.01, 1.0, epochs=6)
    state = enc.state_dict()
    assert int(state["active_rank"]) == enc.discovered_rank() < 16
    other = LowRank(MatrixFactorization(dim=16), dim=16, group_lasso=0.01)
    other.bind(types.SimpleNamespace(n_users=60, n_items=50))
    other.load_state_dict(state)
    other.eval()
    assert other.discovered_rank() == enc.discovered_rank()
    torch.testing.assert_close(other.item_table(), enc.item_table())


def test_prune_uses_the_relative_tail_and_never_grows():
    torch.manual_seed(0)
    enc = LowRank(MatrixFactorization(dim=6), dim=6, group_lasso=1.0, prune_threshold=0.1)
    enc.bind(checkerboard())
    with torch.no_grad():
        enc.basis.copy_(torch.eye(6))
        enc.basis[3:] *= 1e-3  # components 3..5 carry ~0.1% of the table
    frac = enc.tail_fractions()
    assert frac[0] == 1 and (frac[1:] <= frac[:-1]).all()
    assert enc.prune() == 3 and enc.discovered_rank() == 3
    enc.on_train_epoch_start(0)  # epoch 0: nothing has been trained yet, no pruning
    assert enc.prune() == 3


@pytest.mark.parametrize("kwargs", [{"group_lasso": -1.0}, {"prune_threshold": 1.0}])
def test_bad_options_are_refused(kwargs):
    with pytest.raises(UsageError, match=next(iter(kwargs))):
        LowRank(MatrixFactorization(dim=8), dim=16, **kwargs)


def test_state_saved_before_the_group_lasso_still_loads():
    enc = LowRank(MatrixFactorization(dim=8), dim=16)
    enc.bind(checkerboard())
    old = {k: v for k, v in enc.state_dict().items() if k != "active_rank"}
    enc.active_rank.fill_(3)
    enc.load_state_dict(old)
    assert enc.discovered_rank() == 8
