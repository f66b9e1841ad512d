"""SimGCL: the noise, the InfoNCE term, the views against their equations, the encoder contract, the CLI."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import fit_args

from recsys.capabilities import ScoresAgainstTable, capabilities_of
from recsys.cli import main
from recsys.data.batch import Batch
from recsys.encoders.graph import GraphEncoder
from recsys.encoders.lightgcn import LightGCN
from recsys.encoders.simgcl import SimGCL, info_nce, perturb
from recsys.testing import EncoderConformance, checkerboard


def _dense(enc: SimGCL) -> torch.Tensor:
    return enc.adj.dense()


def _bound(**kwargs) -> tuple[SimGCL, object]:
    torch.manual_seed(0)
    data = checkerboard(n_users=8, n_items=6, per_user=3)
    enc = SimGCL(dim=4, **kwargs)
    enc.bind(data)
    return enc, data


def test_info_nce_known_answers():
    # n identical rows: every logit equals 1/τ, so each row's loss is log n.
    same = torch.ones(5, 3)
    torch.testing.assert_close(info_nce(same, same, 0.2), torch.tensor(math.log(5)))
    # Orthonormal rows in both views: log(e^{1/τ} + (n - 1)) - 1/τ = log(1 + (n - 1) e^{-1/τ}).
    eye = torch.eye(3) * 7.0  # the cosine ignores the scale
    torch.testing.assert_close(info_nce(eye, eye, 0.5), torch.tensor(math.log(1 + 2 * math.exp(-2.0))))
    # Two rows, hand-computed cosines: s = [[1, 0], [0.6, 0.8]] against [[1, 0], [0, 1]].
    v1, v2 = torch.tensor([[2.0, 0.0], [3.0, 4.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    tau = 0.5
    row0 = math.log(math.exp(1 / tau) + math.exp(0.0)) - 1 / tau
    row1 = math.log(math.exp(0.6 / tau) + math.exp(0.8 / tau)) - 0.8 / tau
    torch.testing.assert_close(info_nce(v1, v2, tau), torch.tensor((row0 + row1) / 2))


def test_noise_has_norm_eps_per_row_and_keeps_the_sign():
    torch.manual_seed(0)
    x = torch.randn(50, 8)
    for groups in (1, 2):
        delta = perturb(x, 0.1, groups) - x
        norms = torch.linalg.vector_norm(delta.view(50, groups, -1), dim=-1)
        torch.testing.assert_close(norms, torch.full_like(norms, 0.1))
        assert ((delta == 0) | (torch.sign(delta) == torch.sign(x))).all()  # inside x's orthant
    assert perturb(x, 0.0) is x
    # Two independent draws differ.
    assert not torch.allclose(perturb(x, 0.1), perturb(x, 0.1))
    # The noise is a constant for autograd: d(perturb(x))/dx is the identity.
    x.requires_grad_(True)
    (grad,) = torch.autograd.grad(perturb(x, 0.1).sum(), x)
    torch.testing.assert_close(grad, torch.ones_like(x))


@pytest.mark.parametrize("alpha", [None, [0.0, 0.5, 0.5]])
def test_views_match_the_equations(alpha):
    enc, _ = _bound(n_layers=2, alpha=alpha, eps=0.3)
    dense, e0 = _dense(enc), enc.embedding.weight.detach()
    weights = enc.propagation.alpha
    torch.manual_seed(1)
    view1, view2 = enc.noisy_views()
    # The same draws, in the same order: per layer one [N, 2, D] uniform tensor, one unit direction per view.
    torch.manual_seed(1)
    h = [e0, e0]
    ref = [weights[0] * e0, weights[0] * e0]
    for w in weights[1:]:
        noise = F.normalize(torch.rand(len(e0), 2, e0.shape[1]), dim=-1)
        for v in range(2):
            layer = dense @ h[v]
            h[v] = layer + torch.sign(layer) * noise[:, v] * 0.3
            ref[v] = ref[v] + w * h[v]
    torch.testing.assert_close(view1.detach(), ref[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(view2.detach(), ref[1], atol=1e-5, rtol=1e-5)


def test_without_noise_the_views_are_the_main_view_and_the_term_has_its_closed_form():
    enc, data = _bound(n_layers=2, eps=0.0, temperature=0.5, cl_weight=0.3)
    enc.train()
    main_view = enc.propagate_nodes().detach()
    for view in enc.noisy_views():
        torch.testing.assert_close(view.detach(), main_view)
    batch = Batch(torch.tensor([0, 1, 1, 3]), torch.tensor([[0, 5], [2, 1], [2, 4], [4, 0]]))
    users = main_view[[0, 1, 3]]
    items = main_view[[data.n_users + i for i in (0, 2, 4)]]

    def closed_form(v: torch.Tensor) -> torch.Tensor:
        s = F.normalize(v, dim=1) @ F.normalize(v, dim=1).T / 0.5
        return (torch.logsumexp(s, dim=1) - s.diagonal()).mean()

    term = enc(batch).losses["contrastive"]
    torch.testing.assert_close(term.detach(), 0.3 * (closed_form(users) + closed_form(items)))


def test_contrastive_term_only_in_training_and_it_trains_the_ego_table():
    enc, data = _bound(n_layers=2)
    batch = Batch(torch.tensor([0, 1, 2]), torch.tensor([[0, 1], [2, 3], [4, 5]]))
    enc.train()
    for out in (enc(batch), enc.training_tables(batch)):
        assert set(out.losses) == {"contrastive"}
        term = out.losses["contrastive"]
        assert torch.isfinite(term) and term > 0
        torch.testing.assert_close(out.penalty, enc.ego_regularization(batch))  # the ego L2, as LightGCN
    (grad,) = torch.autograd.grad(enc(batch).losses["contrastive"], enc.embedding.weight)
    assert grad.abs().sum() > 0
    enc.eval()
    with torch.no_grad():
        assert enc(batch).losses == {}
        enc.precompute()
        assert enc(batch).losses == {}
        enc.clear_cache()
    enc.train()
    enc.cl_weight = 0.0
    assert enc(batch).losses == {}


def test_main_view_and_evaluation_tables_are_lightgcn():
    enc, data = _bound(n_layers=3)
    torch.manual_seed(0)
    ref = LightGCN(dim=4, n_layers=3)
    ref.bind(data)
    ref.load_state_dict(enc.state_dict())
    for m in (enc, ref):
        m.eval()
        m.precompute()
    torch.testing.assert_close(enc.item_table(), ref.item_table())
    batch = Batch(torch.tensor([0, 5]), torch.tensor([[0, 1], [2, 3]]))
    torch.testing.assert_close(enc.encode_queries(batch), ref.encode_queries(batch))
    assert isinstance(enc, GraphEncoder) and capabilities_of(enc) == capabilities_of(ref) == (ScoresAgainstTable,)


def test_rejects_bad_settings():
    for kwargs in ({"eps": -0.1}, {"temperature": 0.0}, {"cl_weight": -1.0}):
        with pytest.raises(ValueError, match="SimGCL needs"):
            SimGCL(**kwargs)


# The shared encoder contract, the checkerboard trained through RecModel with the contrastive term included. The
# term is scale-free (cosines) while BPR's gradient shrinks with the tiny norms of an 8-wide table, and its
# uniformity pulls apart the users (and items) of one block: at λ = 0.5 (or 0.1) it wins and the blocks are not
# separated after 30 epochs (AUC ≈ 0.5); at λ = 0.03 both terms train.
class TestSimGCL(EncoderConformance):
    reg_weight = 1e-4

    def make_encoder(self):
        return SimGCL(dim=8, n_layers=2, cl_weight=0.03)


def test_fit_through_the_cli(tmp_path):
    run = tmp_path / "simgcl"
    options = "{n_users: 200, n_items: 100, n_interactions: 3000}"
    assert main(fit_args("simgcl.yaml", run, "--data.options", options)) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0.0 < metrics["ndcg@20"] <= 1.0
    assert main(["evaluate", "--run-dir", str(run)]) == 0  # the run reloads: graph rebuilt in bind, weights loaded
    reloaded = json.loads((run / "eval_test.json").read_text())
    assert reloaded["ndcg@20"] == pytest.approx(metrics["ndcg@20"], abs=1e-6)
