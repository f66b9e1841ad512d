"""Hard negatives (DNS): the kept columns, their gradients, the table path, prefixes, refusals, and a real fit."""

import json

import pytest
import torch
from conftest import fit_args

from recsys.capabilities import StepOutput
from recsys.data.batch import Batch
from recsys.data.examples import Pairs, Sequences
from recsys.losses import BPRLoss, MatryoshkaLoss
from recsys.scorers import DotScorer
from recsys.training.hard_negatives import HardNegatives
from recsys.training.negatives import Step

pytestmark = pytest.mark.usefixtures("one_thread")


def _gathered(q_rows, c_rows):
    query = torch.tensor(q_rows, requires_grad=True)
    cands = torch.tensor(c_rows, requires_grad=True)
    items = torch.arange(cands.shape[0] * cands.shape[1]).view(cands.shape[:2])
    return Batch(torch.arange(len(query)), items), Step(StepOutput(query, cands)), query, cands


def test_keeps_the_argmax_and_only_its_gradient():
    # Row 0: candidate scores 1, 3, 2 (hardest: column 1); row 1: 5, -1, 0 (column 0).
    batch, step, query, cands = _gathered(
        [[1.0, 0.0], [0.0, 1.0]],
        [[[9.0, 0.0], [1.0, 0.0], [3.0, 0.0], [2.0, 0.0]],
         [[0.0, 9.0], [0.0, 5.0], [0.0, -1.0], [0.0, 0.0]]])
    pos, neg = HardNegatives().score(DotScorer(), batch, step)
    torch.testing.assert_close(pos, torch.tensor([9.0, 9.0]))
    torch.testing.assert_close(neg, torch.tensor([[3.0], [5.0]]))
    BPRLoss()(pos, neg).backward()
    grad_norms = cands.grad.norm(dim=-1)
    kept = torch.tensor([[True, False, True, False], [True, True, False, False]])  # positive + hardest
    assert (grad_norms[~kept] == 0).all() and (grad_norms[kept] > 0).all()


def test_keep_two_is_the_top_two():
    torch.manual_seed(0)
    batch, step, query, cands = _gathered(torch.randn(5, 4).tolist(), torch.randn(5, 9, 4).tolist())
    _, neg = HardNegatives(keep=2).score(DotScorer(), batch, step)
    all_neg = DotScorer()(query, cands)[:, 1:]
    torch.testing.assert_close(neg.sort(dim=1).values, all_neg.topk(2, dim=1).values.sort(dim=1).values)


def test_table_path_keeps_the_argmax_of_the_target_columns():
    # Item table of 6 items; the rows' candidates are table columns; only the kept items get gradient.
    query = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    table = torch.tensor([[4.0, 0.0], [1.0, 2.0], [3.0, 1.0], [0.0, 4.0], [2.0, 3.0], [5.0, -2.0]],
                         requires_grad=True)
    target = torch.tensor([[0, 1, 2, 5], [3, 4, 5, 1]])  # row 0 scores 1, 3, 5; row 1 scores 3, -2, 2
    batch = Batch(torch.arange(2), target)
    pos, neg = HardNegatives().score(DotScorer(), batch, Step(StepOutput(query, table), target))
    torch.testing.assert_close(pos, torch.tensor([4.0, 4.0]))
    torch.testing.assert_close(neg, torch.tensor([[5.0], [3.0]]))
    BPRLoss()(pos, neg).backward()
    touched = table.grad.norm(dim=-1) > 0
    assert touched.tolist() == [True, False, False, True, True, True]  # positives 0 and 3, kept 5 and 4


def test_table_path_of_a_graph_encoder_equals_the_gathered_path():
    from recsys.encoders import LightGCN
    from recsys.testing import checkerboard

    data = checkerboard(n_users=8, n_items=6, per_user=3)
    torch.manual_seed(0)
    enc = LightGCN(dim=8, n_layers=2)
    enc.bind(data)
    batch = Batch(torch.arange(8), torch.randint(0, data.n_items, (8, 5)))
    hard, scorer = HardNegatives(keep=2), DotScorer()
    table_step = hard.embed(enc, batch)
    assert table_step.target is not None  # scored against the item table
    results = []
    for step in (table_step, Step(enc(batch))):
        pos, neg = hard.score(scorer, batch, step)
        grad = torch.autograd.grad(BPRLoss()(pos, neg), enc.embedding.weight)[0]
        results.append((pos, neg.sort(dim=1).values, grad))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b)


def test_each_prefix_keeps_its_own_hardest():
    # At the first dimension candidate 1 is the hardest, at both dimensions candidate 2 is.
    batch, step, _, _ = _gathered([[1.0, 1.0]], [[[9.0, 9.0], [3.0, 0.0], [2.0, 2.0], [0.0, 1.0]]])
    hard, scorer = HardNegatives(), DotScorer()
    torch.testing.assert_close(hard.score(scorer, batch, step, 1)[1], torch.tensor([[3.0]]))
    torch.testing.assert_close(hard.score(scorer, batch, step, 2)[1], torch.tensor([[4.0]]))
    torch.testing.assert_close(hard.score(scorer, batch, step)[1], torch.tensor([[4.0]]))
    seen = []
    loss = MatryoshkaLoss(dims=[1, 2])

    def scores_at(d):
        seen.append(hard.score(scorer, batch, step, d)[1].item())
        return hard.score(scorer, batch, step, d)

    loss.nested(scores_at, 2)
    assert seen == [3.0, 4.0]


def test_refusals():
    from recsys.encoders import MatrixFactorization

    with pytest.raises(ValueError, match="keep"):
        HardNegatives(keep=0)
    enc = MatrixFactorization(dim=4)
    HardNegatives(keep=4).check(enc, Pairs(), 4)
    with pytest.raises(ValueError, match=r"data\.loader\.num_negatives \(3\).*keep \(4\)"):
        HardNegatives(keep=4).check(enc, Pairs(), 3)
    with pytest.raises(ValueError, match="FullCatalogue"):
        HardNegatives().check(enc, Sequences(), 8)


def _trainer(epochs):
    import lightning as L

    return L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)


def test_recmodel_learns_the_checkerboard_with_hard_negatives():
    from recsys.data.datamodule import Loader, RecDataModule
    from recsys.encoders import MatrixFactorization
    from recsys.model import RecModel
    from recsys.recommender import embedding_tables
    from recsys.testing import checkerboard
    from recsys.testing.fixtures import group_separation

    # Whole groups: on the default checkerboard (8 of 15 in-group items per user) the hardest candidates are the
    # user's unseen in-group items, held-out ones among them, and DNS trains them down together (its known
    # false-negative cost): separation stays near 0.86 there, against 1.0 for 4 uniform negatives.
    data = checkerboard(per_user=15)
    dm = RecDataModule(loader=Loader(batch_size=64, num_negatives=8))
    dm.data = data
    torch.manual_seed(0)
    model = RecModel(MatrixFactorization(dim=16), optimizer=lambda p: torch.optim.Adam(p, lr=0.01),
                     negatives=HardNegatives(keep=2))
    _trainer(20).fit(model, datamodule=dm)
    q, i = embedding_tables(model.encoder, model.scorer, data, up_to="train+valid")
    assert group_separation((q @ i.T).numpy(), data) >= 0.9

    refused = RecModel(MatrixFactorization(dim=16), negatives=HardNegatives(keep=9))
    with pytest.raises(ValueError, match="num_negatives"):
        _trainer(1).fit(refused, datamodule=dm)


def test_config_through_the_cli(tmp_path):
    from recsys.cli import main

    run = tmp_path / "run"
    assert main(fit_args("mf_hard_negatives.yaml", run, "--data.loader.batch_size", "256")) == 0
    assert 0.0 < json.loads((run / "metrics.json").read_text())["ndcg@20"] <= 1.0
