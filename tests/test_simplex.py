"""Stationary d-simplex compatibility (CoReS): the fixed geometry, the assignment, compatibility, servability."""

import json
from functools import partial

import numpy as np
import pytest
import torch
from conftest import fit_args

from recsys.capabilities import ScoresAgainstTable, UsesGallery, capabilities_of
from recsys.cli import main
from recsys.encoders import Compatible, LightGCN, MatrixFactorization, StationarySimplex
from recsys.encoders.simplex import cluster_assignment, hash_assignment, simplex_vertices
from recsys.errors import UsageError
from recsys.testing import EncoderConformance, checkerboard
from recsys.testing.fixtures import group_separation

pytestmark = pytest.mark.usefixtures("one_thread")


# Known answers: the simplex.
@pytest.mark.parametrize("d", [1, 2, 3, 8, 64, 128])
def test_simplex_vertices_are_unit_with_pairwise_cosine_minus_one_over_d(d):
    p = simplex_vertices(d, dtype=torch.float64)
    assert p.shape == (d + 1, d)
    gram = p @ p.T
    torch.testing.assert_close(gram.diagonal(), torch.ones(d + 1, dtype=torch.float64), atol=1e-12, rtol=0)
    off = gram[~torch.eye(d + 1, dtype=torch.bool)]
    torch.testing.assert_close(off, torch.full_like(off, -1.0 / d), atol=1e-12, rtol=0)
    # Centred: the vertices sum to zero.
    torch.testing.assert_close(p.sum(0), torch.zeros(d, dtype=torch.float64), atol=1e-12, rtol=0)


def test_simplex_is_identical_across_constructions_and_needs_no_seed():
    torch.manual_seed(0)
    a = simplex_vertices(16)
    torch.manual_seed(123)
    b = simplex_vertices(16)
    assert torch.equal(a, b)
    e1, e2 = StationarySimplex(MatrixFactorization(dim=16)), StationarySimplex(MatrixFactorization(dim=16), seed=5)
    e1.bind(checkerboard())
    e2.bind(checkerboard())
    assert torch.equal(e1.prototypes, a) and torch.equal(e2.prototypes, a)


def test_simplex_dimension_is_refused_when_not_positive():
    with pytest.raises(UsageError, match="simplex_dim"):
        simplex_vertices(0)
    with pytest.raises(UsageError, match="simplex_dim"):
        StationarySimplex(MatrixFactorization(dim=8), simplex_dim=-1)
    enc = StationarySimplex(MatrixFactorization(dim=8), simplex_dim=9)
    with pytest.raises(UsageError, match="simplex_dim"):
        enc.bind(checkerboard())


@pytest.mark.parametrize("option,value", [("assignment", "kmeans"), ("weight", -1.0), ("temperature", 0.0)])
def test_bad_options_name_the_option(option, value):
    with pytest.raises(UsageError, match=option):
        StationarySimplex(MatrixFactorization(dim=8), **{option: value})


# Known answers: the assignment.
def test_hash_assignment_is_seeded_stable_and_per_id():
    ids = np.array(["a", "b", "c", "d", "e", "f"] * 5)
    a = hash_assignment(ids, 7, seed=3)
    assert np.array_equal(a, hash_assignment(ids, 7, seed=3))
    assert np.array_equal(a[:6], a[6:12])  # the same ID, the same prototype
    assert a.min() >= 0 and a.max() < 7
    # An item's prototype does not depend on the rest of the catalogue.
    assert hash_assignment(np.array(["c"]), 7, seed=3)[0] == a[2]
    ints = np.arange(2000)
    assert not np.array_equal(hash_assignment(ints, 7, 0), hash_assignment(ints, 7, 1))
    assert np.bincount(hash_assignment(ints, 7, 0), minlength=7).min() > 200  # near uniform


def test_cluster_assignment_recovers_the_checkerboard_groups_deterministically():
    data = checkerboard(n_groups=3, n_items=30)
    a = cluster_assignment(data.csr("train"), 3, seed=0, rank=4)
    assert np.array_equal(a, cluster_assignment(data.csr("train"), 3, seed=0, rank=4))
    groups = np.arange(data.n_items) % 3
    # One cluster per group (up to relabelling): the anchor agrees with the collaborative structure.
    for g in range(3):
        assert len(set(a[groups == g])) == 1
    assert len(set(a)) == 3


def test_the_assignment_is_stored_and_the_prototypes_are_not():
    enc = StationarySimplex(MatrixFactorization(dim=8))
    enc.bind(checkerboard())
    state = enc.state_dict()
    assert "assignment" in state and "prototypes" not in state
    assert state["assignment"].shape == (30,)


# Conformance and capabilities: the wrapper around MF and LightGCN.
class TestSimplexMF(EncoderConformance):
    def make_encoder(self):
        return StationarySimplex(MatrixFactorization(dim=8))


class TestSimplexLightGCN(EncoderConformance):
    def make_encoder(self):
        return StationarySimplex(LightGCN(dim=8, n_layers=2))


class TestSimplexHashMF(EncoderConformance):
    def make_encoder(self):
        return StationarySimplex(MatrixFactorization(dim=8), assignment="hash", simplex_dim=4)


def test_wrapper_keeps_the_wrapped_capabilities():
    assert isinstance(StationarySimplex(LightGCN(dim=8, n_layers=1)), ScoresAgainstTable)
    assert not isinstance(StationarySimplex(MatrixFactorization(dim=8)), ScoresAgainstTable)
    inner = Compatible(MatrixFactorization(dim=8))
    assert capabilities_of(StationarySimplex(inner)) == capabilities_of(inner)
    assert isinstance(StationarySimplex(inner), UsesGallery)


def test_served_embeddings_are_the_inner_encoders_and_the_loss_is_named():
    torch.manual_seed(0)
    data = checkerboard()
    enc = StationarySimplex(MatrixFactorization(dim=8), weight=0.5)
    enc.bind(data)
    torch.testing.assert_close(enc.item_table(), enc.encoder.item_table())
    from recsys.data.batch import Batch

    out = enc(Batch(torch.arange(4), torch.randint(0, data.n_items, (4, 3))))
    assert set(out.losses) == {"simplex"} and out.losses["simplex"] > 0
    out.losses["simplex"].backward()
    assert enc.encoder.item.table.weight.grad.abs().sum() > 0
    off = StationarySimplex(MatrixFactorization(dim=8), weight=0.0)
    off.bind(data)
    assert off(Batch(torch.arange(2), torch.zeros(2, 2, dtype=torch.long))).losses == {}


# Compatibility: two models with different seeds share a frame with the simplex, not without.
def _fit(seed: int, simplex: bool, data, epochs: int = 30):
    from recsys.data.datamodule import Loader
    from recsys.model import RecModel
    from recsys.recommender import embedding_tables
    from recsys.testing.training import fit_tiny

    torch.manual_seed(seed)
    enc = MatrixFactorization(dim=8)
    if simplex:
        enc = StationarySimplex(enc, weight=0.5)
    model = RecModel(enc, None, None, optimizer=partial(torch.optim.Adam, lr=0.01, weight_decay=1e-3))
    fit_tiny(model, data, Loader(batch_size=64, num_negatives=4), epochs, seed=seed)
    return embedding_tables(enc, model.scorer, data, up_to="train+valid")


def test_simplex_models_with_different_seeds_are_compatible_and_plain_ones_are_not():
    data = checkerboard()
    (_, i0), (q1, _) = _fit(0, False, data), _fit(1, False, data)
    plain = group_separation((q1 @ i0.T).numpy(), data)
    (s0, j0), (s1, _) = _fit(0, True, data), _fit(1, True, data)
    simplex = group_separation((s1 @ j0.T).numpy(), data)
    assert group_separation((s0 @ j0.T).numpy(), data) >= 0.9  # the simplex keeps the model accurate
    assert simplex >= 0.9 and simplex > plain + 0.3  # new queries rank the old items (seen: 1.0 vs 0.40)


# Servability: fit through the CLI, score and evaluate against another simplex model's gallery.
def test_simplex_upgrade_fits_scores_and_evaluates_against_the_old_gallery(tmp_path):
    old, new = tmp_path / "old", tmp_path / "new"
    small = ("--model.init_args.encoder.init_args.encoder.init_args.dim", "8")
    assert main(fit_args("mf_simplex.yaml", old, *small, "--seed", "1")) == 0
    assert main(fit_args("mf_simplex.yaml", new, *small, "--seed", "2")) == 0
    from recsys.runs import Run

    # Same data and assignment seed: the same prototypes in both runs, whatever the model seed.
    assert torch.equal(Run.open(old).payload.state_dict["encoder.assignment"],
                       Run.open(new).payload.state_dict["encoder.assignment"])
    assert main(["evaluate", "--run-dir", str(new), "--gallery", str(old), "--out", str(tmp_path / "g.json")]) == 0
    assert 0.0 <= json.loads((tmp_path / "g.json").read_text())["ndcg@20"] <= 1.0
    assert main(["evaluate", "--run-dir", str(new)]) == 0
    assert main(["score", "--run-dir", str(new), "--gallery", str(old), "--k", "5",
                 "--out", str(tmp_path / "s.parquet")]) == 0
    import pyarrow.parquet as pq

    assert pq.read_table(tmp_path / "s.parquet").num_rows > 0
    # The run rebuilds from its config and weights (the assignment is loaded, not recomputed differently).
    rec = Run.open(new).recommender()
    assert torch.equal(rec.encoder.assignment, Run.open(new).payload.state_dict["encoder.assignment"])
