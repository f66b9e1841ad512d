"""Product and residual quantization: k-means codebooks, ADC indexes (post-hoc and stored), the jointly trained
wrapper around MF, LightGCN and AlphaRec, and the CLI pipeline (fit mf_pq, score and evaluate through --index)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import fit_args

from recsys.capabilities import CAPABILITIES, EpochAware
from recsys.cli import main
from recsys.data.batch import Batch
from recsys.encoders import LightGCN, MatrixFactorization, ProductQuantization
from recsys.encoders.product_quantized import decode, encode, kmeans, train_codebooks
from recsys.errors import DataError
from recsys.scoring.index import ServingTables, parse_index_spec
from recsys.scoring.index_pq import ProductQuantizedIndex
from recsys.testing import EncoderConformance, checkerboard
from tests.test_alpharec import _TinyLM, tiny_lm  # noqa: F401  (tiny_lm: the module-scoped LM fixture)

pytestmark = pytest.mark.usefixtures("one_thread")

KINDS = ("product", "residual")


def _tables(n: int = 60, d: int = 16, u: int = 7, seed: int = 0, normalize: bool = False) -> ServingTables:
    g = torch.Generator().manual_seed(seed)
    q, i = torch.randn(u, d, generator=g), torch.randn(n, d, generator=g)
    if normalize:
        q, i = torch.nn.functional.normalize(q, dim=1), torch.nn.functional.normalize(i, dim=1)
    return ServingTables(q, i, normalize)


def _build(spec: str, tables: ServingTables) -> ProductQuantizedIndex:
    return parse_index_spec(spec).build(tables)


# ---------------------------------------------------------------------------------------------------- known answers
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("kind", ["pq", "rq"])
def test_adc_scores_equal_the_dot_product_with_the_dequantized_items(kind, normalize):
    t = _tables(normalize=normalize)
    index = _build(f"{kind}:M=4,K=8", t)
    rows = torch.arange(len(t.queries))
    want = t.queries @ index.dequantized().T
    fn = index.score_function()
    torch.testing.assert_close(fn(rows), want, atol=1e-5, rtol=1e-5)
    # The float32 re-score of candidates (bf16 shortlist) is the same sum.
    cand = torch.tensor([[0, 5, 59]] * len(rows))
    torch.testing.assert_close(fn.exact(rows, cand), want.gather(1, cand), atol=1e-5, rtol=1e-5)
    if normalize:
        torch.testing.assert_close(index.dequantized().norm(dim=1), torch.ones(60))
    # A low-precision buffer holds the same scores, rounded.
    out = torch.empty(len(rows), 60, dtype=torch.bfloat16)
    torch.testing.assert_close(fn(rows, out).float(), want, atol=0.05, rtol=0.02)


@pytest.mark.parametrize("kind", KINDS)
def test_codebooks_with_at_least_n_items_codewords_are_lossless(kind):
    t = _tables(n=40)
    books = train_codebooks(t.items, 4, 64, kind)
    codes = encode(t.items, books, kind)
    torch.testing.assert_close(decode(codes, books, kind), t.items, atol=1e-6, rtol=0)
    index = _build(f"{'pq' if kind == 'product' else 'rq'}:M=4,K=64", t)
    torch.testing.assert_close(index.score_function()(torch.arange(7)), t.queries @ t.items.T, atol=1e-5, rtol=1e-5)


def test_product_codes_are_per_subspace_nearest_codewords():
    # Two sub-spaces, codebooks by hand: item [0.9, 0.1 | -2, 2] takes codeword 0 then 1.
    books = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[2.0, 2.0], [-2.0, 2.0]]])
    x = torch.tensor([[0.9, 0.1, -2.0, 2.0], [0.2, 0.7, 1.5, 2.5]])
    codes = encode(x, books, "product")
    assert codes.tolist() == [[0, 1], [1, 0]]
    torch.testing.assert_close(decode(codes, books, "product"), torch.tensor([[1.0, 0, -2, 2], [0, 1, 2, 2]]))
    # Residual: level 1 quantizes what level 0 left.
    rbooks = torch.tensor([[[1.0, 1.0], [-1.0, -1.0]], [[0.5, 0.0], [0.0, 0.5]]])
    rcodes = encode(torch.tensor([[1.4, 1.1]]), rbooks, "residual")
    assert rcodes.tolist() == [[0, 0]]
    torch.testing.assert_close(decode(rcodes, rbooks, "residual"), torch.tensor([[1.5, 1.0]]))


@pytest.mark.parametrize("kind", ["pq", "rq"])
def test_rerank_recovers_the_exact_top_k_when_the_shortlist_covers_it(kind):
    t = _tables(n=200, d=8)
    exact_items, _ = parse_index_spec("exact").build(t).search(t.queries, 10)
    coarse = _build(f"{kind}:M=2,K=4", t)  # very lossy on its own
    full = _build(f"{kind}:M=2,K=4,rerank=200", t)
    items, scores = full.search(t.queries, 10)
    assert torch.equal(items, exact_items)
    torch.testing.assert_close(scores, (t.queries @ t.items.T).gather(1, exact_items))
    assert not torch.equal(coarse.search(t.queries, 10)[0], exact_items)
    # The re-ranked shortlist still takes no excluded item.
    from recsys.scoring.topk import RowSets

    excl = RowSets.from_pairs(np.zeros(1, dtype=np.int64), exact_items[0, :1].numpy(), len(t.queries))
    got, _ = full.search(t.queries[:1], 10, excl)
    assert int(exact_items[0, 0]) not in got[0].tolist() and got[0].tolist()[:9] == exact_items[0, 1:].tolist()


def test_bytes_per_item():
    t = _tables(d=16)
    assert _build("pq:M=8,K=256", t).bytes_per_item() == 8.0
    assert _build("pq:M=4,K=16", t).bytes_per_item() == 2.0
    assert _build("rq:M=4,K=5", t).bytes_per_item() == 4 * 3 / 8  # ⌈log2 5⌉ = 3 bits
    assert _build("pq:M=4,K=16,rerank=20", t).bytes_per_item() == 2.0 + 4 * 16  # the float table is held too
    assert _build("pq:M=4,K=16", _tables(d=16, normalize=True)).bytes_per_item() == 2.0 + 4  # one norm
    assert ProductQuantization(MatrixFactorization(dim=64), subspaces=8, codewords=256).bytes_per_item() == 8.0
    assert ProductQuantization(MatrixFactorization(dim=64), subspaces=16, codewords=16).bytes_per_item() == 8.0
    assert ProductQuantization(MatrixFactorization(dim=64), 4, 16, kind="residual").bytes_per_item() == 2.0


def test_kmeans_and_the_index_are_deterministic():
    x = _tables(n=300, d=4).items
    a, b = kmeans(x, 16, seed=3), kmeans(x, 16, seed=3)
    assert torch.equal(a, b) and not torch.equal(a, kmeans(x, 16, seed=4))
    # Lloyd's fixed point: every centroid is the mean of the points assigned to it.
    from recsys.encoders.product_quantized import assign

    labels = assign(x, a)
    for c in labels.unique():
        torch.testing.assert_close(a[c], x[labels == c].mean(0), atol=1e-5, rtol=1e-5)
    t = _tables()
    for spec in ("pq:M=4,K=8", "rq:M=3,K=8"):
        i1, i2 = _build(spec, t), _build(spec, t)
        assert torch.equal(i1.codes, i2.codes) and torch.equal(i1.codebooks, i2.codebooks)


@pytest.mark.parametrize("spec, message", [
    ("pq:M=0", "option 'M' must be >= 1"),
    ("pq:K=1", "option 'K' must be in [2, 65536]"),
    ("rq:rerank=0", "option 'rerank' must be >= 1"),
    ("pq:stored=true,M=4", "stored=true serves the model's own codes: it takes no M"),
    # k-means options would be ignored by stored codes: refused, not dropped silently.
    ("pq:stored=true,iters=5", "stored=true serves the model's own codes: it takes no iters"),
    ("rq:stored=true,seed=3", "stored=true serves the model's own codes: it takes no seed"),
    ("pq:m=4", "has no option 'm'"),
])
def test_bad_specs_raise_one_line_errors(spec, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")) as e:
        parse_index_spec(spec)
    assert "\n" not in str(e.value)


def test_build_errors_name_the_option_or_the_missing_tables():
    t = _tables(d=16)
    with pytest.raises(ValueError, match="option 'M'=3 must divide the model's 16 dimensions"):
        _build("pq:M=3", t)
    assert _build("rq:M=3,K=4", t).codebooks.shape == (3, 4, 16)  # residual levels need not divide D
    with pytest.raises(DataError, match="needs a ProductQuantization model"):
        _build("pq:stored=true", t)
    books = train_codebooks(t.items, 4, 8, "product")
    stored = ServingTables(t.queries, t.items, pq_codes=encode(t.items, books).to(torch.uint8), pq_codebooks=books)
    with pytest.raises(ValueError, match="this run stores product codes: use 'pq:stored=true'"):
        _build("rq:stored=true", stored)
    with pytest.raises(ValueError, match="queries have 8 dimensions"):
        _build("pq:stored=true", stored).score_function(torch.zeros(2, 8))


# ---------------------------------------------------------------------------------------------------- the wrapper
class TestProductQuantizationMF(EncoderConformance):
    def make_encoder(self):
        return ProductQuantization(MatrixFactorization(dim=16), subspaces=4, codewords=16)


class TestResidualQuantizationMF(EncoderConformance):
    def make_encoder(self):
        return ProductQuantization(MatrixFactorization(dim=16), subspaces=3, codewords=8, kind="residual")


class TestProductQuantizationLightGCN(EncoderConformance):
    def make_encoder(self):
        return ProductQuantization(LightGCN(dim=8, n_layers=2), subspaces=2, codewords=8, sides="both")


class TestProductQuantizationAlphaRec(_TinyLM, EncoderConformance):
    def make_encoder(self):
        from recsys.encoders import AlphaRec

        return ProductQuantization(AlphaRec(dim=8, mapping="mlp", hidden_dim=16, lm_path=self.lm_path,
                                            cache_dir=self.cache_dir), subspaces=4, codewords=16)


def _bound(enc, seed: int = 0):
    torch.manual_seed(seed)
    data = checkerboard()
    enc.bind(data)
    return enc, data


@pytest.mark.parametrize("inner", [lambda: MatrixFactorization(dim=8), lambda: LightGCN(dim=8, n_layers=1)])
def test_the_wrapper_keeps_every_capability_of_what_it_wraps(inner):
    for kind in KINDS:
        enc = ProductQuantization(inner(), subspaces=2, codewords=4, kind=kind)
        for cap in CAPABILITIES:
            if cap is not EpochAware:  # the wrapper re-fits its codebooks at epoch starts: always epoch-aware
                assert isinstance(enc, cap) == isinstance(enc.encoder, cap), cap.__name__
        assert isinstance(enc, EpochAware)


@pytest.mark.parametrize("kind", KINDS)
def test_wrapper_items_are_codewords_and_their_stored_codes_decode_to_the_table(kind):
    enc, data = _bound(ProductQuantization(MatrixFactorization(dim=8), subspaces=2, codewords=4, kind=kind))
    enc.eval()
    table = enc.item_table().detach()
    if kind == "product":
        for m in range(2):
            assert len(torch.unique(table[:, 4 * m:4 * m + 4], dim=0)) <= 4
    extras = enc.serving_extras(lambda e: (None, e.item_table().detach()))
    assert extras["pq_codes"].dtype == torch.uint8 and extras["pq_codes"].shape == (data.n_items, 2)
    torch.testing.assert_close(decode(extras["pq_codes"], extras["pq_codebooks"], kind), table)
    batch = Batch(torch.arange(8), torch.randint(0, data.n_items, (8, 4)))
    torch.testing.assert_close(enc(batch).query, enc.encoder.encode_queries(batch))  # queries stay float
    enc.train()
    enc(batch).losses["quantization"].backward()
    assert enc.codebooks.grad is not None and enc.codebooks.grad.abs().sum() > 0


@pytest.mark.parametrize("kind", KINDS)
def test_one_code_search_per_step_gives_the_same_step(kind):
    # wrap_step searches each tensor's codes once for its losses and its straight-through items: the step must
    # equal the one computed piece by piece.
    enc, data = _bound(ProductQuantization(MatrixFactorization(dim=8), subspaces=2, codewords=4, kind=kind,
                                           sides="both"))
    enc.train()
    batch = Batch(torch.arange(8), torch.randint(0, data.n_items, (8, 4)))
    out = enc(batch)
    inner = enc.encoder(batch)
    torch.testing.assert_close(out.losses["quantization"], enc.wrapper_losses(batch, inner)["quantization"])
    torch.testing.assert_close(out.candidates, enc.transform(inner.candidates, "item"))
    torch.testing.assert_close(out.query, enc.transform(inner.query, "query"))
    assert "_step_memo" not in enc.__dict__


def test_wrapper_refuses_bad_options_in_one_line():
    with pytest.raises(ValueError, match="subspaces=3 must divide the encoder's 8 dimensions"):
        _bound(ProductQuantization(MatrixFactorization(dim=8), subspaces=3, codewords=4))
    with pytest.raises(ValueError, match="codewords must be an integer in"):
        ProductQuantization(MatrixFactorization(dim=8), codewords=1)
    with pytest.raises(ValueError, match="kind must be one of"):
        ProductQuantization(MatrixFactorization(dim=8), kind="additive")


# ---------------------------------------------------------------------------------------------------- end to end
def test_fit_mf_pq_then_score_and_evaluate_through_pq_indexes(tmp_path):
    run = tmp_path / "pq"
    assert main(fit_args("mf_pq.yaml", run, "--model.init_args.encoder.init_args.encoder.init_args.dim", "16",
                         "--model.init_args.encoder.init_args.subspaces", "4",
                         "--model.init_args.encoder.init_args.codewords", "16")) == 0
    assert main(["evaluate", "--run-dir", str(run), "--out", str(tmp_path / "exact.json")]) == 0
    exact = json.loads((tmp_path / "exact.json").read_text())
    for spec, tag in (("pq:stored=true", "pq_stored_true"), ("pq:M=4,K=16,rerank=50", "pq_M_4_K_16_rerank_50"),
                      ("rq:M=2,K=16", "rq_M_2_K_16")):
        assert main(["evaluate", "--run-dir", str(run), "--index", spec]) == 0
        m = json.loads((run / f"eval_test_{tag}.json").read_text())
        assert 0.0 <= m["ndcg@20"] <= 1.0
        if spec == "pq:stored=true":  # the stored codes are the model the exact tables serve
            assert m["ndcg@20"] == pytest.approx(exact["ndcg@20"], abs=1e-6)
    import pyarrow.parquet as pq

    out = tmp_path / "s.parquet"
    assert main(["score", "--run-dir", str(run), "--index", "pq:stored=true", "--k", "5", "--out", str(out)]) == 0
    t = pq.read_table(out).to_pandas()
    assert t.groupby("user").size().max() == 5
    # Scores are the ADC sums, i.e. the stored (dequantized) tables' inner products.
    from recsys.runs import Run

    r = Run.open(run)
    users, items = r.vocab("user").encode(t.user.to_numpy()), r.vocab("item").encode(t.item.to_numpy())
    want = (r.payload.queries[users] * r.payload.items[items]).sum(1).numpy()
    np.testing.assert_allclose(t.score.to_numpy(), want, rtol=1e-4, atol=1e-5)
    assert main(["score", "--run-dir", str(run), "--index", "pq:M=4,K=16,rerank=50", "--k", "5",
                 "--out", str(tmp_path / "s2.parquet")]) == 0
