"""``recsys evaluate --index SPEC`` and ``recsys score --index SPEC`` on a tiny fitted MF run.

Every kind that applies to plain tables is checked against brute force (the exact top-k, or the scores of what the
index ranks by); bad specs fail in argparse's one line (exit 2), kinds the run cannot serve in the CLI's one line
(exit 1), and neither leaves an output file.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from recsys.cli import INDEX_HELP, main
from recsys.errors import DataError, MissingDependencyError
from recsys.recommender import table_score_fn
from recsys.runs import Run
from recsys.scoring.cascade import hamming_distances, pack_bits
from recsys.scoring.index import SPECS, parse_index_spec
from recsys.scoring.topk import topk

pytestmark = pytest.mark.usefixtures("one_thread")

try:
    import faiss  # noqa: F401

    HAS_FAISS = True
except ImportError:
    HAS_FAISS = False

#: specs that must rank exactly like brute force on the MF run (128 dims, 80 items): the full prefix, and
#: shortlists longer than the catalogue.
EXACT_LIKE = ["exact", "prefix:dim=128", "prefix:coarse=16,shortlist=1000", "prefix:dim=128,coarse=8,shortlist=1000",
              "hamming:shortlist=1000",
              pytest.param("faiss:flat", marks=pytest.mark.skipif(not HAS_FAISS, reason="faiss is not installed"))]


def _score(run, out, *extra: str, k: int = 10):
    assert main(["score", "--run-dir", str(run), "--out", str(out), "--k", str(k), *extra]) == 0
    return pq.read_table(out).to_pandas()


def _rows(run, table):
    """(user rows, item rows) of a score table, in the run's vocabularies."""
    r = Run.open(run)
    return r.vocab("user").encode(table.user.to_numpy()), r.vocab("item").encode(table.item.to_numpy())


@pytest.fixture(scope="module")
def exact_top(mf_run, tmp_path_factory):
    return _score(mf_run, tmp_path_factory.mktemp("exact") / "top.parquet")


def _error_line(err: str, command: str) -> str:
    """The one error line of a failed command (argparse prints its usage above it)."""
    lines = [ln for ln in err.strip().splitlines() if ln.startswith(f"recsys {command}: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


# ------------------------------------------------------------------------------------------------ score
@pytest.mark.parametrize("spec", EXACT_LIKE)
def test_score_index_equals_exact_top_k(mf_run, exact_top, tmp_path, spec):
    got = _score(mf_run, tmp_path / "top.parquet", "--index", spec)
    assert got[["user", "rank"]].equals(exact_top[["user", "rank"]])
    np.testing.assert_array_equal(got.item.to_numpy(), exact_top.item.to_numpy())
    np.testing.assert_allclose(got.score.to_numpy(), exact_top.score.to_numpy(), rtol=1e-5, atol=1e-6)


def test_score_at_a_prefix_and_by_codes_alone_rank_by_what_they_store(mf_run, tmp_path):
    payload = Run.open(mf_run).payload
    q, i = payload.tables
    t = _score(mf_run, tmp_path / "p.parquet", "--index", "prefix:dim=16", k=7)
    assert t.groupby("user").size().max() == 7
    users, items = _rows(mf_run, t)
    np.testing.assert_allclose(t.score.to_numpy(), (q[users, :16] * i[items, :16]).sum(1).numpy(), rtol=1e-4,
                               atol=1e-5)
    t = _score(mf_run, tmp_path / "h.parquet", "--index", "hamming:codes_only=true", k=7)
    users, items = _rows(mf_run, t)
    dist = hamming_distances(pack_bits(q), pack_bits(i))
    np.testing.assert_array_equal(t.score.to_numpy(), -dist[users, items].astype(np.float32))
    assert (np.diff(t.score.to_numpy().reshape(-1, 7), axis=1) <= 0).all()  # best first


# ------------------------------------------------------------------------------------------------ evaluate
@pytest.mark.parametrize("spec", ["prefix:dim=128", "prefix:coarse=16,shortlist=1000", "hamming:shortlist=1000",
                                  "hamming:codes_only=true", "prefix:dim=16,coarse=4,shortlist=20",
                                  pytest.param("faiss:flat", marks=pytest.mark.skipif(not HAS_FAISS,
                                                                                      reason="no faiss"))])
def test_evaluate_writes_the_spec_tagged_file(mf_run, capsys, spec):
    exact = json.loads((mf_run / "metrics.json").read_text())
    index = parse_index_spec(spec)
    assert main(["evaluate", "--run-dir", str(mf_run), "--index", spec]) == 0
    out = capsys.readouterr().out
    assert f"test metrics (index {index})" in out and "beyond accuracy" not in out
    m = json.loads((mf_run / f"eval_test_{index.tag()}.json").read_text())
    assert set(m) == set(exact) and all(0.0 <= v <= 1.0 for v in m.values())
    if "1000" in spec or spec in ("prefix:dim=128", "faiss:flat"):
        for key, value in exact.items():
            assert m[key] == pytest.approx(value, abs=1e-6), key


def test_evaluate_exact_keeps_the_default_output(mf_run, capsys):
    assert main(["evaluate", "--run-dir", str(mf_run), "--split", "valid", "--index", "exact"]) == 0
    assert "beyond accuracy" in capsys.readouterr().out
    m = json.loads((mf_run / "eval_valid.json").read_text())
    assert "coverage@20" in m
    assert not list(mf_run.glob("eval_valid_*.json"))


def test_evaluate_with_a_gallery_and_an_index(mf_run, capsys):
    # The run as its own gallery: the same item table, so the full prefix is exact.
    assert main(["evaluate", "--run-dir", str(mf_run), "--index", "prefix:dim=128", "--gallery", str(mf_run)]) == 0
    assert "gallery" in capsys.readouterr().out
    m = json.loads((mf_run / "eval_test_prefix_dim_128_gallery.json").read_text())
    assert m["ndcg@20"] == pytest.approx(json.loads((mf_run / "metrics.json").read_text())["ndcg@20"], abs=1e-6)


# ------------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("spec, message", [
    ("prefix:dim=0", "argument --index: index 'prefix': option 'dim' must be >= 1, got 0"),
    ("nosuch", "argument --index: unknown index kind 'nosuch'; allowed: exact, prefix"),
    ("prefix:dim=32,shortlist=5", "option 'shortlist' needs option 'coarse'"),
    ("hamming:codes_only=true,shortlist=5", "it takes no 'shortlist' or 'dim'"),
    ("faiss:annoy", "index 'faiss': option 'index' must be one of flat, ivf, hnsw, binary, got 'annoy'"),
])
@pytest.mark.parametrize("command", ["evaluate", "score"])
def test_bad_spec_is_one_argparse_line_and_writes_nothing(mf_run, tmp_path, capsys, spec, message, command):
    before = set(mf_run.glob("eval_*.json"))
    out = tmp_path / "o.parquet"
    argv = [command, "--run-dir", str(mf_run), "--index", spec] + (["--out", str(out)] if command == "score" else [])
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert message in _error_line(capsys.readouterr().err, command)
    assert not out.exists() and set(mf_run.glob("eval_*.json")) == before


@pytest.mark.parametrize("spec, message", [
    ("lowrank:rank=8", "index 'lowrank' needs a low-rank model"),
    ("quantized", "index 'quantized' needs a latent-quantization model"),
    ("seismic", "index 'seismic' needs non-negative item vectors"),
    ("prefix:dim=512", "index 'prefix': option 'dim'=512 exceeds the model's 128 dimensions"),
    ("hamming:bits=200", "index 'hamming': option 'bits'=200 exceeds the model's 128 dimensions"),
    ("pq:M=3", "index 'pq': option 'M'=3 must divide the model's 128 dimensions"),
    ("pq:stored=true", "index 'pq:stored=true' needs a ProductQuantization model"),
])
@pytest.mark.parametrize("command", ["evaluate", "score"])
def test_kind_the_run_cannot_serve_fails_in_one_line(mf_run, tmp_path, capsys, spec, message, command):
    assert (Run.open(mf_run).payload.items < 0).any()  # MF: a signed table, which Seismic cannot index
    before = set(mf_run.glob("eval_*.json"))
    out = tmp_path / "o.parquet"
    argv = [command, "--run-dir", str(mf_run), "--index", spec] + (["--out", str(out)] if command == "score" else [])
    assert main(argv) == 1
    assert message in _error_line(capsys.readouterr().err, command)
    assert not out.exists() and set(mf_run.glob("eval_*.json")) == before


def test_missing_faiss_is_one_line(mf_run, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "faiss", None)  # `import faiss` now raises ImportError
    out = tmp_path / "o.parquet"
    assert main(["score", "--run-dir", str(mf_run), "--out", str(out), "--index", "faiss:hnsw,m=8"]) == 1
    line = _error_line(capsys.readouterr().err, "score")
    assert line == "recsys score: error: faiss is not installed: pip install 'recsys[ann]'"
    assert not out.exists()


def test_lightning_scoring_refuses_a_non_exact_index(mf_run, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["score", "--run-dir", str(mf_run), "--out", str(tmp_path / "o"), "--index", "prefix:dim=16",
              "--trainer.devices", "1"])
    assert e.value.code == 2
    assert "non-exact --index" in _error_line(capsys.readouterr().err, "score")


def test_help_names_every_kind_with_an_example_that_parses():
    examples = ["exact", "prefix:dim=32", "prefix:dim=32,coarse=8,shortlist=200", "hamming:shortlist=200",
                "hamming:codes_only=true", "lowrank:rank=8", "quantized", "seismic:n_postings=2000,query_cut=10",
                "faiss:hnsw,m=32", "pq:M=8,K=256,rerank=200", "rq:M=8,K=256"]
    assert {parse_index_spec(e).kind for e in examples} == set(SPECS)
    for e in examples:
        assert e in INDEX_HELP


# ------------------------------------------------------------------------------------------------ new items, galleries
def test_new_items_keep_plain_table_indexes_and_drop_the_stored_index_tables():
    g = torch.Generator().manual_seed(0)
    q, i, new = torch.randn(5, 8, generator=g), torch.randn(20, 8, generator=g), torch.randn(3, 8, generator=g)
    full = torch.cat([i, new])
    users = np.arange(5)
    want = topk(lambda rows, out: q[rows] @ full.T, users, 23, 6)
    for spec in ("exact", "prefix:coarse=2,shortlist=23", "hamming:shortlist=23"):
        fn = table_score_fn(q, i, index=parse_index_spec(spec), extra_items=new)
        got = topk(fn, users, 23, 6)
        np.testing.assert_array_equal(got[0], want[0])
    # A low-rank model's stored factors describe the trained items only: with new items they are not used.
    extras = {"query_factors": torch.randn(5, 4), "item_factors": torch.randn(20, 4), "basis": torch.randn(4, 8)}
    table_score_fn(q, i, index=parse_index_spec("lowrank:rank=2"), extras=extras)  # builds without new items
    with pytest.raises(DataError, match="needs a low-rank model.*new items replace the item table"):
        table_score_fn(q, i, index=parse_index_spec("lowrank:rank=2"), extras=extras, extra_items=new)
    with pytest.raises(DataError, match="needs a low-rank model.*gallery"):
        table_score_fn(q, i, index=parse_index_spec("lowrank"), extras=extras, gallery=i[:, :4])


def test_missing_faiss_is_a_recsys_error(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "faiss", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'recsys\[ann\]'"):
        table_score_fn(torch.randn(2, 4), torch.randn(5, 4), index=parse_index_spec("faiss"))
