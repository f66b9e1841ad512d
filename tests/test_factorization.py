"""Factorization wrappers (Matryoshka, low-rank, binary, quantized, BT²-compatible) around MF and LightGCN."""

import json

import numpy as np
import pytest
import torch
from conftest import fit_args

from recsys.cli import main
from recsys.data.batch import Batch
from recsys.encoders import (
    BinaryCodes,
    Compatible,
    LatentQuantization,
    LightGCN,
    LowRank,
    MatrixFactorization,
    Matryoshka,
)
from recsys.losses import BPRLoss, MatryoshkaLoss
from recsys.scoring.cascade import hamming_distances, pack_bits, prefix_tables
from recsys.scoring.index import ServingTables, parse_index_spec
from recsys.testing import EncoderConformance, checkerboard

INNER = {"mf": lambda d: MatrixFactorization(dim=d), "lightgcn": lambda d: LightGCN(dim=d, n_layers=2)}


pytestmark = pytest.mark.usefixtures("one_thread")


# Composition: every wrapper around MF and around LightGCN passes the shared encoder contract.
class TestMatryoshkaMF(EncoderConformance):
    def make_encoder(self):
        return Matryoshka(INNER["mf"](16), dim=8)


class TestMatryoshkaLightGCN(EncoderConformance):
    def make_encoder(self):
        return Matryoshka(INNER["lightgcn"](16), dim=8)


class TestLowRankMF(EncoderConformance):
    def make_encoder(self):
        return LowRank(INNER["mf"](8), dim=16)


class TestLowRankLightGCN(EncoderConformance):
    def make_encoder(self):
        return LowRank(INNER["lightgcn"](8), dim=16)


class TestBinaryMF(EncoderConformance):
    def make_encoder(self):
        return BinaryCodes(INNER["mf"](16))


class TestBinaryLightGCN(EncoderConformance):
    def make_encoder(self):
        return BinaryCodes(INNER["lightgcn"](16))


class TestQuantizedMF(EncoderConformance):
    def make_encoder(self):
        return LatentQuantization(INNER["mf"](8), levels=8)


class TestQuantizedLightGCN(EncoderConformance):
    def make_encoder(self):
        return LatentQuantization(INNER["lightgcn"](8), levels=8, sides="both")


def _old_gallery(dim: int = 8) -> torch.Tensor:
    """An old model's item table on the conformance data (what `recsys fit` hands a Compatible encoder)."""
    old = MatrixFactorization(dim=dim)
    old.bind(checkerboard())
    return old.item_table().detach()


def _compatible(inner, dim: int = 8):
    enc = Compatible(inner)
    enc.set_gallery(_old_gallery(dim))
    return enc


class TestCompatibleMF(EncoderConformance):
    def make_encoder(self):
        return _compatible(INNER["mf"](12))


class TestCompatibleLightGCN(EncoderConformance):
    def make_encoder(self):
        return _compatible(INNER["lightgcn"](12))


class TestStackedWrappers(EncoderConformance):
    """Wrappers compose with each other: a Matryoshka prefix of a low-rank table."""

    def make_encoder(self):
        return Matryoshka(LowRank(INNER["mf"](8), dim=16), dim=8)


# Behaviour of each wrapper.
def _bound(enc, seed=0):
    torch.manual_seed(seed)
    data = checkerboard()
    enc.bind(data)
    return enc, data


def _batch(data, n=8, c=4):
    return Batch(torch.arange(n), torch.randint(0, data.n_items, (n, c)))


def test_matryoshka_serves_the_prefix():
    enc, data = _bound(Matryoshka(MatrixFactorization(dim=16)))
    full = enc.item_table()
    enc.set_dim(4)
    assert enc.out_dim == 4
    torch.testing.assert_close(enc.item_table(), full[:, :4])
    with pytest.raises(ValueError):
        enc.set_dim(17)


def test_matryoshka_loss_sums_prefix_losses():
    loss = MatryoshkaLoss(weights=[1.0, 2.0, 1.0, 0.5])
    assert loss.prefix_dims(64) == [8, 16, 32, 64]
    seen = []

    def scores_at(d):
        seen.append(d)
        return torch.full((3,), float(d)), torch.zeros(3, 2)

    got = loss.nested(scores_at, 64)
    bpr = BPRLoss()
    want = sum(w * bpr(torch.full((3,), float(d)), torch.zeros(3, 2)) for d, w in zip([8, 16, 32, 64],
                                                                                       [1.0, 2.0, 1.0, 0.5]))
    assert seen == [8, 16, 32, 64]
    torch.testing.assert_close(got, want)
    with pytest.raises(ValueError):
        MatryoshkaLoss(dims=[8, 16], weights=[1.0])


@pytest.mark.parametrize("negatives", ["sampled", "in_batch", "full"])
def test_model_trains_a_nested_loss_under_every_negatives_mode(negatives):
    from recsys.model import RecModel

    enc, data = _bound(MatrixFactorization(dim=16))
    from recsys.training import FullCatalogue, InBatchNegatives, SampledNegatives

    strategy = {"sampled": SampledNegatives, "in_batch": InBatchNegatives, "full": FullCatalogue}[negatives]()
    model = RecModel(enc, loss=MatryoshkaLoss(), negatives=strategy)
    model.data = data
    batch = _batch(data)
    step = strategy.embed(enc, batch)
    total = model.loss.nested(lambda d: strategy.score(model.scorer, batch, step, d), 16)
    parts = [model.loss.base(*strategy.score(model.scorer, batch, step, d)) for d in (2, 4, 8, 16)]
    torch.testing.assert_close(total, sum(parts))
    total.backward()
    assert enc.user.table.weight.grad is not None


def test_lowrank_truncation_and_parameter_count():
    enc, data = _bound(LowRank(MatrixFactorization(dim=8), dim=16))
    enc.eval()
    a = enc.encoder.item_table()
    for r in (2, 4, 8):
        enc.set_rank(r)
        torch.testing.assert_close(enc.item_table(), a[:, :r] @ enc.basis[:r])
        assert enc.bytes_per_item() == 4 * r
    assert enc.parameter_count(2, n_rows=100) == 100 * 2 + 2 * 16
    with pytest.raises(ValueError):
        enc.set_rank(9)


def test_lowrank_ordered_dropout_truncates_training_steps():
    enc, data = _bound(LowRank(MatrixFactorization(dim=8), dim=16, p_full=0.0, min_rank=1))
    enc.train()
    batch = _batch(data)
    ranks = set()
    for seed in range(30):
        torch.manual_seed(seed)
        q = enc(batch).query
        # The rank of the query block is the sampled rank (generically, with random A and B).
        ranks.add(int(torch.linalg.matrix_rank(q.detach())))
    assert len(ranks) > 3 and min(ranks) < 8


def test_binary_codes_loss_and_ste_gradient():
    enc, data = _bound(BinaryCodes(MatrixFactorization(dim=16)))
    enc.train()
    batch = _batch(data)
    aux = enc(batch).losses["codes"]
    assert aux.ndim == 0 and torch.isfinite(aux)
    aux.backward()
    assert enc.encoder.user.table.weight.grad.abs().sum() > 0
    # One candidate per row (in-batch negatives): the other rows' positives are the negatives.
    one = Batch(torch.arange(8), torch.randint(0, data.n_items, (8, 1)))
    assert torch.isfinite(enc(one).losses["codes"])


def test_pack_bits_and_hamming_match_dense():
    rng = np.random.default_rng(0)
    q, i = rng.standard_normal((5, 70)), rng.standard_normal((40, 70))
    qb, ib = pack_bits(q), pack_bits(i)
    assert qb.shape == (5, 9) and qb.dtype == np.uint8
    want = ((q[:, None] >= 0) != (i[None] >= 0)).sum(-1)
    np.testing.assert_array_equal(hamming_distances(qb, ib, query_block=2, item_block=16), want)
    # ±1 codes: inner product = D − 2·Hamming.
    sq, si = np.where(q >= 0, 1, -1), np.where(i >= 0, 1, -1)
    np.testing.assert_array_equal(sq @ si.T, 70 - 2 * want)


def _score_fn(spec: str, q, i, exclude=None):
    """The score function of an index spec over plain (dot-product) tables."""
    return parse_index_spec(spec).build(ServingTables(q, i)).score_function(exclude=exclude)


def test_cascades_with_full_shortlist_equal_exact_scoring():
    torch.manual_seed(0)
    q, i = torch.randn(6, 16), torch.randn(30, 16)
    rows = torch.arange(6)
    exact = q @ i.T
    for spec in ("prefix:coarse=4,shortlist=30", "hamming:shortlist=30"):
        torch.testing.assert_close(_score_fn(spec, q, i)(rows, None), exact)
    short = _score_fn("prefix:coarse=4,shortlist=5", q, i)(rows, None)
    assert (torch.isfinite(short).sum(1) == 5).all()
    kept = torch.isfinite(short)
    torch.testing.assert_close(short[kept], exact[kept])
    pq, pi = prefix_tables(q, i, 4, normalize=True)
    torch.testing.assert_close(pq.norm(dim=1), torch.ones(6))
    torch.testing.assert_close(_score_fn("prefix:dim=4", q, i)(rows, None), q[:, :4] @ i[:, :4].T)


def test_cascade_masks_exclusions_before_the_shortlist():
    from recsys.scoring.topk import RowSets

    q, i = torch.ones(1, 4), torch.arange(10, dtype=torch.float32)[:, None].repeat(1, 4)
    exclude = RowSets.from_pairs(np.zeros(3, dtype=np.int64), np.array([9, 8, 7]), 1)
    s = _score_fn("prefix:coarse=2,shortlist=3", q, i, exclude)(torch.tensor([0]), None)
    assert torch.isfinite(s[0]).nonzero().flatten().tolist() == [4, 5, 6]
    # Hamming shortlists (integer similarities) mask the same way: items 0..2 share the query's signs.
    qh = torch.ones(1, 8)
    ih = torch.cat([torch.ones(3, 8), -torch.ones(7, 8)])
    excl = RowSets.from_pairs(np.zeros(2, dtype=np.int64), np.array([0, 1]), 1)
    s = _score_fn("hamming:shortlist=1", qh, ih, excl)(torch.tensor([0]), None)
    assert torch.isfinite(s[0]).nonzero().flatten().tolist() == [2]


def test_quantized_items_use_at_most_levels_values():
    enc, data = _bound(LatentQuantization(MatrixFactorization(dim=8), levels=4))
    enc.eval()
    table = enc.item_table()
    for d in range(8):
        assert len(torch.unique(table[:, d])) <= 4
    assert enc.bytes_per_item() == 8 * 2 / 8
    batch = _batch(data)
    q = enc(batch).query
    torch.testing.assert_close(q, enc.encoder.encode_queries(batch))  # queries stay float
    enc.train()
    aux = enc(batch).losses["quantization"]
    aux.backward()
    assert enc.codebook.grad is not None and enc.codebook.grad.abs().sum() > 0


def test_compatible_basis_is_orthonormal_and_preserves_new_scores():
    enc, data = _bound(_compatible(MatrixFactorization(dim=8), dim=4))
    w = enc.basis.weight
    torch.testing.assert_close(w @ w.T, torch.eye(8), atol=1e-5, rtol=0)
    assert enc.old_items.shape == (data.n_items, 4) and enc.old_dim == 4
    batch = _batch(data)
    enc.eval()
    out, inner = enc(batch), enc.encoder(batch)
    q, c, iq, ic = out.query, out.candidates, inner.query, inner.candidates
    torch.testing.assert_close((c @ q.unsqueeze(-1)), (ic @ iq.unsqueeze(-1)), atol=1e-5, rtol=1e-4)
    enc.train()
    aux = enc(batch).losses["compatibility"]
    aux.backward()
    assert enc.encoder.user.table.weight.grad.abs().sum() > 0
    assert "old_items" not in enc.state_dict()


# End to end: configs train through the CLI; evaluate and score take --index and --gallery.
def test_compatible_upgrade_scores_new_queries_against_the_old_gallery(tmp_path):
    old, new = tmp_path / "old", tmp_path / "new"
    assert main(fit_args("mf_bpr.yaml", old, "--model.init_args.encoder.init_args.dim", "8")) == 0
    assert main(fit_args("mf_compatible.yaml", new,
                         "--model.init_args.encoder.init_args.old_run", str(old))) == 0
    assert main(["evaluate", "--run-dir", str(new), "--gallery", str(old), "--out", str(tmp_path / "x.json")]) == 0
    m = json.loads((tmp_path / "x.json").read_text())
    assert 0.0 <= m["ndcg@20"] <= 1.0
    assert main(["score", "--run-dir", str(new), "--gallery", str(old), "--k", "5",
                 "--out", str(tmp_path / "s.parquet")]) == 0
    import pyarrow.parquet as pq

    assert pq.read_table(tmp_path / "s.parquet").num_rows > 0


def test_evaluate_and_score_at_a_prefix_and_by_cascade(tmp_path):
    run = tmp_path / "m"
    assert main(fit_args("mf_matryoshka.yaml", run)) == 0
    for spec, tag in (("prefix:dim=16", "prefix_dim_16"),
                      ("prefix:coarse=8,shortlist=50", "prefix_coarse_8_shortlist_50"),
                      ("hamming:shortlist=50", "hamming_shortlist_50"),
                      ("hamming:codes_only=true", "hamming_codes_only_true")):
        assert main(["evaluate", "--run-dir", str(run), "--index", spec]) == 0
        m = json.loads((run / f"eval_test_{tag}.json").read_text())
        assert 0.0 <= m["ndcg@20"] <= 1.0
    import pyarrow.parquet as pq

    out = tmp_path / "s.parquet"
    assert main(["score", "--run-dir", str(run), "--index", "prefix:dim=16", "--k", "7", "--out", str(out)]) == 0
    t = pq.read_table(out).to_pandas()
    assert t.groupby("user").size().max() == 7
    # A prefix index scores with the prefix of the stored tables.
    from recsys.runs import Run

    r = Run.open(run)
    payload = r.payload
    users = r.vocab("user").encode(t.user.to_numpy())
    items = r.vocab("item").encode(t.item.to_numpy())
    want = (payload.queries[users, :16] * payload.items[items, :16]).sum(1).numpy()
    np.testing.assert_allclose(t.score.to_numpy(), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("spec", ["prefix:coarse=4,shortlist=7", "hamming:shortlist=7", "hamming:shortlist=3"])
def test_topk_ranks_a_cascade_shortlist_like_its_dense_scores(spec):
    # iter_topk takes the cascade's candidates directly; the result must equal ranking its dense [B, N] scores.
    import scipy.sparse as sp

    from recsys.scoring.topk import CandidateScoreFunction, topk

    torch.manual_seed(1)
    q, i = torch.randn(9, 16), torch.randn(40, 16)
    users = np.arange(9)
    exclude = sp.random(9, 40, density=0.2, format="csr", random_state=0)
    fn = _score_fn(spec, q, i, exclude)
    assert isinstance(fn, CandidateScoreFunction)
    items, scores = topk(fn, users, 40, 5, exclude)
    dense = fn(torch.from_numpy(users), None)
    want_scores, want_items = torch.topk(dense, 5, dim=1)
    finite = torch.isfinite(want_scores)
    np.testing.assert_allclose(scores[finite.numpy()], want_scores[finite].numpy(), rtol=1e-6)
    assert (items[~finite.numpy()] == -1).all()
    for u in users:  # no excluded item is ever returned
        assert not set(items[u][items[u] >= 0]) & set(exclude[u].indices)
    # A score function built with other exclusions falls back to the dense path (and is masked by the engine).
    items2, _ = topk(_score_fn(spec, q, i), users, 40, 5, exclude)
    for u in users:
        assert not set(items2[u][items2[u] >= 0]) & set(exclude[u].indices)
