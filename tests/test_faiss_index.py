"""The faiss backend (``[ann]`` extra): indexes against the exact engine, exclusions, and the faiss export format."""

from __future__ import annotations

import json
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from conftest import fit_args

from recsys.cli import main
from recsys.errors import MissingDependencyError
from recsys.scoring.cascade import hamming_distances, pack_bits
from recsys.scoring.index import FaissSpec, ServingTables, parse_index_spec
from recsys.scoring.topk import RowSets, iter_topk, topk

faiss = pytest.importorskip("faiss")

from recsys.scoring.faiss_index import MIN_BATCH, FaissBinaryIndex, FaissIndex, search_excluding  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

U, N, D, K = 40, 300, 16, 10


def _tables(normalize: bool = False, seed: int = 0) -> ServingTables:
    """Continuous random tables (no score ties), unit-norm for a cosine scorer as its ``prepare`` leaves them."""
    g = torch.Generator().manual_seed(seed)
    q, i = torch.randn(U, D, generator=g), torch.randn(N, D, generator=g)
    if normalize:
        q, i = F.normalize(q, dim=-1) / 0.1, F.normalize(i, dim=-1)
    return ServingTables(q, i, normalize)


def _exclude(seed: int = 1) -> RowSets:
    """Exclusion counts from 0 to all but 3 items (the last user): every over-fetch depth, and short lists."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 120, U)
    counts[0], counts[1], counts[-1] = 0, N - K, N - 3
    users = np.repeat(np.arange(U), counts)
    items = np.concatenate([rng.choice(N, c, replace=False) for c in counts])
    return RowSets.from_pairs(users, items, U)


def _excluded(exclude, u: int) -> set[int]:
    return set(exclude.indices[exclude.indptr[u]:exclude.indptr[u + 1]].tolist())


def _exact(tables: ServingTables, k: int, exclude):
    return parse_index_spec("exact").build(tables).search(tables.queries, k, exclude)


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("spec", ["faiss:flat", "faiss:ivf,nlist=8,nprobe=8"])
def test_flat_and_fully_probed_ivf_equal_the_exact_engine_with_exclusions(spec, normalize):
    tables, exclude = _tables(normalize), _exclude()
    index = parse_index_spec(spec).build(tables)
    ids, scores = index.search(tables.queries, K, exclude)
    want_ids, want_scores = _exact(tables, K, exclude)
    assert torch.equal(ids, want_ids)
    torch.testing.assert_close(scores, want_scores, rtol=1e-5, atol=1e-5)
    # Exactly K items wherever the catalogue leaves K; the last user keeps 3, padded with -1.
    assert (ids[:-1] >= 0).all() and (ids[-1, :3] >= 0).all() and (ids[-1, 3:] == -1).all()
    for u in range(U):
        assert not set(ids[u].tolist()) & _excluded(exclude, u)


def test_chunked_engine_over_the_faiss_score_function_equals_the_exact_engine():
    # Evaluation and `recsys score` run iter_topk over chunks of user rows in any order.
    tables, exclude = _tables(), _exclude()
    users = np.random.default_rng(3).permutation(U)
    threshold = faiss.cvar.distance_compute_blas_threshold
    fn = parse_index_spec("faiss:flat").build(tables).score_function(exclude=exclude)
    got = torch.cat([c[1] for c in iter_topk(fn, users, N, K, exclude, chunk_size=7)])
    want = torch.cat([c[1] for c in iter_topk(parse_index_spec("exact").build(tables).score_function(), users, N, K,
                                              exclude, chunk_size=7)])
    assert torch.equal(got, want)
    # The BLAS threshold lowered for the engine's small chunks is faiss's own again afterwards.
    assert faiss.cvar.distance_compute_blas_threshold == threshold


def test_search_excluding_over_fetches_each_row_by_its_own_count():
    rng = np.random.default_rng(2)
    n, b, k = 2000, 600, 10
    queries, items = rng.standard_normal((b, D), dtype=np.float32), rng.standard_normal((n, D), dtype=np.float32)
    counts = np.minimum(n, rng.geometric(0.01, b))  # mostly light users, a few heavy ones
    counts[:3] = 0, n - k, n  # none, exactly k left, nothing left
    exclude = RowSets.from_pairs(np.repeat(np.arange(b), counts),
                                 np.concatenate([rng.choice(n, c, replace=False) for c in counts]), b)
    index = faiss.IndexFlatIP(D)
    index.add(items)
    calls = []

    def search(q, depth):
        calls.append((len(q), depth))
        return index.search(q, depth)

    ids, scores = search_excluding(search, queries, k, n, exclude)
    # A few calls (one per depth, small groups searched with the next deeper one), each row searched once.
    assert sum(size for size, _ in calls) == b and len(calls) == len({d for _, d in calls}) <= 12
    assert all(size >= MIN_BATCH for size, depth in calls if depth != max(d for _, d in calls))
    # Exactly the exact engine's lists: k items wherever k remain, padded with -1 / -inf otherwise.
    want_ids, want_scores = topk(lambda rows, out: torch.from_numpy(queries @ items.T)[rows], np.arange(b), n, k,
                                 exclude)
    assert np.array_equal(ids, want_ids) and ((ids >= 0).sum(1) == np.minimum(k, n - counts)).all()
    np.testing.assert_allclose(scores[ids >= 0], want_scores[ids >= 0], rtol=1e-5, atol=1e-5)
    assert np.isneginf(scores[ids < 0]).all()


def test_hnsw_honours_exclusions_and_has_high_recall():
    tables, exclude = _tables(), _exclude()
    ids, _ = parse_index_spec("faiss:hnsw,m=16,ef_search=128").build(tables).search(tables.queries, K, exclude)
    want, _ = _exact(tables, K, exclude)
    recall = np.mean([len(set(a.tolist()) & set(b.tolist()) - {-1}) / max(1, (b >= 0).sum().item())
                      for a, b in zip(ids, want)])
    assert recall >= 0.95
    for u in range(U):
        assert not set(ids[u].tolist()) & _excluded(exclude, u)


def _hamming(tables: ServingTables) -> np.ndarray:
    return hamming_distances(pack_bits(tables.queries), pack_bits(tables.items)).astype(np.int64)


@pytest.mark.parametrize("dim", [D, 13])  # 13 bits: codes padded to whole bytes
def test_binary_codes_rank_like_our_hamming_codes_up_to_ties(dim):
    tables, exclude = _tables(), _exclude()
    tables = ServingTables(tables.queries[:, :dim].contiguous(), tables.items[:, :dim].contiguous())
    ids, scores = parse_index_spec("faiss:binary").build(tables).search(tables.queries, K, exclude)
    ours, our_scores = parse_index_spec("hamming:codes_only=true").build(tables).search(tables.queries, K, exclude)
    # The scores are -hamming, list by list; the items agree but for the order among equal distances.
    torch.testing.assert_close(scores, our_scores)
    dist = _hamming(tables)
    for u in range(U):
        got, want = ids[u][ids[u] >= 0].numpy(), ours[u][ours[u] >= 0].numpy()
        assert len(got) == len(want) and not set(got.tolist()) & _excluded(exclude, u)
        assert (dist[u, got] == -scores[u, :len(got)].numpy()).all()
        if len(got):
            below = dist[u, want] < dist[u, want].max()  # items strictly inside the boundary distance
            assert set(want[below].tolist()) <= set(got.tolist())


def test_binary_shortlist_re_ranks_the_nearest_codes_by_the_float_scores():
    tables, exclude, s = _tables(), _exclude(), 40
    ids, scores = parse_index_spec(f"faiss:binary,shortlist={s}").build(tables).search(tables.queries, K, exclude)
    dist, exact = _hamming(tables), (tables.queries @ tables.items.T).numpy()
    for u in range(U):
        got = ids[u][ids[u] >= 0].numpy()
        allowed = np.setdiff1d(np.arange(N), list(_excluded(exclude, u)))
        # Every result was in the shortlist (within the s-th smallest allowed distance), scored exactly, best first.
        assert len(got) == min(K, len(allowed))
        assert (dist[u, got] <= np.sort(dist[u, allowed])[min(s, len(allowed)) - 1]).all()
        np.testing.assert_allclose(scores[u, :len(got)].numpy(), exact[u, got], rtol=1e-5, atol=1e-5)
        assert (np.diff(scores[u, :len(got)].numpy()) <= 0).all()
    # A shortlist as long as the catalogue is the exact ranking.
    full, _ = parse_index_spec(f"faiss:binary,shortlist={N}").build(tables).search(tables.queries, K, exclude)
    assert torch.equal(full, _exact(tables, K, exclude)[0])


def test_dense_form_of_the_binary_shortlist_ranks_like_its_candidates():
    tables, exclude = _tables(), _exclude()
    fn = parse_index_spec("faiss:binary,shortlist=30").build(tables).score_function(exclude=exclude)
    dense = fn(torch.arange(U), None)
    assert dense.shape == (U, N) and (torch.isfinite(dense).sum(1) <= 30).all()
    cand, cand_scores = fn.candidates(torch.arange(U), K, exclude)
    want = torch.topk(cand_scores, K, dim=1).values
    torch.testing.assert_close(torch.topk(dense, K, dim=1).values, want)


def test_specs_parse_round_trip_and_refuse_options_of_another_kind():
    assert parse_index_spec("faiss:binary,shortlist=200") == FaissSpec("binary", shortlist=200)
    for spec in ("faiss:binary,shortlist=200", "faiss:ivf,nlist=64,nprobe=16", "faiss:hnsw,m=16", "faiss:flat"):
        assert str(parse_index_spec(spec)) == spec
    assert str(parse_index_spec("faiss")) == "faiss:flat"
    with pytest.raises(ValueError, match="option 'shortlist' applies to index=binary only, not index=hnsw"):
        parse_index_spec("faiss:hnsw,shortlist=10")
    with pytest.raises(ValueError, match="option 'nprobe' applies to index=ivf only, not index=binary"):
        parse_index_spec("faiss:binary,nprobe=10")


def test_index_classes_are_reachable_from_the_index_module():
    from recsys.scoring import index

    assert index.FaissIndex is FaissIndex and index.FaissBinaryIndex is FaissBinaryIndex


def test_missing_faiss_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # makes `import faiss` raise ImportError
    for build in (lambda: FaissIndex(torch.randn(5, 8)), lambda: FaissBinaryIndex(torch.randn(5, 8))):
        with pytest.raises(MissingDependencyError, match=r"^faiss is not installed: pip install 'recsys\[ann\]'$"):
            build()


# ---------------------------------------------------------------------------------------------------- export
def _export(run, out, *extra: str) -> dict:
    assert main(["export", "--run-dir", str(run), "--out", str(out), "--format", "faiss", *extra]) == 0
    return json.loads((out / "index.json").read_text())


def _score(run, out, *extra: str, k: int = 10):
    assert main(["score", "--run-dir", str(run), "--out", str(out), "--k", str(k), *extra]) == 0
    return pq.read_table(out).to_pandas()


def _users(out, n: int = 8):
    users = pq.read_table(out / "users.parquet").to_pandas().head(n)
    return users["id"].to_numpy(), np.stack(users["embedding"].to_numpy()).astype(np.float32)


def _by_user(table, users) -> list[list]:
    return [table[table.user == u].sort_values("rank")["item"].tolist() for u in users]


@pytest.mark.parametrize("spec", ["faiss:flat", "faiss:ivf,nlist=4,nprobe=4"])
def test_exported_index_read_back_reproduces_recsys_score(mf_run, tmp_path, spec):
    desc = _export(mf_run, tmp_path / "e", "--index", spec)
    index = faiss.read_index(str(tmp_path / "e" / "items.faiss"))
    item_ids = pq.read_table(tmp_path / "e" / "item_ids.parquet").to_pandas()
    assert (item_ids["row"].to_numpy() == np.arange(index.ntotal)).all() and index.ntotal == desc["n_items"]
    assert desc["metric"] == "inner_product" and desc["dim"] == index.d and desc["index"] == spec
    users, queries = _users(tmp_path / "e")
    _, rows = index.search(queries, 10)  # nprobe travels with an IVF index
    got = [item_ids["id"].to_numpy()[r].tolist() for r in rows]
    assert got == _by_user(_score(mf_run, tmp_path / "top.parquet", "--exclude", "none"), users)
    # The external IDs keep their type.
    assert item_ids["id"].dtype == pq.read_table(tmp_path / "top.parquet").to_pandas()["item"].dtype


def test_exported_binary_index_searches_hamming_distances_of_the_sign_codes(mf_run, tmp_path):
    desc = _export(mf_run, tmp_path / "e", "--index", "faiss:binary,shortlist=20")
    assert desc["metric"] == "hamming" and desc["rerank"]["shortlist"] == 20 and desc["code_bits"] % 8 == 0
    index = faiss.read_index_binary(str(tmp_path / "e" / "items.faiss"))
    items = np.stack(pq.read_table(tmp_path / "e" / "items.parquet").to_pandas()["embedding"].to_numpy())
    _, queries = _users(tmp_path / "e")
    dist, rows = index.search(np.packbits(queries >= 0, axis=1), 10)
    ours = hamming_distances(pack_bits(queries), pack_bits(items))
    assert (np.take_along_axis(ours, rows, 1) == dist).all()
    assert (dist == np.sort(ours, axis=1)[:, :10]).all()


def test_export_refuses_specs_that_are_not_faiss_in_one_line(mf_run, tmp_path, capsys):
    for extra, message in ((["--format", "faiss", "--index", "exact"], "--index must be a faiss spec"),
                           (["--index", "faiss:flat"], "--index applies to --format faiss only")):
        with pytest.raises(SystemExit) as e:
            main(["export", "--run-dir", str(mf_run), "--out", str(tmp_path / "e"), *extra])
        assert e.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "e").exists()


def test_export_without_faiss_is_one_line(mf_run, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)
    assert main(["export", "--run-dir", str(mf_run), "--out", str(tmp_path / "e"), "--format", "faiss"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "recsys export: error: faiss is not installed: pip install 'recsys[ann]'"
    assert not (tmp_path / "e" / "items.faiss").exists()


@pytest.fixture(scope="module")
def cosine_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("cos") / "run"
    assert main(fit_args("mf_bpr.yaml", run, "--model.init_args.scorer", "recsys.scorers.CosineScorer")) == 0
    return run


@pytest.mark.parametrize("spec", ["faiss:flat", "faiss:hnsw,m=16,ef_search=200"])
def test_cosine_run_scores_through_faiss_like_the_exact_path(cosine_run, tmp_path, spec):
    exact = _score(cosine_run, tmp_path / "exact.parquet")
    got = _score(cosine_run, tmp_path / "faiss.parquet", "--index", spec)
    assert (got["item"].to_numpy() == exact["item"].to_numpy()).all()
    np.testing.assert_allclose(got["score"].to_numpy(), exact["score"].to_numpy(), rtol=1e-5, atol=1e-5)
    desc = _export(cosine_run, tmp_path / "e")
    assert desc["normalized"] is True and desc["trained_scorer"]["normalize"] is True
