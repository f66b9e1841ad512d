"""Principal axes: an exact rotation of both sides whose prefixes are the catalogue's best projections."""

from __future__ import annotations

import pytest
import torch
from conftest import fit_args

from recsys.cli import main
from recsys.encoders import LightGCN, MatrixFactorization, Matryoshka, PrincipalAxes
from recsys.encoders.principal import principal_rotation
from recsys.runs import Run
from recsys.scorers import CosineScorer, DotScorer
from recsys.testing import checkerboard

pytestmark = pytest.mark.usefixtures("one_thread")


def test_rotation_is_orthogonal_ordered_and_deterministic():
    g = torch.Generator().manual_seed(0)
    # Known spread: coordinate 2 varies most, then 0, then 1.
    items = torch.randn(500, 3, generator=g) * torch.tensor([2.0, 0.5, 5.0])
    r = principal_rotation(items)
    torch.testing.assert_close(r.T @ r, torch.eye(3), atol=1e-5, rtol=0)
    spread = (items @ r).pow(2).mean(0)
    assert spread[0] > spread[1] > spread[2]
    assert r[:, 0].abs().argmax() == 2 and r[:, 1].abs().argmax() == 0
    # The sign convention makes a refit of the same table (or of its negation's rows) the same matrix.
    torch.testing.assert_close(principal_rotation(items), r)
    torch.testing.assert_close(principal_rotation(-items), r)


@pytest.mark.parametrize("scorer", [DotScorer(), CosineScorer(0.2)])
@pytest.mark.parametrize("inner", ["mf", "lightgcn"])
def test_full_width_scores_are_unchanged_and_prefixes_are_principal(scorer, inner):
    torch.manual_seed(0)
    data = checkerboard()
    base = MatrixFactorization(dim=8) if inner == "mf" else LightGCN(dim=8, n_layers=2)
    enc = PrincipalAxes(base)
    enc.bind(data)
    enc.train()
    enc.eval()  # leaving training refits the rotation to the current item table
    inner_items = enc.inner_item_table()
    rows = torch.arange(data.n_users)
    from recsys.data.batch import Batch

    batch = Batch(rows, torch.zeros(len(rows), 1, dtype=torch.long))
    with torch.no_grad():
        q, i = scorer.prepare_queries(enc.encode_queries(batch)), scorer.prepare_items(enc.item_table())
        q0, i0 = scorer.prepare_queries(base.encode_queries(batch)), scorer.prepare_items(base.item_table())
    torch.testing.assert_close(q @ i.T, q0 @ i0.T, atol=1e-5, rtol=1e-5)
    # The served coordinates hold the item table's second moment in decreasing order (its eigenvalues).
    with torch.no_grad():
        spread = enc.item_table().pow(2).sum(0)
    assert (spread[:-1] >= spread[1:] - 1e-4).all()
    torch.testing.assert_close(spread, torch.linalg.eigvalsh(inner_items.T @ inner_items).flip(0),
                               atol=1e-3, rtol=1e-4)


def test_rotation_follows_training_and_is_stored_with_the_model(tmp_path):
    """Refitted when training steps moved the weights, never when they did not; a saved run serves its own."""
    run = tmp_path / "run"
    assert main(fit_args("mf_matryoshka.yaml", run, "--model.init_args.encoder.init_args.encoder.init_args."
                         "encoder.init_args.dim", "8", epochs=2)) == 0
    model = Run.open(run).recommender()
    pa = model.encoder.encoder
    assert isinstance(pa, PrincipalAxes) and not pa._stale
    stored = pa.rotation.clone()
    assert not torch.allclose(stored, torch.eye(8))
    torch.testing.assert_close(stored, principal_rotation(pa.inner_item_table()), atol=1e-5, rtol=1e-5)
    pa.train()
    pa.eval()  # no training step since the load: the stored rotation stays
    assert torch.equal(pa.rotation, stored)
    with torch.no_grad():
        pa.encoder.item.table.weight[:, 0] *= 10  # as a training step would move it
    pa.train()
    from recsys.data.batch import Batch

    pa(Batch(torch.arange(2), torch.zeros(2, 1, dtype=torch.long)))
    pa.eval()
    assert not torch.equal(pa.rotation, stored)


def test_a_one_dim_prefix_finds_the_signal_wherever_the_model_put_it():
    """A model whose item spread lies along its last coordinate: the raw 1-dim prefix (coordinate 0) is noise,
    the principal one is that coordinate (up to sign), what makes one trained model servable at every size."""
    torch.manual_seed(0)
    data = checkerboard()
    mf = MatrixFactorization(dim=8)
    enc = Matryoshka(PrincipalAxes(mf), dim=1)
    enc.bind(data)
    signal = torch.randn(data.n_items).sign()
    with torch.no_grad():
        mf.item.table.weight.normal_(0, 0.01)
        mf.item.table.weight[:, 7] = 3 * signal
    enc.train()
    enc.eval()
    with torch.no_grad():
        first = enc.item_table()[:, 0]
    corr = torch.corrcoef(torch.stack([first, signal]))[0, 1]
    assert corr.abs() > 0.999
    assert torch.corrcoef(torch.stack([mf.item.table.weight[:, 0].detach(), signal]))[0, 1].abs() < 0.5
