"""Graph encoders: adjacency and propagation against dense references, dropout, the encoder contract, CLI fits."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from conftest import fit_args

from recsys.cli import main
from recsys.data.batch import Batch
from recsys.encoders import NGCF, LightGCN, OfficialNGCF, PaperNGCF
from recsys.encoders.graph import (
    OfficialNGCFLayer,
    PaperNGCFLayer,
    bipartite_adjacency,
    dropout_mask,
    l2_normalize,
    sparse_polynomial,
    spmm,
)
from recsys.testing import EncoderConformance, checkerboard

ADJACENCIES = [("sym", False), ("left", True)]  # NGCF paper / LightGCN, and the official NGCF code


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_train(seed: int = 0, n_users: int = 6, n_items: int = 8) -> sp.csr_matrix:
    """A random user × item matrix with one user and one item without interactions (zero rows)."""
    rng = np.random.default_rng(seed)
    m = (rng.random((n_users, n_items)) < 0.4).astype(np.float32)
    m[0] = 0
    m[:, -1] = 0
    return sp.csr_matrix(m)


def dense_adjacency(train: sp.csr_matrix, norm: str, self_loops: bool) -> np.ndarray:
    """The reference normalised bipartite adjacency, built densely in float64."""
    r = train.toarray().astype(np.float64)
    nu, ni = r.shape
    a = np.zeros((nu + ni, nu + ni))
    a[:nu, nu:], a[nu:, :nu] = r, r.T
    if self_loops:
        a += np.eye(nu + ni)
    d = a.sum(1)
    with np.errstate(divide="ignore"):
        if norm == "sym":
            s = np.where(d > 0, d ** -0.5, 0.0)
            return s[:, None] * a * s[None, :]
        return np.where(d > 0, 1.0 / d, 0.0)[:, None] * a


@pytest.mark.parametrize("norm,self_loops", ADJACENCIES)
def test_adjacency_and_transpose_match_dense(norm, self_loops):
    train = tiny_train()
    adj = bipartite_adjacency(train, norm, self_loops)
    ref = dense_adjacency(train, norm, self_loops)
    a, at = adj.matrices()
    assert adj.crow.dtype == torch.int32  # the fast MKL path
    np.testing.assert_allclose(a.to_dense().numpy(), ref, atol=1e-6)
    np.testing.assert_allclose(at.to_dense().numpy(), ref.T, atol=1e-6)
    assert adj.symmetric == (norm == "sym")


@pytest.mark.parametrize("norm,self_loops", ADJACENCIES)
def test_spmm_forward_and_gradient_match_dense(norm, self_loops):
    train = tiny_train(1)
    adj = bipartite_adjacency(train, norm, self_loops)
    a, at = adj.matrices()
    dense = torch.tensor(dense_adjacency(train, norm, self_loops), dtype=torch.float32)
    x = torch.randn(adj.n, 5, requires_grad=True)
    xr = x.detach().clone().requires_grad_()
    y = spmm(a, at, spmm(a, at, x))  # two layers, so the backward chains two custom products
    yr = dense @ (dense @ xr)
    g = torch.randn_like(y)
    (y * g).sum().backward()
    (yr * g).sum().backward()
    torch.testing.assert_close(y, yr, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x.grad, xr.grad, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("norm,self_loops", ADJACENCIES)
def test_sparse_polynomial_matches_dense(norm, self_loops):
    train = tiny_train(2)
    adj = bipartite_adjacency(train, norm, self_loops)
    a, at = adj.matrices()
    dense = torch.tensor(dense_adjacency(train, norm, self_loops), dtype=torch.float32)
    alpha = (0.1, 0.2, 0.3, 0.4)
    x = torch.randn(adj.n, 4, requires_grad=True)
    xr = x.detach().clone().requires_grad_()
    y = sparse_polynomial(a, at, x, alpha)
    yr = sum(c * torch.linalg.matrix_power(dense, k) @ xr for k, c in enumerate(alpha))
    g = torch.randn_like(y)
    (y * g).sum().backward()
    (yr * g).sum().backward()
    torch.testing.assert_close(y, yr, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x.grad, xr.grad, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("norm,self_loops", ADJACENCIES)
def test_edge_dropout_keeps_the_expectation(norm, self_loops):
    torch.manual_seed(0)
    train = tiny_train(3)
    adj = bipartite_adjacency(train, norm, self_loops)
    x = torch.randn(adj.n, 3)
    exact = adj.matrices()[0] @ x
    draws = 2000
    total = torch.zeros_like(exact)
    dropped = 0
    for _ in range(draws):
        values = adj.dropout(0.3)
        dropped += int((values == 0).sum())
        a, at = adj.matrices(values)
        total += a @ x
        if _ < 5:  # the transpose follows the same dropped entries
            torch.testing.assert_close(at.to_dense(), a.to_dense().T)
    assert abs(dropped / (draws * adj.nnz) - 0.3) < 0.01
    torch.testing.assert_close(total / draws, exact, atol=0.05, rtol=0.05)


@pytest.mark.parametrize("norm,self_loops", ADJACENCIES)
def test_node_dropout_zeroes_the_columns_of_dropped_nodes(norm, self_loops):
    # NGCF paper Sec. 2.4.2: a dropped node sends nothing; survivors' columns are scaled by 1/(1-p).
    train = tiny_train(4)
    adj = bipartite_adjacency(train, norm, self_loops)
    dense = torch.tensor(dense_adjacency(train, norm, self_loops), dtype=torch.float32)
    for seed in range(5):
        torch.manual_seed(seed)
        keep = dropout_mask((adj.n,), 0.4, adj.values)  # the draw node dropout makes, one per node
        torch.manual_seed(seed)
        values = adj.dropout(0.4, "node")
        a, at = adj.matrices(values)
        torch.testing.assert_close(a.to_dense(), dense * keep[None, :], atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(at.to_dense(), (dense * keep[None, :]).T, atol=1e-6, rtol=1e-6)
        assert all(v == 0 or v == pytest.approx(1 / 0.6, rel=1e-4) for v in keep.unique().tolist())


@pytest.mark.parametrize("norm,self_loops", ADJACENCIES)
def test_node_dropout_keeps_the_expectation(norm, self_loops):
    torch.manual_seed(0)
    train = tiny_train(5)
    adj = bipartite_adjacency(train, norm, self_loops)
    exact = adj.dense()
    draws = 4000
    total = torch.zeros_like(exact)
    dropped_nodes = 0
    for _ in range(draws):
        a = adj.matrices(adj.dropout(0.3, "node"))[0].to_dense()
        total += a
        sends = (exact != 0).any(0)
        dropped_nodes += int((((a == 0) | (exact == 0)).all(0) & sends).sum())  # columns wholly zeroed
    senders = int((exact != 0).any(0).sum())
    assert abs(dropped_nodes / (draws * senders) - 0.3) < 0.02
    torch.testing.assert_close(total / draws, exact, atol=0.03, rtol=0.05)


def test_dropout_kind_is_a_typed_option():
    with pytest.raises(ValueError, match="^dropout_kind must be one of 'edge', 'node', not 'nodes'$"):
        NGCF(dropout_kind="nodes")
    data = checkerboard(n_users=8, n_items=6, per_user=3)
    enc = NGCF(dim=4, n_layers=2, node_dropout=0.5, message_dropout=0.0, dropout_kind="node")
    enc.bind(data)
    enc.train()
    torch.manual_seed(0)
    out = enc.propagate_nodes()
    torch.manual_seed(0)
    keep = dropout_mask((enc.adj.n,), 0.5, enc.adj.values)
    enc.eval()
    # The first layer reads ``L (keep ⊙ E)``: the same as propagating with dropped nodes' rows zeroed.
    a = enc.adj.dense()
    side = (a * keep[None, :]) @ enc.embedding.weight
    layer = enc.layers[0]
    first = F.leaky_relu((side + enc.embedding.weight) @ layer.w_sum + (side * enc.embedding.weight) @ layer.w_bi
                         + layer.b_sum + layer.b_bi, 0.2)
    torch.testing.assert_close(out[:, 4:8], F.normalize(first, dim=1), atol=1e-5, rtol=1e-5)


def test_lightgcn_propagation_matches_dense():
    data = checkerboard(n_users=8, n_items=6, per_user=3)
    enc = LightGCN(dim=4, n_layers=3)
    enc.bind(data)
    dense = torch.tensor(dense_adjacency(data.train, "sym", False), dtype=torch.float32)
    e = enc.embedding.weight.detach()
    ref = sum(torch.linalg.matrix_power(dense, k) @ e for k in range(4)) / 4
    users, items = enc.propagate()
    torch.testing.assert_close(torch.cat([users, items]), ref, atol=1e-5, rtol=1e-5)


def ngcf_reference(enc: NGCF, dense: torch.Tensor) -> torch.Tensor:
    """NGCF's eval-mode propagation written out from the equations with a dense adjacency."""
    ego = enc.embedding.weight.detach()
    outs = [ego]
    for layer in enc.layers:
        w1, w2, b1, b2 = layer.w_sum.detach(), layer.w_bi.detach(), layer.b_sum.detach(), layer.b_bi.detach()
        side = dense @ ego
        if isinstance(enc.variant, PaperNGCF):  # Eq. 7: LeakyReLU((L + I) E W1 + (L E ⊙ E) W2 + b)
            ego = F.leaky_relu((side + ego) @ w1 + b1 + (side * ego) @ w2 + b2, 0.2)
        else:  # official code: one activation per branch, L' = D^-1 (A + I)
            ego = F.leaky_relu(side @ w1 + b1, 0.2) + F.leaky_relu((ego * side) @ w2 + b2, 0.2)
        if enc.feed_normalized:  # RecBole's form: the next layer reads the normalised output
            ego = F.normalize(ego, dim=1)
        outs.append(F.normalize(ego, dim=1))
    return torch.cat(outs, 1)


@pytest.mark.parametrize("variant,feed_normalized",
                         [(PaperNGCF(), False), (OfficialNGCF(), False), (PaperNGCF(), True)])
def test_ngcf_propagation_matches_the_equations(variant, feed_normalized):
    torch.manual_seed(0)
    data = checkerboard(n_users=8, n_items=6, per_user=3)
    enc = NGCF(dim=4, n_layers=2, variant=variant, feed_normalized=feed_normalized)
    enc.bind(data)
    enc.eval()
    norm, loops = ("sym", False) if isinstance(variant, PaperNGCF) else ("left", True)
    dense = torch.tensor(dense_adjacency(data.train, norm, loops), dtype=torch.float32)
    with torch.no_grad():
        users, items = enc.propagate()
    assert users.shape == (data.n_users, 4 * 3)
    torch.testing.assert_close(torch.cat([users, items]), ngcf_reference(enc, dense), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", ["paper", "official"])
@pytest.mark.parametrize("dropped", [False, True])
def test_ngcf_layer_matches_its_formula_with_gradients(variant, dropped):
    # The paper form has a hand-written backward: it must equal autograd through Eq. 7, values and gradients.
    torch.manual_seed(0)
    layer = (PaperNGCFLayer if variant == "paper" else OfficialNGCFLayer)(5, 3).double()
    x, side = torch.randn(9, 5, dtype=torch.double), torch.randn(9, 5, dtype=torch.double)
    mask = dropout_mask((9, 3), 0.3, x) if dropped else None

    def formula(x, side):
        if variant == "paper":
            h = (side + x) @ layer.w_sum + (side * x) @ layer.w_bi + layer.b_sum + layer.b_bi
            out = F.leaky_relu(h, 0.2)
        else:
            out = (F.leaky_relu(side @ layer.w_sum + layer.b_sum, 0.2)
                   + F.leaky_relu((x * side) @ layer.w_bi + layer.b_bi, 0.2))
        return out if mask is None else out * mask

    weights = torch.randn(9, 3, dtype=torch.double)
    results = []
    for fn in (formula, lambda x, side: layer(x, side, mask)):
        xs = [x.clone().requires_grad_(), side.clone().requires_grad_()]
        layer.zero_grad()
        out = fn(*xs)
        (out * weights).sum().backward()
        results.append([out, *(t.grad for t in xs), *(p.grad.clone() for p in layer.parameters())])
    for got, want in zip(results[1], results[0]):
        torch.testing.assert_close(got, want)
    assert torch.autograd.gradcheck(lambda x, side: layer(x, side, mask), (x.requires_grad_(), side.requires_grad_()))


def test_l2_normalize_matches_torch_with_gradients():
    x = torch.randn(6, 4, dtype=torch.double)
    x[2] = 0  # a zero row stays zero, as F.normalize leaves it
    torch.testing.assert_close(l2_normalize(x), F.normalize(x, dim=1))
    assert torch.autograd.gradcheck(l2_normalize, (torch.randn(6, 4, dtype=torch.double, requires_grad=True),))


def test_ngcf_variant_is_a_strategy_object():
    # The strings of the untyped option are refused with the strategies to use instead.
    with pytest.raises(TypeError, match=r"variant must be an instance of NGCFVariant \(PaperNGCF\(\), OfficialNGCF"):
        NGCF(variant="official")
    for variant, layer, norm in ((PaperNGCF(), PaperNGCFLayer, "sym"), (OfficialNGCF(), OfficialNGCFLayer, "left")):
        enc = NGCF(dim=4, n_layers=2, variant=variant)
        assert all(type(m) is layer for m in enc.layers) and enc.norm == norm


def test_typed_options_are_refused_at_parse_time_and_construction():
    from argparse import ArgumentError

    from jsonargparse import ArgumentParser

    from recsys.encoders import TwoSidedEncoder

    p = ArgumentParser(exit_on_error=False)
    p.add_subclass_arguments(TwoSidedEncoder, "encoder")
    for init_args in ({"init": "xavir"}, {"variant": {"class_path": "recsys.encoders.LightGCN"}}):
        with pytest.raises(ArgumentError, match="init|variant"):
            p.parse_object({"encoder": {"class_path": "recsys.encoders.NGCF", "init_args": init_args}})
    cfg = p.parse_object({"encoder": {"class_path": "recsys.encoders.NGCF",
                                      "init_args": {"variant": {"class_path": "recsys.encoders.OfficialNGCF"}}}})
    assert isinstance(p.instantiate(cfg).encoder.variant, OfficialNGCF)
    with pytest.raises(ValueError, match="init must be one of 'normal', 'xavier', 'xavier_normal', not 'xavir'"):
        LightGCN(init="xavir")


def test_regularisers():
    data = checkerboard(n_users=8, n_items=6, per_user=3)
    batch = Batch(torch.tensor([0, 1, 1]), torch.tensor([[0, 1], [2, 3], [4, 5]]))
    for enc in (LightGCN(dim=4), NGCF(dim=4, variant=PaperNGCF())):  # ½‖E⁰‖² of the batch's ego embeddings
        enc.bind(data)
        w = enc.embedding.weight
        expected = 0.5 * (w[batch.users].pow(2).sum() + w[batch.items + data.n_users].pow(2).sum())
        torch.testing.assert_close(enc.regularization(batch), expected)
    enc = NGCF(dim=4, variant=OfficialNGCF())  # ½‖·‖² of the propagated embeddings the step used
    enc.bind(data)
    enc.train()
    out = enc(batch)
    q, c = out.query, out.candidates
    torch.testing.assert_close(out.penalty, 0.5 * (q.pow(2).sum() + c.pow(2).sum()))


def test_training_forward_propagates_and_evaluation_uses_the_cache():
    data = checkerboard(n_users=8, n_items=6, per_user=3)
    enc = LightGCN(dim=4, n_layers=2)
    enc.bind(data)
    enc.eval()
    enc.precompute()
    before = enc.item_table().clone()
    with torch.no_grad():
        enc.embedding.weight.add_(1.0)  # a stale cache must keep serving the precomputed tables
    torch.testing.assert_close(enc.item_table(), before)
    enc.clear_cache()
    assert not torch.allclose(enc.item_table(), before)


# The shared encoder contract, including the checkerboard: two user groups × two item groups, held-out in-group
# items must outrank every out-of-group item after a short training of a 2-layer model.
class TestLightGCN(EncoderConformance):
    def make_encoder(self):
        return LightGCN(dim=8, n_layers=2)


class TestNGCFPaper(EncoderConformance):
    def make_encoder(self):
        return NGCF(dim=8, n_layers=2, variant=PaperNGCF())


class TestNGCFOfficial(EncoderConformance):
    def make_encoder(self):
        return NGCF(dim=8, n_layers=2, variant=OfficialNGCF())


@pytest.mark.parametrize("config", ["lightgcn.yaml", "ngcf.yaml", "ngcf_official.yaml"])
def test_fit_through_the_cli(config, tmp_path):
    run = tmp_path / config.split(".")[0]
    assert main(fit_args(config, run, "--data.options", "{n_users: 200, n_items: 100, n_interactions: 3000}")) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0.0 < metrics["ndcg@20"] <= 1.0
    assert main(["evaluate", "--run-dir", str(run)]) == 0  # the run reloads: graph rebuilt in bind, weights loaded
    reloaded = json.loads((run / "eval_test.json").read_text())
    assert reloaded["ndcg@20"] == pytest.approx(metrics["ndcg@20"], abs=1e-6)


@pytest.mark.parametrize("encoder_cls", [LightGCN, NGCF])
def test_table_scoring_matches_gathered_candidates(encoder_cls):
    # Many negatives on a small catalogue take the one-GEMM path; scores and gradients must equal the gather path.
    from recsys.losses import SoftmaxLoss
    from recsys.model import RecModel
    from recsys.scorers import CosineScorer
    from recsys.testing import tiny_synthetic

    data = tiny_synthetic(n_users=30, n_items=40, n_interactions=400)
    torch.manual_seed(0)
    enc = encoder_cls(dim=8, n_layers=2) if encoder_cls is LightGCN else encoder_cls(
        dim=8, n_layers=2, node_dropout=0.0, message_dropout=0.0)
    model = RecModel(enc, CosineScorer(0.2), SoftmaxLoss())
    model.bind(data)
    batch = Batch(users=torch.arange(6), items=torch.randint(0, data.n_items, (6, 9)))
    step = model.negatives.embed(enc, batch)
    assert step.target is not None  # scored against the item table
    pos, neg = model.negatives.score(model.scorer, batch, step)
    grads = torch.autograd.grad(SoftmaxLoss()(pos, neg), enc.embedding.weight)[0]
    out = enc(batch)
    ref = model.scorer(out.query, out.candidates)
    ref_grads = torch.autograd.grad(SoftmaxLoss()(ref[:, 0], ref[:, 1:]), enc.embedding.weight)[0]
    torch.testing.assert_close(torch.cat([pos[:, None], neg], 1), ref)
    torch.testing.assert_close(grads, ref_grads)
