"""Unified Embedding: stable hashing, lookups and pooling, collision statistics, two towers, user cold start."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from recsys.data.features import FeatureSpec
from recsys.encoders import (
    FeatureEmbedding,
    FeatureTwoTower,
    PerFeatureTables,
    SingleHashTable,
    UnifiedTables,
    hashing,
)
from recsys.encoders.hashing import MERSENNE_61, UniversalHash, mulmod61, stable_key, stable_keys
from recsys.testing import EncoderConformance
from recsys.testing.fixtures import checkerboard, tiny_synthetic

VALUES = ["Action", "Comedy", "", "ünïcödé", "1995", 42, 7, "q3", "<missing>"]

# Buckets of VALUES under UniversalHash(1000, seed=0, salt=("genres", 1)), computed once: a change here means
# every trained Unified Embedding model would silently look up other rows.
GOLDEN = [int(b) for b in UniversalHash(1000, 0, ("genres", 1)).hash_values(VALUES)]



pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------------------------------- hashing
def test_hash_is_stable_across_processes_and_hash_seeds():
    # The module is loaded from its file so the child process skips importing torch (seconds on a busy machine).
    path = Path(hashing.__file__)
    code = ("import importlib.util, json, sys; "
            f"spec = importlib.util.spec_from_file_location('hashing', {str(path)!r}); "
            "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); "
            f"print(json.dumps(m.UniversalHash(1000, 0, ('genres', 1)).hash_values({VALUES!r}).tolist()))")
    outs = []
    for seed in ("0", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        outs.append(json.loads(out.stdout))
    assert outs[0] == outs[1] == GOLDEN


def test_hash_known_values():
    # Fixed digests pin the family across machines and library versions (BLAKE2b is specified by RFC 7693).
    assert stable_key("Action") == stable_key(b"Action") == stable_keys(["Action"])[0]
    assert stable_key(5) == stable_key("5") == stable_key(np.int64(5))
    h = UniversalHash(1 << 20, seed=7, salt=("item_id", 0))
    assert h.hash_values(["a", "b", "c"]).tolist() == [
        ((h.a * stable_key(v) + h.b) % MERSENNE_61) % (1 << 20) for v in "abc"]


def test_mulmod61_matches_big_integers():
    rng = np.random.default_rng(0)
    x = rng.integers(0, MERSENNE_61, size=5000, dtype=np.uint64)
    x[:3] = [0, 1, MERSENNE_61 - 1]
    for a in (1, 2, MERSENNE_61 - 1, 0x1234_5678_9ABC_DEF, int(rng.integers(1, MERSENNE_61))):
        expected = np.array([(a * int(v)) % MERSENNE_61 for v in x], dtype=np.uint64)
        np.testing.assert_array_equal(mulmod61(a, x), expected)


def test_hash_distribution():
    n, b = 100_000, 1000
    keys = stable_keys(range(n))  # sequential integers: the worst case for a weak hash
    counts = np.bincount(UniversalHash(b, 0, ("f", 0))(keys), minlength=b)
    chi2 = ((counts - n / b) ** 2 / (n / b)).sum()
    assert abs(chi2 - (b - 1)) < 6 * np.sqrt(2 * (b - 1))  # ~χ²(999): mean 999, sd ≈ 45
    # Two salts act as independent functions: pairs colliding under one rarely collide under the other.
    h0, h1 = UniversalHash(b, 0, ("f", 0))(keys[:5000]), UniversalHash(b, 0, ("f", 1))(keys[:5000])
    assert np.mean(h0 == h1) < 3 / b
    assert np.mean(UniversalHash(b, 1, ("f", 0))(keys[:5000]) == h0) < 3 / b  # another seed, another function


# ---------------------------------------------------------------------------------------------------- encoders
def tiny_data():
    """Six items with a categorical, a multi-valued and a numeric column; users with a country."""
    from recsys.data.prepared import PreparedData
    from recsys.data.vocab import Vocabulary

    items = pd.DataFrame({"item": np.arange(6), "color": ["r", "g", "b", "r", None, "g"],
                          "tags": [["x", "y"], ["y"], [], ["x", "y", "z"], ["z"], np.array(["x"])],
                          "year": [1990, 2000, 2010, np.nan, 1995, 2005]})
    users = pd.DataFrame({"user": np.arange(4), "country": ["US", "FR", "US", "DE"]})
    u = np.array([0, 0, 1, 1, 2, 2, 3])
    i = np.array([0, 1, 2, 3, 4, 5, 0])
    labels = np.array([0, 1, 0, 2, 0, 0, 2], dtype=np.int8)
    return PreparedData(Vocabulary(np.arange(4), "user"), Vocabulary(np.arange(6), "item"), u, i, labels,
                        np.arange(7), item_table=items, user_table=users)


ITEM_SPECS = [FeatureSpec("item_id", "@id", num_chunks=2), FeatureSpec("color", num_chunks=2),
              FeatureSpec("tags", kind="multi", num_chunks=2), FeatureSpec("year", kind="numeric", buckets=3,
                                                                             num_chunks=2)]


def test_unified_lookup_concatenates_chunks_and_pools():
    data = tiny_data()
    for pooling in ("mean", "sum"):
        enc = FeatureEmbedding(UnifiedTables(num_tables=3, buckets_per_table=50), features=ITEM_SPECS,
                               dim_per_table=4, pooling=pooling, out_dim=32, project=False)
        enc.bind(data, "item")
        w = enc.tables[0].weight
        assert w.shape == (3 * 50, 4) and enc.embedding_params == 600
        rows = torch.tensor([[3, 0], [5, 4]])
        out = enc(rows)
        assert out.shape == (2, 2, 32)
        # Rebuild row 3 by hand: every feature's chunk c is table t = (chunk counter) mod 3, row t·B + h_{f,c}.
        parts, counter = [], 0
        for spec in ITEM_SPECS:
            f = enc.features[spec.name]
            toks = f.row_tokens(3)
            for c in range(2):
                t = counter % 3
                counter += 1
                idx = t * 50 + UniversalHash(50, 0, (spec.name, c)).hash_values(toks)
                vecs = w[torch.from_numpy(idx)]
                parts.append(vecs.mean(0) if pooling == "mean" else vecs.sum(0))
        torch.testing.assert_close(out[0, 0], torch.cat(parts))
        assert enc.features["tags"].row_tokens(3) == ["x", "y", "z"]


def test_combine_sum_and_projection():
    data = tiny_data()
    enc = FeatureEmbedding(UnifiedTables(buckets_per_table=20), features=ITEM_SPECS, dim_per_table=4, combine="sum",
                           out_dim=5, hidden=(7,))
    enc.bind(data, "item")
    assert enc.feature_dim == 8
    assert enc(torch.arange(6)).shape == (6, 5)
    with pytest.raises(ValueError, match="equal feature widths"):
        specs = [FeatureSpec("item_id", "@id", num_chunks=1), FeatureSpec("color", num_chunks=2)]
        FeatureEmbedding(features=specs, combine="sum").bind(data, "item")


def test_many_rows_are_deduplicated_consistently():
    data = tiny_data()
    enc = FeatureEmbedding(UnifiedTables(buckets_per_table=20), features=ITEM_SPECS, dim_per_table=4, out_dim=8)
    enc.bind(data, "item")
    rows = torch.randint(0, 6, (5000,))
    torch.testing.assert_close(enc(rows), enc(torch.arange(6))[rows])


def test_collision_statistics():
    data = tiny_data()
    wide = FeatureEmbedding(UnifiedTables(num_tables=2, buckets_per_table=1 << 20), features=ITEM_SPECS,
                            dim_per_table=1, out_dim=4)
    wide.bind(data, "item")
    assert all(v == 0.0 for v in wide.collision_rates().values())
    one = FeatureEmbedding(UnifiedTables(num_tables=1, buckets_per_table=1), features=ITEM_SPECS, dim_per_table=1,
                           out_dim=4)
    one.bind(data, "item")
    stats = one.collision_stats()
    assert all(s["collided"] == s["all_probes"] == s["identical"] == 1.0 for s in stats.values())
    assert stats["color"]["values"] == 4  # r, g, b and <missing>
    # Per-feature tables without a budget hold whole vocabularies: collision-free.
    exact = FeatureEmbedding(PerFeatureTables(), features=ITEM_SPECS, dim_per_table=2, out_dim=4)
    exact.bind(data, "item")
    assert all(v == 0.0 for v in exact.collision_rates().values())
    assert exact.embedding_params == sum(len(f.vocab) * 4 for f in exact.features.values())
    # Two chunks rarely collide together: identical ≤ all_probes ≤ collided.
    mid = FeatureEmbedding(UnifiedTables(num_tables=2, buckets_per_table=5), features=ITEM_SPECS, dim_per_table=1,
                           out_dim=4)
    mid.bind(data, "item")
    for s in mid.collision_stats().values():
        assert s["identical"] <= s["all_probes"] <= s["collided"]


def test_equal_budgets_across_layouts():
    data = tiny_synthetic()
    sizes = {}
    for layout in (UnifiedTables(num_tables=2), PerFeatureTables(), SingleHashTable()):
        m = FeatureTwoTower(layout, budget=1500, dim_per_table=4, num_chunks=2, out_dim=16)
        m.bind(data)
        sizes[repr(layout)] = m.embedding_params
        assert m.collision_stats()["item"].keys() >= {"item_id", "concepts"}
    assert all(1400 <= s <= 1500 for s in sizes.values()), sizes
    # Water-filling: small vocabularies are kept whole, the ID table is hashed into what is left.
    enc = FeatureEmbedding(PerFeatureTables(), features=None, dim_per_table=4, num_chunks=2, compression=0.6)
    enc.bind(data, "item")
    assert enc.rows["category"] == 8 and enc.rows["year"] == len(enc.features["year"].vocab)
    assert enc.rows["item_id"] < data.n_items
    assert enc.collision_rates()["category"] == 0.0 and enc.collision_rates()["item_id"] > 0
    # Proportional: every feature compressed alike (at least one row).
    prop = FeatureEmbedding(PerFeatureTables(allocation="proportional"), dim_per_table=4, num_chunks=2,
                            compression=0.25)
    prop.bind(data, "item")
    assert prop.rows["item_id"] == data.n_items // 4 and prop.rows["category"] == 2
    assert prop.embedding_params <= 0.25 * sum(len(f.vocab) * 8 for f in prop.features.values())


def test_single_hash_uses_one_table():
    data = tiny_data()
    enc = FeatureEmbedding(SingleHashTable(buckets=7), features=ITEM_SPECS, dim_per_table=3, out_dim=4)
    enc.bind(data, "item")
    assert len(enc.tables) == 1 and enc.tables[0].weight.shape == (7, 6)
    assert enc(torch.arange(6)).shape == (6, 4)


# ---------------------------------------------------------------------------------------------------- two towers
class TestUnifiedTwoTower(EncoderConformance):
    lr = 0.02

    def make_encoder(self):
        return FeatureTwoTower(UnifiedTables(num_tables=2, buckets_per_table=64), dim_per_table=8, num_chunks=2,
                               out_dim=16)


class TestPerFeatureTwoTower(EncoderConformance):
    lr = 0.02
    learns_checkerboard = False  # the unified model above covers learning; this checks the contract

    def make_encoder(self):
        return FeatureTwoTower(PerFeatureTables(), dim_per_table=8, num_chunks=2, compression=0.5, out_dim=16)


def test_user_cold_start_gets_recommendations():
    """A user with features and a test interaction but no training rows is embedded and ranked."""
    from recsys.recommender import embedding_tables
    from recsys.scorers import DotScorer
    from recsys.scoring.topk import gemm_score_fn, topk

    data = tiny_data()
    cold = 3  # user 3's only interaction is in the test split
    assert data.train[cold].nnz == 0 and data.csr("test")[cold].nnz == 1
    for layout in (UnifiedTables(num_tables=2), PerFeatureTables(), SingleHashTable()):
        torch.manual_seed(0)
        enc = FeatureTwoTower(layout, dim_per_table=4, num_chunks=2, compression=0.5, out_dim=8,
                              user_features=[FeatureSpec("user_id", "@id"), FeatureSpec("country"),
                                             FeatureSpec("activity", "@count", "numeric", buckets=2)])
        enc.bind(data)
        assert enc.user.features["activity"].row_tokens(cold) == ["q0"]
        assert enc.user.features["country"].spec.num_chunks == 2  # unset in the spec: the encoder's num_chunks
        q, items = embedding_tables(enc, DotScorer(), data, up_to="train")
        assert q.shape == (4, 8) and torch.isfinite(q).all()
        top, scores = topk(gemm_score_fn(q, items), np.array([cold]), data.n_items, k=3, exclude=data.train)
        assert top.shape == (1, 3) and (top >= 0).all() and np.isfinite(scores).all()
        # A cold user shares its country's embedding with user 0, so their queries are related, not random.
        assert enc.user.features["country"].row_tokens(cold) == ["DE"]


def test_fit_and_reload_through_the_cli(tmp_path):
    """The config trains, and a reloaded run rebuilds identical features (hashes, buckets) from its Parquet."""
    from conftest import fit_args

    from recsys.cli import main
    from recsys.recommender import embedding_tables
    from recsys.runs import Run

    run = tmp_path / "ue"
    assert main(fit_args("unified_two_tower.yaml", run, "--trainer.fast_dev_run", "true")) == 0
    opened = Run.open(run)
    data = opened.data()
    model = opened.recommender(data)
    q, i = embedding_tables(model.encoder, model.scorer, data, up_to="all")
    torch.testing.assert_close(q, opened.payload.queries)
    torch.testing.assert_close(i, opened.payload.items)


def test_checkerboard_features():
    data = checkerboard()
    enc = FeatureTwoTower(UnifiedTables(num_tables=2, buckets_per_table=16), dim_per_table=4, out_dim=8)
    enc.bind(data)
    assert list(enc.item.features) == ["item_id", "genres", "popularity"]
    assert list(enc.user.features) == ["user_id", "activity"]


def test_layout_is_a_strategy_object_holding_only_its_own_arguments():
    import inspect
    from argparse import ArgumentError

    from jsonargparse import ArgumentParser

    from recsys.encoders import TwoSidedEncoder

    assert list(inspect.signature(UnifiedTables).parameters) == ["num_tables", "buckets_per_table"]
    assert list(inspect.signature(PerFeatureTables).parameters) == ["allocation"]
    assert list(inspect.signature(SingleHashTable).parameters) == ["buckets"]
    with pytest.raises(TypeError, match="layout must be an instance of TableLayout"):
        FeatureTwoTower("per_feature")
    with pytest.raises(ValueError, match="allocation must be one of 'water_filling', 'proportional'"):
        PerFeatureTables(allocation="equal")
    p = ArgumentParser(exit_on_error=False)
    p.add_subclass_arguments(TwoSidedEncoder, "encoder")
    spec = {"class_path": "recsys.encoders.FeatureTwoTower",
            "init_args": {"layout": {"class_path": "recsys.encoders.SingleHashTable", "init_args": {"buckets": 9}}}}
    enc = p.instantiate(p.parse_object({"encoder": spec})).encoder
    assert isinstance(enc.user.layout, SingleHashTable) and enc.item.layout.buckets == 9
    for bad in ({"layout": {"class_path": "recsys.encoders.SingleHashTable", "init_args": {"num_tables": 2}}},
                {"layout": "unified"}, {"pooling": "max"}):
        with pytest.raises(ArgumentError):
            p.parse_object({"encoder": {"class_path": "recsys.encoders.FeatureTwoTower", "init_args": bad}})
