"""Low-rank truncation and quantized codes are servable from the run directory alone (stored index tables)."""

import json

import pandas as pd
import pytest
from conftest import fit_args

from recsys.cli import main
from recsys.runs import Run


@pytest.fixture(scope="module")
def lowrank_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("lr") / "run"
    assert main(fit_args("mf_lowrank.yaml", run, epochs=2)) == 0
    return run


@pytest.fixture(scope="module")
def quantized_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("q") / "run"
    assert main(fit_args("mf_quantized.yaml", run, epochs=2)) == 0
    return run


def _evaluate(run, out, *extra):
    assert main(["evaluate", "--run-dir", str(run), "--out", str(out), *extra]) == 0
    return json.loads(out.read_text())


def test_fit_stores_the_lowrank_factors(lowrank_run):
    extras = Run.open(lowrank_run).payload.extras
    r = extras["basis"].shape[0]
    assert extras["query_factors"].shape[1] == extras["item_factors"].shape[1] == r


def test_lowrank_index_at_full_rank_is_exact_and_truncates_like_set_rank(lowrank_run, tmp_path):
    exact = _evaluate(lowrank_run, tmp_path / "e.json")
    full = _evaluate(lowrank_run, tmp_path / "f.json", "--index", "lowrank")
    assert full["ndcg@20"] == pytest.approx(exact["ndcg@20"], abs=1e-6)
    # The same truncation through the model: LowRank.set_rank(4) on the reloaded run.
    from recsys.metrics.evaluate import evaluate

    run = Run.open(lowrank_run)
    data = run.data()
    model = run.recommender(data)
    model.encoder.set_rank(4)
    want = evaluate(model, data, "test")
    got = _evaluate(lowrank_run, tmp_path / "r4.json", "--index", "lowrank:rank=4")
    assert got["ndcg@20"] == pytest.approx(want["ndcg@20"], abs=1e-6)


def test_quantized_index_serves_the_codes_exactly(quantized_run, tmp_path):
    extras = Run.open(quantized_run).payload.extras
    assert extras["codes"].dtype.is_floating_point is False and "codebook" in extras
    a, b = tmp_path / "q.parquet", tmp_path / "e.parquet"
    assert main(["score", "--run-dir", str(quantized_run), "--out", str(a), "--k", "5", "--index", "quantized"]) == 0
    assert main(["score", "--run-dir", str(quantized_run), "--out", str(b), "--k", "5"]) == 0
    qa, qb = pd.read_parquet(a), pd.read_parquet(b)
    assert (qa["item"].to_numpy() == qb["item"].to_numpy()).all()
    assert abs(qa["score"].to_numpy() - qb["score"].to_numpy()).max() < 1e-5
