"""Tests for GF-CF (recsys.baselines.GFCF): the Baseline contract, known answers against a dense numpy transcription
of the paper's formula, the truncated SVD against LAPACK, and checkpoints that load with ``weights_only=True``."""

from __future__ import annotations

import io
import logging

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from recsys.baselines import GFCF
from recsys.baselines.gfcf import normalized_interactions, top_right_singular_vectors
from recsys.data.prepared import PreparedData
from recsys.data.vocab import Vocabulary
from recsys.testing import BaselineConformance


class TestGFCFConformance(BaselineConformance):
    def make_model(self):
        return GFCF(k=8, alpha=0.3)  # truncated: the sparse SVD path


class TestGFCFFullRankConformance(BaselineConformance):
    def make_model(self):
        return GFCF()  # k=256 clamps to the checkerboard's 30 items: the dense SVD path


def log_data(dense: np.ndarray, held_out_items=(), held_out_users=()) -> PreparedData:
    """PreparedData whose train matrix is ``dense``; interactions of the held-out items/users become test only.

    Held-out items and users stay in the vocabularies with zero training degree.
    """
    users, items = np.nonzero(dense)
    labels = np.where(np.isin(items, held_out_items) | np.isin(users, held_out_users), 2, 0).astype(np.int8)
    uv, iv = Vocabulary.from_values(users, "user"), Vocabulary.from_values(items, "item")
    return PreparedData(uv, iv, uv.encode(users), iv.encode(items), labels, name="tiny")


def random_dense(shape, density=0.35, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    dense = rng.random(shape) < density
    diag = np.arange(max(shape))
    dense[diag % shape[0], diag % shape[1]] = True  # every user and item appears in the log
    return dense.astype(np.float64)


def numpy_gfcf(R: np.ndarray, alpha: float, k: int | None = None) -> np.ndarray:
    """The paper's scores in float64: ``R R̃ᵀR̃ + α R D_I^{-1/2} VᵀV D_I^{1/2}``.

    With ``k=None`` the ideal low-pass filter keeps every non-zero singular direction, so ``VᵀV`` is the projector
    onto R̃'s row space, ``pinv(R̃) R̃`` (no SVD involved); otherwise the top-k right singular vectors from LAPACK.
    """
    du, di = R.sum(1), R.sum(0)
    iu = np.divide(1.0, np.sqrt(du), out=np.zeros_like(du), where=du > 0)
    ii = np.divide(1.0, np.sqrt(di), out=np.zeros_like(di), where=di > 0)
    Rt = iu[:, None] * R * ii[None, :]
    if k is None:
        P = np.linalg.pinv(Rt) @ Rt
    else:
        vt = np.linalg.svd(Rt)[2][:k]
        P = vt.T @ vt
    return R @ Rt.T @ Rt + alpha * (R * ii[None, :]) @ P * np.sqrt(di)[None, :]


def all_scores(model, n_users: int) -> np.ndarray:
    return model.score_users(torch.arange(n_users)).numpy().astype(np.float64)


def train_dense(data: PreparedData) -> np.ndarray:
    return data.train.toarray().astype(np.float64)


@pytest.mark.parametrize("shape", [(14, 9), (8, 13)])  # more users than items, and fewer
@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_full_rank_matches_the_dense_formula(shape, alpha):
    data = log_data(random_dense(shape), held_out_items=[2], held_out_users=[3])
    R = train_dense(data)
    assert R[:, data.item_vocab.encode(np.array([2]))].sum() == 0  # a zero-degree item
    assert R[data.user_vocab.encode(np.array([3]))].sum() == 0  # and a zero-degree user
    model = GFCF(k=256, alpha=alpha)
    model.fit(data)
    got = all_scores(model, data.n_users)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, numpy_gfcf(R, alpha), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("solver", ["propack", "arpack", "lobpcg"])
def test_truncated_matches_lapack(solver):
    data = log_data(random_dense((40, 30), seed=4))
    R = train_dense(data)
    model = GFCF(k=5, alpha=0.5, solver=solver)
    model.fit(data)
    assert model.components.shape == (30, 5)
    np.testing.assert_allclose(all_scores(model, data.n_users), numpy_gfcf(R, 0.5, k=5), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("solver", ["propack", "arpack", "lobpcg"])
def test_fits_repeat_exactly(solver):
    data = log_data(random_dense((40, 30), seed=8))
    a, b = GFCF(k=5, solver=solver), GFCF(k=5, solver=solver)
    a.fit(data)
    np.random.seed(123)  # the global state must not matter
    b.fit(data)
    assert torch.equal(a.components, b.components)


def test_components_are_orthonormal_and_sorted():
    Rn, _ = normalized_interactions(sp.csr_matrix(random_dense((50, 35), seed=2)))
    V = top_right_singular_vectors(Rn, 6)
    np.testing.assert_allclose(V.T @ V, np.eye(6), atol=1e-8)
    s = np.linalg.norm(Rn @ V, axis=0)  # ‖R̃ v_j‖ = σ_j
    assert np.all(np.diff(s) <= 1e-12)
    np.testing.assert_allclose(s, np.linalg.svd(Rn.toarray(), compute_uv=False)[:6], rtol=1e-8)
    # The symmetric normalisation's largest singular value is 1.
    assert s[0] == pytest.approx(1.0)


def test_zero_singular_directions_are_dropped():
    dense = np.zeros((6, 5))
    dense[:3, :2] = 1  # two identical blocks of rank one: R̃ has rank 2
    dense[3:, 2:] = 1
    Rn, _ = normalized_interactions(sp.csr_matrix(dense))
    assert top_right_singular_vectors(Rn, 5).shape == (5, 2)


def test_normalisation_binarises_and_zero_degrees_stay_zero():
    R = sp.csr_matrix(np.array([[3.0, 0, 1], [0, 0, 0], [2.0, 0, 0]]))
    Rn, deg = normalized_interactions(R)
    np.testing.assert_array_equal(deg, [2, 0, 1])
    expected = np.array([[1 / np.sqrt(2 * 2), 0, 1 / np.sqrt(2 * 1)], [0, 0, 0], [1 / np.sqrt(1 * 2), 0, 0]])
    np.testing.assert_allclose(Rn.toarray(), expected)


def test_state_dict_round_trip_weights_only(tmp_path):
    data = log_data(random_dense((25, 18), seed=1), held_out_items=[0])
    model = GFCF(k=6, alpha=0.3)
    model.fit(data)
    path = tmp_path / "gfcf.pt"
    torch.save(model.state_dict(), path)
    state = torch.load(path, weights_only=True)
    assert set(state) == {"norm_indptr", "norm_indices", "norm_data", "item_degree", "components"}
    assert state["components"].dtype == torch.float32 and state["components"].shape == (18, 6)
    fresh = GFCF(k=6, alpha=0.3)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.score_users(torch.arange(data.n_users)), model.score_users(torch.arange(data.n_users)))


def test_loading_replaces_a_fitted_state():
    """In-place loading into an already fitted model must not keep scoring with the old matrices."""
    a, b = GFCF(k=4), GFCF(k=4)
    data_a = log_data(random_dense((20, 15), seed=5))
    data_b = log_data(random_dense((20, 15), seed=6))
    a.fit(data_a)
    b.fit(data_b)
    users = torch.arange(20)
    before = a.score_users(users)
    buf = io.BytesIO()
    torch.save(b.state_dict(), buf)
    buf.seek(0)
    a.load_state_dict(torch.load(buf, weights_only=True))
    assert not torch.equal(a.score_users(users), before)
    assert torch.equal(a.score_users(users), b.score_users(users))


def test_out_buffer_is_filled_and_returned():
    data = log_data(random_dense((30, 12), seed=3))
    model = GFCF(k=4)
    model.fit(data)
    users = torch.tensor([5, 0, 29, 5])
    expected = model.score_users(users)
    out = torch.full((4, 12), float("nan"))
    assert model.score_users(users, out) is out
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    wide = torch.full((4, 24), float("nan"))[:, ::2]  # not contiguous: scored aside, then copied
    assert model.score_users(users, wide) is wide
    torch.testing.assert_close(wide, expected, rtol=0, atol=0)
    assert model.score_users(torch.empty(0, dtype=torch.int64)).shape == (0, 12)


def test_more_users_than_one_sub_chunk():
    data = log_data(random_dense((600, 20), density=0.2, seed=7))
    model = GFCF(k=5)
    model.fit(data)
    np.testing.assert_allclose(all_scores(model, data.n_users), numpy_gfcf(train_dense(data), 0.3, k=5),
                               rtol=1e-4, atol=1e-4)


def test_clamped_k_is_logged(caplog):
    data = log_data(random_dense((10, 7)))
    with caplog.at_level(logging.INFO, logger="recsys.baselines.gfcf"):
        GFCF(k=50).fit(data)
    assert "k=50" in caplog.text and "min(n_users, n_items)=7" in caplog.text


def test_alpha_zero_skips_the_svd():
    data = log_data(random_dense((10, 7)))
    model = GFCF(alpha=0.0)
    model.fit(data)
    assert model.components.shape == (7, 0)


@pytest.mark.parametrize(("kwargs", "option"), [({"k": 0}, "k"), ({"alpha": -0.1}, "alpha"),
                                                 ({"alpha": float("nan")}, "alpha"), ({"solver": "svd"}, "solver")])
def test_bad_arguments_name_the_option(kwargs, option):
    with pytest.raises(ValueError, match=f"^GFCF: {option} "):
        GFCF(**kwargs)
