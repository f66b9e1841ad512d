"""Item indexes against brute force, the spec parser, and the typed top-k protocol they ride on."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from recsys.errors import DataError
from recsys.scoring.cascade import (
    hamming_cascade_fn,
    hamming_distances,
    hamming_score_fn,
    pack_bits,
    prefix_cascade_fn,
    prefix_tables,
)
from recsys.scoring.index import (
    DenseIndex,
    FaissIndex,
    HammingSpec,
    LowRankIndex,
    PrefixSpec,
    QuantizedIndex,
    ServingTables,
    dequantize,
    parse_index_spec,
)
from recsys.scoring.topk import (
    CandidateScoreFunction,
    RescoringScoreFunction,
    RowSets,
    gemm_score_fn,
    iter_topk,
    topk,
)

U, N, D, R, L, K = 12, 60, 8, 6, 4, 10
pytestmark = pytest.mark.usefixtures("one_thread")

try:
    import faiss  # noqa: F401

    HAS_FAISS = True
except ImportError:
    HAS_FAISS = False


def _tables(normalize: bool = False, nonneg: bool = False, seed: int = 0) -> ServingTables:
    """Consistent tables: queries/items are the (prepared) products of low-rank factors and a basis."""
    g = torch.Generator().manual_seed(seed)
    qf, af, basis = torch.randn(U, R, generator=g), torch.randn(N, R, generator=g), torch.randn(R, D, generator=g)
    if nonneg:
        # Strictly positive vectors: every item sits in every posting list, so a generous Seismic is exact.
        qf, af, basis = qf.abs() + 0.01, af.abs() + 0.01, basis.abs() + 0.01
    q, i = qf @ basis, af @ basis
    if normalize:
        q, i = F.normalize(q, dim=-1), F.normalize(i, dim=-1)
    codes = torch.randint(0, L, (N, D), generator=g)
    codebook = torch.randn(D, L, generator=g).sort(dim=1).values
    return ServingTables(q, i, normalize, None, qf, af, basis, codes, codebook)


def _exclude(seed: int = 0) -> RowSets:
    rng = np.random.default_rng(seed)
    users = [np.full(8, u) for u in range(U - 1)] + [np.full(N - 3, U - 1)]
    items = [rng.choice(N, 8, replace=False) for _ in range(U - 1)] + [np.arange(3, N)]
    return RowSets.from_pairs(np.concatenate(users), np.concatenate(items), U)


def _prefix(x, dim, normalize):
    x = x[:, :dim]
    return F.normalize(x, dim=-1) if normalize else x


def _lowrank(t, k):
    q, i = t.query_factors[:, :k] @ t.basis[:k], t.item_factors[:, :k] @ t.basis[:k]
    return _prefix(q, D, t.normalize) @ _prefix(i, D, t.normalize).T


def _quantized(t):
    deq = t.codebook[torch.arange(D), t.codes]
    return t.queries @ _prefix(deq, D, t.normalize).T


def _hamming(t, bits):
    qb, ib = pack_bits(t.queries[:, :bits]), pack_bits(t.items[:, :bits])
    return -torch.from_numpy(hamming_distances(qb, ib).astype(np.float32))


# spec -> brute-force dense scores [U, N] of what the index ranks by.
REFERENCES = {
    "exact": lambda t: t.queries @ t.items.T,
    "prefix:dim=4": lambda t: _prefix(t.queries, 4, t.normalize) @ _prefix(t.items, 4, t.normalize).T,
    f"prefix:dim=6,coarse=2,shortlist={N}": lambda t: _prefix(t.queries, 6, t.normalize) @ _prefix(
        t.items, 6, t.normalize).T,
    f"prefix:coarse=3,shortlist={N}": lambda t: t.queries @ t.items.T,
    f"hamming:shortlist={N}": lambda t: t.queries @ t.items.T,
    f"hamming:shortlist={N},dim=6,bits=3": lambda t: _prefix(t.queries, 6, t.normalize) @ _prefix(
        t.items, 6, t.normalize).T,
    "hamming:codes_only=true": lambda t: _hamming(t, D),
    "hamming:codes_only=true,bits=5": lambda t: _hamming(t, 5),
    "lowrank": lambda t: t.queries @ t.items.T,  # full rank is the stored model
    "lowrank:rank=3": lambda t: _lowrank(t, 3),
    "quantized": _quantized,
}
NONNEG = {
    "seismic:n_postings=none,block_size=4": lambda t: t.queries @ t.items.T,
}
FAISS = {
    "faiss:flat": lambda t: t.queries @ t.items.T,
    "faiss:ivf,nlist=4,nprobe=4": lambda t: t.queries @ t.items.T,  # every list probed: exact
}


def _check_against(index, ref: torch.Tensor, exclude, k: int = K, queries=None) -> None:
    """``search`` returns the brute-force top-k scores, every id's score is its reference score, no exclusion."""
    ids, scores = index.search(index.queries if queries is None else queries, k, exclude)
    assert ids.dtype == torch.int64 and scores.dtype == torch.float32 and ids.shape == (U, k)
    ref = ref.clone().float()
    for u in range(U):
        ref[u, exclude.indices[exclude.indptr[u]:exclude.indptr[u + 1]]] = float("-inf")
    want = torch.topk(ref, k, dim=1).values
    torch.testing.assert_close(scores, want, rtol=1e-4, atol=1e-4)
    valid = ids >= 0
    assert (valid == torch.isfinite(want)).all()
    got = ref.gather(1, ids.clamp(min=0))
    torch.testing.assert_close(got[valid], scores[valid], rtol=1e-4, atol=1e-4)
    # The last row keeps only items 0..2: padded with -1 / -inf after them.
    assert sorted(ids[-1, :3].tolist()) == [0, 1, 2] and (ids[-1, 3:] == -1).all()


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("spec", list(REFERENCES))
def test_index_equals_brute_force(spec, normalize):
    tables = _tables(normalize)
    _check_against(parse_index_spec(spec).build(tables), REFERENCES[spec](tables), _exclude())


@pytest.mark.parametrize("spec", list(NONNEG))
def test_generous_seismic_equals_exact_on_non_negative_vectors(spec):
    tables = _tables(nonneg=True)
    _check_against(parse_index_spec(spec).build(tables), NONNEG[spec](tables), _exclude())


@pytest.mark.skipif(not HAS_FAISS, reason="faiss is not installed")
@pytest.mark.parametrize("spec", list(FAISS))
def test_faiss_equals_exact(spec):
    tables = _tables()
    _check_against(parse_index_spec(spec).build(tables), FAISS[spec](tables), _exclude())


@pytest.mark.skipif(not HAS_FAISS, reason="faiss is not installed")
def test_faiss_hnsw_has_high_recall_and_honours_exclusions():
    tables, exclude = _tables(), _exclude()
    ids, _ = parse_index_spec("faiss:hnsw,m=8,ef_search=64").build(tables).search(tables.queries, K, exclude)
    ex_ids, _ = parse_index_spec("exact").build(tables).search(tables.queries, K, exclude)
    recall = np.mean([len(set(a.tolist()) & set(b.tolist())) / K for a, b in zip(ids, ex_ids, strict=True)])
    assert recall >= 0.9
    for u in range(U):
        assert not set(ids[u].tolist()) & set(exclude.indices[exclude.indptr[u]:exclude.indptr[u + 1]].tolist())


def test_faiss_missing_gives_one_line_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # makes `import faiss` raise ImportError
    with pytest.raises(ImportError, match=r"^faiss is not installed: pip install 'recsys\[ann\]'$"):
        FaissIndex(torch.randn(5, 3))


def _all_specs():
    specs = [(s, False) for s in REFERENCES] + [(s, True) for s in NONNEG]
    return specs + ([(s, False) for s in FAISS] if HAS_FAISS else [])


@pytest.mark.parametrize(("spec", "nonneg"), _all_specs())
def test_iter_topk_over_the_score_function_equals_search(spec, nonneg):
    # Evaluation and batch scoring call iter_topk with user chunks and exclusions: one engine for every index.
    tables, exclude = _tables(nonneg=nonneg), _exclude()
    index = parse_index_spec(spec).build(tables)
    ids, scores = index.search(tables.queries if spec.split(":")[0] != "lowrank" else tables.query_factors, K,
                               exclude)
    users = np.array([5, 0, 11, 3, 7, 1, 2, 4, 6, 8, 9, 10])
    chunks = list(iter_topk(index.score_function(exclude=exclude), users, N, K, exclude, chunk_size=5))
    assert [len(c[0]) for c in chunks] == [5, 5, 2]
    got_ids, got_scores = torch.cat([c[1] for c in chunks]), torch.cat([c[2] for c in chunks])
    torch.testing.assert_close(got_scores, scores[users], rtol=1e-5, atol=1e-5)
    assert (got_ids == ids[users]).float().mean() >= 0.95  # equal up to the order of exact ties


@pytest.mark.parametrize("spec", ["hamming:shortlist=7", "prefix:coarse=2,shortlist=7", "seismic:n_postings=20"])
def test_dense_form_of_a_candidate_score_function_ranks_like_its_candidates(spec):
    tables, exclude = _tables(nonneg=spec.startswith("seismic")), _exclude()
    fn = parse_index_spec(spec).build(tables).score_function(exclude=exclude)
    assert isinstance(fn, CandidateScoreFunction)
    dense = fn(torch.arange(U), None)
    assert dense.shape == (U, N)
    want, _ = torch.topk(dense, 5, dim=1)
    _, scores = topk(fn, np.arange(U), N, 5, exclude)
    np.testing.assert_allclose(scores, want.numpy(), rtol=1e-5)


def test_lowrank_at_full_rank_equals_exact_and_truncates_without_the_product():
    tables = _tables()
    full = LowRankIndex(tables.item_factors, tables.basis)
    ids, scores = full.search(tables.query_factors, K)
    ex_ids, ex_scores = DenseIndex(tables.items).search(tables.queries, K)
    torch.testing.assert_close(scores, ex_scores, rtol=1e-4, atol=1e-4)
    assert (ids == ex_ids).float().mean() > 0.95
    assert LowRankIndex(tables.item_factors, tables.basis, rank=2).bytes_per_item() == 4 * 2
    with pytest.raises(ValueError, match="rank must be in"):
        LowRankIndex(tables.item_factors, tables.basis, rank=R + 1)


def test_quantized_index_scores_dequantized_items_in_blocks(monkeypatch):
    tables = _tables()
    monkeypatch.setattr("recsys.scoring.index.QuantizedScore.block", 7)  # several blocks, a ragged last one
    index = QuantizedIndex(tables.codes, tables.codebook)
    fn = index.score_function(tables.queries)
    assert isinstance(fn, RescoringScoreFunction)
    deq = dequantize(tables.codes, tables.codebook)
    torch.testing.assert_close(fn(torch.arange(U), None), tables.queries @ deq.T)
    assert index.codes.dtype == torch.uint8 and index.bytes_per_item() == D * 2 / 8
    # bf16 shortlist + float32 re-score: exact float32 scores come back.
    chunks = list(iter_topk(fn, np.arange(U), N, K, dtype=torch.bfloat16))
    want = torch.topk(tables.queries @ deq.T, K, dim=1).values
    torch.testing.assert_close(torch.cat([c[2] for c in chunks]), want, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="codes must lie in"):
        QuantizedIndex(tables.codes + L, tables.codebook)


def test_bytes_per_item():
    tables = _tables(nonneg=True)
    size = {s: parse_index_spec(s).build(tables).bytes_per_item()
            for s in ("exact", "prefix:dim=4", "hamming:shortlist=5", "hamming:codes_only=true", "lowrank:rank=3",
                      "quantized", "seismic")}
    assert size == {"exact": 4 * D, "prefix:dim=4": 16, "hamming:shortlist=5": 1 + 4 * D,
                    "hamming:codes_only=true": 1, "lowrank:rank=3": 12, "quantized": D * 2 / 8,
                    "seismic": pytest.approx(size["seismic"])}
    assert size["seismic"] > 4 * D  # the forward vectors plus postings and summaries
    if HAS_FAISS:
        assert parse_index_spec("faiss").build(tables).bytes_per_item() >= 4 * D


def test_build_names_the_missing_tables():
    bare = ServingTables(torch.randn(3, 4), torch.randn(5, 4))
    with pytest.raises(DataError, match=r"index 'lowrank' needs a low-rank model \(this run stores no factor"):
        parse_index_spec("lowrank:rank=2").build(bare)
    with pytest.raises(DataError, match="index 'quantized' needs a latent-quantization model"):
        parse_index_spec("quantized").build(bare)
    with pytest.raises(DataError, match="index 'seismic' needs non-negative item vectors"):
        parse_index_spec("seismic").build(bare)
    with pytest.raises(ValueError, match="'dim'=8 exceeds the model's 4 dimensions"):
        parse_index_spec("prefix:dim=8").build(bare)
    with pytest.raises(ValueError, match="'rank'=9 exceeds the model's rank"):
        parse_index_spec("lowrank:rank=9").build(_tables())
    with pytest.raises(ValueError, match="pass queries"):
        DenseIndex(torch.randn(5, 4)).score_function()


def test_serving_tables_from_a_model_payload():
    t = _tables()
    extras = {"codes": t.codes, "codebook": t.codebook}
    v1 = {"scorer": '{"metric": "inner_product", "normalize": true}', "concepts": '["a", "b"]',
          "tables": {"queries": t.queries, "items": t.items}, "extras": extras}
    v2 = {**v1, "scorer": {"metric": "inner_product", "normalize": True}, "concepts": ["a", "b"]}

    class Payload:  # the attributes of recsys.runs.ModelPayload
        queries, items, scorer, concepts = t.queries, t.items, v2["scorer"], ["a", "b"]

    Payload.extras = extras
    for payload in (v1, v2, Payload()):
        got = ServingTables.from_payload(payload)
        assert got.normalize and got.concepts == ["a", "b"] and got.codes is t.codes and got.basis is None
        assert got.queries is t.queries
    with pytest.raises(DataError, match="stores no embedding tables"):
        ServingTables.from_payload({"state_dict": {}})


@pytest.mark.parametrize("spec", [
    "exact", "prefix:dim=32", "prefix:dim=32,coarse=8,shortlist=200", "prefix:coarse=4", "hamming:shortlist=200",
    "hamming:codes_only=true,bits=16", "hamming:dim=16,bits=8", "lowrank:rank=8", "lowrank", "quantized",
    "seismic:n_postings=2000,query_cut=10", "seismic:n_postings=none,summary_energy=0.5", "faiss:hnsw,m=16",
    "faiss:ivf,nlist=64,nprobe=4", "faiss"])
def test_spec_round_trips(spec):
    parsed = parse_index_spec(spec)
    assert parse_index_spec(str(parsed)) == parsed
    assert parse_index_spec(f" {spec.upper()[:len(parsed.kind)]}{spec[len(parsed.kind):]} ") == parsed


def test_spec_parses_typed_values():
    assert parse_index_spec("prefix:dim=32,coarse=8,shortlist=200") == PrefixSpec(32, 8, 200)
    assert parse_index_spec("hamming:codes_only=true") == HammingSpec(codes_only=True)
    s = parse_index_spec("seismic:n_postings=none,heap_factor=0.9")
    assert s.n_postings is None and s.heap_factor == 0.9 and s.block_size == 32
    assert parse_index_spec("faiss:hnsw").index == "hnsw" == parse_index_spec("faiss:index=hnsw").index
    assert str(parse_index_spec("prefix:coarse=8,dim=32")) == "prefix:dim=32,coarse=8"


@pytest.mark.parametrize(("spec", "message"), [
    ("annoy", "unknown index kind 'annoy'; allowed: exact, prefix, hamming, lowrank, quantized, seismic, faiss"),
    ("prefix:dims=3", "index 'prefix' has no option 'dims'; allowed: dim, coarse, shortlist"),
    ("prefix:dim=x", "index 'prefix': option 'dim' must be an integer, got 'x'"),
    ("prefix:dim=0", "index 'prefix': option 'dim' must be >= 1, got 0"),
    ("prefix:dim=8,dim=4", "index 'prefix': option 'dim' given twice"),
    ("prefix", "index 'prefix': needs option 'dim' and/or 'coarse'"),
    ("prefix:dim=8,shortlist=5", "index 'prefix': option 'shortlist' needs option 'coarse'"),
    ("prefix:dim=8,coarse=8", "index 'prefix': option 'coarse'=8 must be below 'dim'=8"),
    ("hamming:codes_only=true,dim=8", "index 'hamming': codes_only=true ranks by the codes alone: it takes no"),
    ("hamming:codes_only=true,shortlist=8", "it takes no 'shortlist' or 'dim'"),
    ("hamming:codes_only=maybe", "index 'hamming': option 'codes_only' must be true or false, got 'maybe'"),
    ("hamming:dim=4,bits=8", "index 'hamming': option 'bits'=8 exceeds 'dim'=4"),
    ("seismic:dim=8", "index 'seismic' has no option 'dim'; allowed: n_postings, block_size"),
    ("seismic:heap_factor=2", "index 'seismic': option 'heap_factor' must be in (0, 1], got 2.0"),
    ("seismic:summary_energy=x", "index 'seismic': option 'summary_energy' must be a number, got 'x'"),
    ("exact:dim=3", "index 'exact' has no option 'dim'; allowed: none"),
    ("exact:fast", "index 'exact': expected OPTION=VALUE, got 'fast'"),
    ("faiss:annoy", "index 'faiss': option 'index' must be one of flat, ivf, hnsw, binary, got 'annoy'"),
    ("faiss:flat,nprobe=3", "index 'faiss': option 'nprobe' applies to index=ivf only, not index=flat"),
    ("faiss:ivf,ef_search=3", "index 'faiss': option 'ef_search' applies to index=hnsw only"),
    ("lowrank:dim=8", "index 'lowrank' has no option 'dim'; allowed: rank"),
])
def test_spec_rejects_bad_specs_in_one_line(spec, message):
    with pytest.raises(ValueError) as e:
        parse_index_spec(spec)
    assert message in str(e.value) and "\n" not in str(e.value)


# spec -> the score function built by hand from the cascade module's pieces (prefix tables, coarse-to-fine and
# Hamming cascades, codes alone) over tables ``q``, ``i`` with exclusions ``ex``: the specs compose nothing else.
HAND_BUILT = {
    "exact": lambda q, i, ex: gemm_score_fn(q, i),
    "prefix:dim=4": lambda q, i, ex: gemm_score_fn(*prefix_tables(q, i, 4, True)),
    "prefix:coarse=2,shortlist=9": lambda q, i, ex: prefix_cascade_fn(q, i, 2, 9, ex, True),
    "prefix:dim=6,coarse=2,shortlist=9": lambda q, i, ex: prefix_cascade_fn(*prefix_tables(q, i, 6, True), 2, 9, ex,
                                                                            True),
    "hamming": lambda q, i, ex: hamming_cascade_fn(q, i, 200, ex),
    "hamming:dim=6,shortlist=9": lambda q, i, ex: hamming_cascade_fn(*prefix_tables(q, i, 6, True), 9, ex),
    "hamming:codes_only=true,bits=5": lambda q, i, ex: hamming_score_fn(q, i, bits=5),
}


@pytest.mark.parametrize("spec", list(HAND_BUILT))
def test_specs_rank_like_the_hand_built_cascades(spec):
    tables, exclude = _tables(normalize=True), _exclude()
    want = topk(HAND_BUILT[spec](tables.queries, tables.items, exclude), np.arange(U), N, K, exclude)
    got = topk(parse_index_spec(spec).build(tables).score_function(exclude=exclude), np.arange(U), N, K, exclude)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_allclose(got[1], want[1], rtol=1e-6)


def test_typed_protocol_and_plain_callables():
    q, i = torch.randn(4, 3), torch.randn(9, 3)
    fn = gemm_score_fn(q, i)
    assert isinstance(fn, RescoringScoreFunction)
    torch.testing.assert_close(fn.exact(torch.arange(4), torch.tensor([[0, 1]] * 4)), (q @ i.T)[:, :2])

    def plain(rows, out):  # baselines pass plain functions (score_users)
        return torch.mm(q[rows], i.T, out=out)

    a, b = topk(plain, np.arange(4), 9, 3), topk(fn, np.arange(4), 9, 3)
    np.testing.assert_array_equal(a[0], b[0])
