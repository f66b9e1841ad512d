"""SASRec: the encoder contract, causality and padding, full-softmax training, `recsys fit` + `score` on P2."""

import json

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from conftest import REPO

from recsys.cli import main
from recsys.data.batch import Batch
from recsys.encoders import SASRec
from recsys.losses import SoftmaxLoss
from recsys.model import RecModel
from recsys.scorers import DotScorer
from recsys.testing import EncoderConformance
from recsys.testing.fixtures import checkerboard
from recsys.training import FullCatalogue, InBatchNegatives

TINY = "{n_users: 100, n_items: 60, n_interactions: 2000}"


class TestSASRec(EncoderConformance):
    lr = 0.01

    def make_encoder(self):
        return SASRec(dim=16, num_layers=1, num_heads=2, max_len=8, dropout=0.0)


def _bound(**kw) -> tuple[SASRec, object]:
    torch.manual_seed(0)
    data = checkerboard()
    enc = SASRec(dim=16, num_layers=2, num_heads=2, max_len=6, dropout=0.0, **kw)
    enc.bind(data)
    return enc.eval(), data


def test_left_padding_and_truncation_do_not_change_the_query():
    enc, _ = _bound()
    short = torch.tensor([[3, 5, 7]])
    padded = torch.tensor([[-1, -1, -1, 3, 5, 7]])
    longer = torch.tensor([[1, 2, 4, 9, 11, 3, 5, 7]])  # max_len 6 keeps the last six
    with torch.no_grad():
        q = enc.encode_queries(Batch(torch.zeros(1, dtype=torch.long), history=short))
        torch.testing.assert_close(q, enc.encode_queries(Batch(torch.zeros(1, dtype=torch.long), history=padded)))
        a = enc.encode_queries(Batch(torch.zeros(1, dtype=torch.long), history=longer))
        b = enc.encode_queries(Batch(torch.zeros(1, dtype=torch.long), history=longer[:, -6:]))
    torch.testing.assert_close(a, b)


def test_attention_is_causal():
    """Position t's output depends on items ≤ t only."""
    enc, _ = _bound()
    h = torch.tensor([[1, 2, 3, 4, 5, 6]])
    h2 = h.clone()
    h2[0, 4] = 9
    with torch.no_grad():
        a, b = enc.sequence_output(h), enc.sequence_output(h2)
    torch.testing.assert_close(a[:, :4], b[:, :4])
    assert (a[:, 4:] - b[:, 4:]).abs().max() > 1e-4


def test_full_softmax_loss_is_cross_entropy_over_the_catalogue():
    enc, data = _bound()
    full, in_batch = FullCatalogue(), InBatchNegatives()
    model = RecModel(enc, DotScorer(), SoftmaxLoss(), negatives=full)

    def scores(strategy, batch):
        return strategy.score(model.scorer, batch, strategy.embed(enc, batch))

    hist = torch.from_numpy(data.history(np.arange(4), "train", 6))
    batch = Batch(torch.arange(4), torch.tensor([[0], [3], [5], [7]]), hist)
    pos, neg = scores(full, batch)
    logits = enc.encode_queries(batch) @ enc.item_table().T
    want = F.cross_entropy(logits, batch.items[:, 0])
    torch.testing.assert_close(model.loss(pos, neg), want)
    # All positions (examples: sequences): every real history position predicts its own next item.
    targets = torch.full_like(hist, -1)
    targets[:, -3:] = torch.tensor([1, 2, 4])
    pos, neg = scores(full, Batch(torch.arange(4), targets, hist))
    per_pos = enc.sequence_output(hist)[:, -3:].reshape(-1, enc.out_dim) @ enc.item_table().T
    want_seq = F.cross_entropy(per_pos, torch.tensor([1, 2, 4]).repeat(4))
    torch.testing.assert_close(model.loss(pos, neg), want_seq)
    # In-batch: row b's negatives are the other rows' positives.
    pos, neg = scores(in_batch, batch)
    out = enc(batch)
    q, c = out.query, out.candidates
    want = F.cross_entropy(q @ c[:, 0].T, torch.arange(4))
    torch.testing.assert_close(model.loss(pos, neg), want)


def test_fit_and_score_on_p2(tmp_path):
    """`recsys fit` trains SASRec on prefixes with leave-one-out; `score` serves the stored full-history tables."""
    run = tmp_path / "sasrec"
    args = ["fit", "--config", str(REPO / "configs" / "sasrec.yaml"), "--run-dir", str(run),
            "--data.dataset", "synthetic", "--data.options", TINY, "--trainer.max_epochs", "2",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--model.init_args.encoder.init_args.dim", "16"]
    assert main(args) == 0
    m = json.loads((run / "metrics.json").read_text())
    assert 0.0 <= m["ndcg@10"] <= 1.0 and "mrr@10" in m
    ckpt = torch.load(run / "model.pt", weights_only=True)
    assert ckpt["tables"]["queries"].shape[1] == 16
    out = tmp_path / "top.parquet"
    assert main(["score", "--run-dir", str(run), "--k", "5", "--out", str(out)]) == 0
    t = pq.read_table(out)
    assert t.num_rows == 5 * 100
