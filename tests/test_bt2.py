"""BT² after the fact: a basis transformation fitted between an independently trained new model and the old one."""

import json
from functools import partial

import numpy as np
import pytest
import torch
from conftest import fit_args

from recsys.capabilities import ScoresAgainstTable
from recsys.cli import main
from recsys.encoders import BasisTransformation, LightGCN, MatrixFactorization
from recsys.encoders.compatible import basis_residual, fit_basis
from recsys.errors import UsageError
from recsys.testing import EncoderConformance, checkerboard
from recsys.testing.fixtures import group_separation
from recsys.upgrades import _main, fit_basis_run

pytestmark = pytest.mark.usefixtures("one_thread")


def _orthonormal_rows(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(cols, rows, generator=g, dtype=torch.float64))
    return q.T  # [rows, cols], orthonormal rows


# Known answers: the fit.
@pytest.mark.parametrize("orthogonality", [0.0, 1.0])
def test_an_exact_rotation_is_recovered_with_low_residual(orthogonality):
    g = torch.Generator().manual_seed(1)
    new = torch.randn(500, 8, generator=g, dtype=torch.float64)
    o = _orthonormal_rows(6, 8)
    old = 3.0 * new @ o.T  # another scale, 6 of 8 directions
    w = fit_basis(new.float(), old.float(), orthogonality)
    assert basis_residual(new, old, w) < 1e-3
    # Up to the global scale, the map is the rotation itself.
    w = w.double()
    torch.testing.assert_close(w / w.norm() * o.norm(), o, atol=1e-3, rtol=0)
    # The unmapped spaces are far apart: the residual of the identity is large.
    assert basis_residual(new[:, :6], old, torch.eye(6, dtype=torch.float64)) > 0.5


def test_a_general_linear_map_is_fitted_by_least_squares():
    g = torch.Generator().manual_seed(2)
    new = torch.randn(400, 8, generator=g)
    a = torch.randn(8, 8, generator=g)
    noise = 0.01 * torch.randn(400, 8, generator=g)
    w = fit_basis(new, new @ a.T + noise, orthogonality=0.0)
    assert basis_residual(new, new @ a.T + noise, w) < 0.01


def test_the_orthogonality_regulariser_pulls_the_map_towards_an_isometry():
    g = torch.Generator().manual_seed(3)
    new = torch.randn(300, 6, generator=g)
    a = torch.diag(torch.tensor([4.0, 2.0, 1.0, 1.0, 0.5, 0.25]))
    old = new @ a.T
    free, tied = fit_basis(new, old, 0.0), fit_basis(new, old, 100.0)

    def off_isometry(w):
        w = w / w.norm(dim=1).pow(2).mean().sqrt()
        return float((w @ w.T - torch.eye(6)).norm())

    assert off_isometry(tied) < 0.2 * off_isometry(free)


@pytest.mark.parametrize("bad", [-1.0, float("nan")])
def test_a_bad_orthogonality_is_refused_by_name(bad):
    with pytest.raises(UsageError, match="orthogonality"):
        fit_basis(torch.randn(4, 2), torch.randn(4, 2), bad)


# The served basis: an isometry whose leading coordinates are the map.
def test_the_served_basis_keeps_new_to_new_inner_products_exactly():
    torch.manual_seed(0)
    data = checkerboard()
    enc = BasisTransformation(MatrixFactorization(dim=8), old_dim=5)
    enc.bind(data)
    enc.set_map(torch.randn(5, 8))
    inner_q, inner_i = enc.encoder.encode_queries(_users(4)), enc.encoder.item_table()
    q, i = enc.encode_queries(_users(4)), enc.item_table()
    assert q.shape == (4, 13) and enc.out_dim == 13
    torch.testing.assert_close(q @ i.T, inner_q @ inner_i.T, atol=1e-5, rtol=1e-5)
    m = torch.cat([enc.map, enc.complement]).double()
    torch.testing.assert_close(m.T @ m, torch.eye(8, dtype=torch.float64), atol=1e-5, rtol=0)
    # The compatible coordinates are the map, rescaled: rankings against a gallery are unchanged by the scale.
    w = enc.map / enc.map.norm()
    assert torch.linalg.matrix_norm(enc.map.double(), ord=2) == pytest.approx(1.0, abs=1e-6)
    torch.testing.assert_close(q[:, :5] / q[:, :5].norm(), inner_q @ w.T / (inner_q @ w.T).norm(),
                               atol=1e-5, rtol=1e-4)


def test_a_fresh_wrapper_serves_the_new_model_with_no_compatible_coordinates():
    enc = BasisTransformation(MatrixFactorization(dim=4), old_dim=3)
    enc.bind(checkerboard())
    t = enc.item_table()
    assert torch.equal(t[:, :3], torch.zeros(30, 3))
    torch.testing.assert_close(t[:, 3:], enc.encoder.item_table())


def test_bad_widths_are_refused():
    with pytest.raises(UsageError, match="old_dim"):
        BasisTransformation(MatrixFactorization(dim=4), old_dim=0)
    enc = BasisTransformation(MatrixFactorization(dim=4), old_dim=3)
    with pytest.raises(ValueError, match="map must be"):
        enc.set_map(torch.zeros(4, 4))


def _users(n):
    from recsys.data.batch import Batch

    return Batch(torch.arange(n))


class _Mapped:
    def make_encoder(self):
        enc = BasisTransformation(self.inner(), old_dim=6)
        enc.set_map(torch.randn(6, 8, generator=torch.Generator().manual_seed(0)))
        return enc


class TestBasisTransformationMF(_Mapped, EncoderConformance):
    @staticmethod
    def inner():
        return MatrixFactorization(dim=8)


class TestBasisTransformationLightGCN(_Mapped, EncoderConformance):
    @staticmethod
    def inner():
        return LightGCN(dim=8, n_layers=2)


def test_wrapper_keeps_the_graph_encoders_table_capability():
    assert isinstance(BasisTransformation(LightGCN(dim=8, n_layers=1), old_dim=4), ScoresAgainstTable)


# Compatibility on tiny data: independently trained models are incompatible until the basis is fitted.
def _fit_mf(seed: int, data, dim: int = 8):
    from recsys.data.datamodule import Loader
    from recsys.model import RecModel
    from recsys.recommender import embedding_tables
    from recsys.testing.training import fit_tiny

    torch.manual_seed(seed)
    enc = MatrixFactorization(dim=dim)
    model = RecModel(enc, None, None, optimizer=partial(torch.optim.Adam, lr=0.01, weight_decay=1e-3))
    fit_tiny(model, data, Loader(batch_size=64, num_negatives=4), 30, seed=seed)
    return embedding_tables(enc, model.scorer, data, up_to="train+valid")


def test_the_fitted_basis_makes_independent_models_compatible():
    data = checkerboard()
    (_, i_old), (q_new, i_new) = _fit_mf(0, data), _fit_mf(1, data, dim=12)
    naive = group_separation((q_new[:, :8] @ i_old.T).numpy(), data)
    w = fit_basis(i_new, i_old, orthogonality=1.0)
    assert basis_residual(i_new, i_old, w) < basis_residual(i_new[:, :8], i_old, torch.eye(8))
    mapped = group_separation(((q_new @ w.T) @ i_old.T).numpy(), data)
    assert mapped >= 0.9 and mapped > naive + 0.2


# Servability: two independent CLI fits, the post-hoc fit, then evaluate and score against the old gallery.
def test_post_hoc_fit_writes_a_servable_run(tmp_path):
    old, new, out = tmp_path / "old", tmp_path / "new", tmp_path / "bt2"
    assert main(fit_args("mf_bpr.yaml", old, "--model.init_args.encoder.init_args.dim", "8", "--seed", "1")) == 0
    assert main(fit_args("mf_bpr.yaml", new, "--model.init_args.encoder.init_args.dim", "12", "--seed", "2")) == 0
    report = fit_basis_run(new, old, out, fit_on="both")
    assert report["pairs"] > 0 and report["residual"] < report["identity_residual"]
    assert json.loads((out / "basis_transformation.json").read_text())["fit_on"] == "both"
    from recsys.runs import Run

    assert Run.open(out).payload.tables[0].shape[1] == 8 + 12
    # new→new is the independent model's, exactly (the basis is an isometry).
    assert main(["evaluate", "--run-dir", str(new), "--out", str(tmp_path / "a.json")]) == 0
    assert main(["evaluate", "--run-dir", str(out), "--out", str(tmp_path / "b.json")]) == 0
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("a.json", "b.json"))
    assert b["ndcg@20"] == pytest.approx(a["ndcg@20"], abs=1e-6)
    assert main(["evaluate", "--run-dir", str(out), "--gallery", str(old), "--out", str(tmp_path / "g.json")]) == 0
    assert 0.0 <= json.loads((tmp_path / "g.json").read_text())["ndcg@20"] <= 1.0
    assert main(["score", "--run-dir", str(out), "--gallery", str(old), "--k", "5",
                 "--out", str(tmp_path / "s.parquet")]) == 0
    import pyarrow.parquet as pq

    assert pq.read_table(tmp_path / "s.parquet").num_rows > 0
    # The written run rebuilds from its config and weights to the stored tables.
    rec = Run.open(out).recommender()
    stored = Run.open(out).payload.items
    torch.testing.assert_close(rec.encoder.item_table().detach(), stored)
    # The module's command line: a refit over the same output, and a bad option named in one line.
    assert _main([str(new), str(old), str(out), "--overwrite", "--orthogonality", "0"]) == 0
    assert _main([str(new), str(old), str(tmp_path / "x"), "--fit-on", "nope"]) == 2
    assert not np.isnan(json.loads((out / "basis_transformation.json").read_text())["residual"])
