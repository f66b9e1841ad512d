"""2D Matryoshka (layers × dims) for AlphaRec's frozen LM and Recformer's Longformer: layer embeddings against
truncated models, the encoder contract at every served depth, 2D training through RecModel + Lightning, serving a
(layers, dims) point through the CLI."""

from __future__ import annotations

import json
from functools import partial

import numpy as np
import pytest
import torch

from recsys.cli import main
from recsys.data.batch import Batch
from recsys.data.datamodule import Loader
from recsys.encoders import AlphaRec
from recsys.encoders.matryoshka2d import Layered, layered_encoder
from recsys.errors import UsageError
from recsys.losses import MatryoshkaLoss, SoftmaxLoss
from recsys.model import RecModel
from recsys.recommender import embedding_tables
from recsys.scorers import CosineScorer
from recsys.testing import EncoderConformance, checkerboard
from recsys.testing.fixtures import group_separation
from recsys.testing.training import fit_tiny
from recsys.text.lm import LMEncoder
from recsys.training.layer_sampling import LayerSteps, SampledLayer
from tests.conftest import fit_args
from tests.test_text import make_tiny_bert

ENC = "--model.init_args.encoder.init_args."
DEPTH = 3


def make_deep_bert(path, seed: int = 0, layers: int = DEPTH):
    """A randomly initialised ``layers``-layer BERT (hidden 32) with test_text's WordPiece vocabulary."""
    return make_tiny_bert(path, seed, layers)


@pytest.fixture(scope="module")
def deep_lm(tmp_path_factory):
    root = tmp_path_factory.mktemp("deep_lm")
    return str(make_deep_bert(root / "model")), str(root / "cache")


def _alpharec(lm, **kw) -> AlphaRec:
    return AlphaRec(dim=8, mapping="mlp", hidden_dim=16, lm_path=lm[0], cache_dir=lm[1], **kw)


# ------------------------------------------------------------------------------------------ LM layers, known answer
@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_layer_embedding_is_the_truncated_models_output(deep_lm, pooling):
    """LMEncoder(layer=l) runs an l-layer model; its vectors are the full model's l-th hidden states, pooled."""
    from transformers import AutoModel, AutoTokenizer

    texts = ["title : group0 item 1", "genres : group1", "a much longer item text with many words 7 8 9"]
    tok = AutoTokenizer.from_pretrained(deep_lm[0], local_files_only=True)
    full = AutoModel.from_pretrained(deep_lm[0], local_files_only=True).eval()
    enc = tok(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.no_grad():
        hidden = full(**enc, output_hidden_states=True).hidden_states
    mask = enc["attention_mask"].unsqueeze(-1).float()
    for layer in range(1, DEPTH + 1):
        h = hidden[layer]
        want = h[:, 0] if pooling == "cls" else (h * mask).sum(1) / mask.sum(1)
        want = torch.nn.functional.normalize(want, dim=-1)
        lm = LMEncoder(deep_lm[0], pooling=pooling, use_cache=False, progress=False, layer=layer)
        got = torch.from_numpy(lm.encode(texts))
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        if layer < DEPTH:
            assert lm._model.config.num_hidden_layers == layer  # truncated: the later layers never run
    # The full depth is the plain model: same cache key, so the cached last-layer vectors are shared.
    assert LMEncoder(deep_lm[0], layer=DEPTH).key == LMEncoder(deep_lm[0]).key != LMEncoder(deep_lm[0], layer=1).key
    with pytest.raises(ValueError, match="layer must be in"):
        LMEncoder(deep_lm[0], layer=DEPTH + 1)


def test_alpharec_layer_tables_are_the_truncated_lms(deep_lm):
    """AlphaRec's layer-l LM table is the l-layer LM's item vectors (and their history means), cached per layer."""
    from recsys.encoders.language import history_mean

    data = checkerboard()
    enc = _alpharec(deep_lm, lm_layers=[1, 2])
    enc.bind(data)
    assert isinstance(enc, Layered) and enc.depth() == DEPTH and enc.train_layers() == [1, 2]
    texts = enc.text.texts(data.item_table)
    for layer in (1, 2):
        items = torch.from_numpy(LMEncoder(deep_lm[0], use_cache=False, progress=False, layer=layer).encode(texts))
        table = getattr(enc, f"lm_nodes_l{layer}")
        torch.testing.assert_close(table[data.n_users:], items, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(table[:data.n_users], history_mean(data.train, items), atol=1e-5, rtol=1e-5)
    # Serving from layer 1 maps layer 1's table through the same mapping and propagation.
    enc.eval()
    full = enc.item_table()
    enc.set_serve_layer(1)
    shallow = enc.item_table()
    want = enc.propagation(enc.adj, enc.mapping(enc.lm_nodes_l1))[data.n_users:]
    torch.testing.assert_close(shallow, want)
    assert not torch.allclose(shallow, full)
    enc.set_serve_layer(None)
    torch.testing.assert_close(enc.item_table(), full)


def test_layer_options_are_checked(deep_lm):
    with pytest.raises(UsageError, match="AlphaRec lm_layers must be in integers >= 1, got 0"):
        _alpharec(deep_lm, lm_layers=[0])
    enc = _alpharec(deep_lm, lm_layers=[1, DEPTH + 1])
    with pytest.raises(UsageError, match=rf"AlphaRec lm_layers must be in \[1, {DEPTH}\]"):
        enc.bind(checkerboard())
    enc = _alpharec(deep_lm, lm_layers=[1])
    enc.bind(checkerboard())
    with pytest.raises(UsageError, match="serve_layer 2 was not prepared at bind: add it to lm_layers"):
        enc.set_serve_layer(2)


# ------------------------------------------------------------------------------------------ encoder contract
class _AlphaRec2D(EncoderConformance):
    scorer = CosineScorer(0.15)
    loss = MatryoshkaLoss(SoftmaxLoss(), dims=[2, 4, 8])
    negatives = SampledLayer()
    lr = 0.01
    weight_decay = 1e-6
    checkerboard_epochs = 10

    @pytest.fixture(autouse=True)
    def _lm(self, deep_lm):
        self.lm = deep_lm


class TestAlphaRec2D(_AlphaRec2D):
    def make_encoder(self):
        return _alpharec(self.lm, lm_layers=[1, 2])


class TestAlphaRec2DServedFromOneLayer(_AlphaRec2D):
    def make_encoder(self):
        return _alpharec(self.lm, lm_layers=[1, 2], serve_layer=1)


# ------------------------------------------------------------------------------------------ 2D training
def test_sampled_layer_scores_both_depths(deep_lm):
    """Each step embeds the batch at the last layer and at a drawn shallower one; scores stack both depths."""
    torch.manual_seed(0)
    data = checkerboard()
    enc = _alpharec(deep_lm, lm_layers=[1, 2])
    enc.bind(data)
    strategy = SampledLayer()
    strategy.bind(data)
    batch = Batch(torch.arange(6), torch.randint(0, data.n_items, (6, 5)))
    seen = set()
    for _ in range(20):
        step = strategy.embed(enc, batch)
        assert isinstance(step, LayerSteps) and step.layer in (1, 2)
        seen.add(step.layer)
        pos, neg = strategy.score(CosineScorer(0.15), batch, step, dim=4)
        assert pos.shape == (12,) and neg.shape == (12, 4)
        with enc.at_layer(step.layer):
            q = enc.propagate()[0][batch.users]
        torch.testing.assert_close(step.shallow.out.query, q)
    assert seen == {1, 2}
    assert enc.layer() == DEPTH  # the step's layer does not leak out of the step
    # Inside a wrapper (a Matryoshka prefix), the layered encoder is the wrapped one.
    from recsys.encoders import Matryoshka

    wrapped = Matryoshka(enc, dim=4)
    assert layered_encoder(wrapped) is enc
    step = strategy.embed(wrapped, batch)
    assert step.out.query.shape == (6, 4) and step.shallow.out.query.shape == (6, 4)
    # No shallower layer to train: the plain last-layer step.
    flat = _alpharec(deep_lm)
    flat.bind(data)
    step = strategy.embed(flat, batch)
    assert step.shallow is None and strategy.score(CosineScorer(0.15), batch, step)[0].shape == (6,)
    with pytest.raises(UsageError, match="SampledLayer needs an encoder that embeds from fewer layers"):
        from recsys.encoders import MatrixFactorization

        strategy.check(MatrixFactorization(dim=4), None, 4)


def _fit_2d(enc, data, epochs: int = 15) -> RecModel:
    torch.manual_seed(0)
    model = RecModel(enc, CosineScorer(0.15), MatryoshkaLoss(SoftmaxLoss(), dims=[2, 4, 8]),
                     negatives=SampledLayer(), optimizer=partial(torch.optim.Adam, lr=0.01))
    fit_tiny(model, data, Loader(batch_size=64, num_negatives=4), max_epochs=epochs)
    return model


def test_every_layer_and_prefix_ranks_after_2d_training(deep_lm):
    """After 2D training through RecModel + Lightning, every (layers, dims) point separates the checkerboard's
    groups far better than random (AUC 0.5), and serving through the evaluator's prefix index agrees."""
    from recsys.metrics.evaluate import evaluate
    from recsys.scoring.index import PrefixSpec

    data = checkerboard()
    enc = _alpharec(deep_lm, lm_layers=[1, 2])
    model = _fit_2d(enc, data)
    for layer in (1, 2, DEPTH):
        enc.set_serve_layer(layer)
        q, i = embedding_tables(enc, model.scorer, data, up_to="train+valid")
        for dim in (2, 4, 8):
            scores = (torch.nn.functional.normalize(q[:, :dim], dim=-1)
                      @ torch.nn.functional.normalize(i[:, :dim], dim=-1).T).numpy()
            assert group_separation(scores, data) >= 0.9, (layer, dim)
        # Random ranking of 15 in-group among 30 items: ndcg@5 far lower than a group-separating model's.
        m = evaluate(model, data, "test", (5,), index=PrefixSpec(dim=2))
        assert m["recall@5"] > 0.25, (layer, m)


# ------------------------------------------------------------------------------------------ CLI: fit, serve (l, d)
def test_config_trains_and_serves_a_layer_and_prefix_through_the_cli(deep_lm, tmp_path):
    run = tmp_path / "run"
    lm = [ENC + "lm_path", deep_lm[0], ENC + "cache_dir", deep_lm[1], ENC + "lm_layers", "[1, 2]",
          ENC + "hidden_dim", "16", "--data.loader.num_negatives", "8", "--data.loader.batch_size", "256"]
    assert main(fit_args("alpharec_2d.yaml", run, *lm)) == 0
    served = tmp_path / "served"
    assert main(fit_args("alpharec_2d.yaml", served, *lm, "--transfer-from", str(run), "--trainer.max_epochs", "0",
                         ENC + "serve_layer", "1")) == 0
    out = tmp_path / "eval.json"
    assert main(["evaluate", "--run-dir", str(served), "--index", "prefix:dim=16", "--out", str(out)]) == 0
    got = json.loads(out.read_text())
    # The same weights served at (1 layer, 16 dims) in process give the CLI's metrics.
    from recsys.metrics.evaluate import evaluate
    from recsys.runs import Run
    from recsys.scoring.index import PrefixSpec

    r = Run.open(run)
    data = r.data()
    model = r.recommender(data)
    layered_encoder(model.encoder).set_serve_layer(1)
    want = evaluate(model, data, "test", (10, 20), index=PrefixSpec(dim=16))
    assert abs(got["ndcg@20"] - want["ndcg@20"]) < 1e-6
    # Weights are shared across depths: the served run's checkpoint is the trained one's.
    a = torch.load(run / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(served / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a if "mapping" in k)


# ------------------------------------------------------------------------------------------ Recformer
def _recformer(layers: int = DEPTH, **kw):
    from recsys.encoders import Backbone, Recformer
    from recsys.text.recformer_tokens import TokenOptions

    return Recformer(None, Backbone(hidden_size=16, num_layers=layers, num_heads=2, intermediate_size=32,
                                    attention_window=8, dropout=0.0),
                     TokenOptions(max_items=5, max_token_num=64, max_attr_length=8), **kw)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_recformer_layer_embedding_is_the_truncated_models(pooling):
    """Recformer at depth l (queries and items) equals a Recformer built with l layers holding the same weights."""
    torch.manual_seed(0)
    data = checkerboard()
    deep = _recformer(pooling=pooling, lm_layers=[1, 2])
    deep.bind(data)
    deep.eval()
    batch = Batch(torch.arange(6), torch.randint(0, data.n_items, (6, 3)))
    batch.history = torch.from_numpy(data.history(batch.users.numpy(), "train", deep.history_len))
    for layer in (1, 2):
        cut = _recformer(layers=layer, pooling=pooling)
        cut.bind(data)
        result = cut.load_state_dict(deep.state_dict(), strict=False)
        assert not [k for k in result.missing_keys if not k.startswith("item_cache")]
        # Only the later layers' weights are left over: ``backbone.encoder.layer.<i>.*`` with i >= l.
        assert result.unexpected_keys and all(k.startswith("backbone.encoder.layer.") and int(k.split(".")[3]) >= layer
                                              for k in result.unexpected_keys)
        cut.eval()
        with torch.no_grad(), deep.at_layer(layer):
            torch.testing.assert_close(deep.encode_queries(batch), cut.encode_queries(batch))
            torch.testing.assert_close(deep.encode_item_text(batch.items), cut.encode_item_text(batch.items))
        deep.set_serve_layer(layer)
        with torch.no_grad():
            torch.testing.assert_close(deep.item_table(), cut.item_table(), atol=1e-6, rtol=1e-5)
    with pytest.raises(UsageError, match=rf"Recformer lm_layers must be in \[1, {DEPTH}\]"):
        _recformer(lm_layers=[DEPTH + 1])


class TestRecformer2D(EncoderConformance):
    learns_checkerboard = False  # tested below on text chains, through the 2D step

    def make_encoder(self):
        return _recformer(lm_layers=[1, 2])


class TestRecformer2DServedFromOneLayer(EncoderConformance):
    learns_checkerboard = False

    def make_encoder(self):
        from recsys.encoders import EpochTable

        return _recformer(lm_layers=[1], serve_layer=1, item_table=EpochTable())


def test_recformer_2d_fine_tuning_ranks_at_every_layer_and_prefix():
    """Stage-1 fine-tuning (per-epoch item tables, softmax over the catalogue) with the 2D step, from random
    weights: both depths at both prefixes rank held-out next items far above random.

    Measured (seed 0, 5 epochs): ndcg@10 0.369 / 0.488 at (1 layer; 8 / 32 dims), 0.303 / 0.414 at (2 layers);
    random 0.130.
    """
    from recsys.data.examples import Prefixes
    from recsys.encoders import Backbone, EpochTable, Recformer
    from recsys.metrics.evaluate import evaluate
    from recsys.scoring.index import PrefixSpec
    from recsys.testing.fixtures import text_chains
    from recsys.text.recformer_tokens import TokenOptions
    from recsys.training import FullCatalogue

    data = text_chains(n_items=40, n_users=160, per_user=6, seed=0)
    torch.manual_seed(0)
    enc = Recformer(None, Backbone(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                                   attention_window=8, dropout=0.0),
                    TokenOptions(max_items=5, max_token_num=64, max_attr_length=8), item_table=EpochTable(),
                    pooling="mean", lm_layers=[1])
    model = RecModel(enc, CosineScorer(0.05), MatryoshkaLoss(SoftmaxLoss(), dims=[8, 32]),
                     negatives=SampledLayer(FullCatalogue()), optimizer=partial(torch.optim.AdamW, lr=1e-3))
    fit_tiny(model, data, Loader(batch_size=32, num_negatives=0, examples=Prefixes()), max_epochs=5)
    random_ndcg10 = sum(1.0 / np.log2(r + 1) for r in range(1, 11)) / (data.n_items - 5)
    for layer in (1, 2):
        enc.set_serve_layer(layer)
        for dim in (8, 32):
            got = evaluate(model, data, "test", (10,), index=None if dim == 32 else PrefixSpec(dim=dim))
            assert got["ndcg@10"] >= 2 * random_ndcg10, (layer, dim, got)


def test_recformer_2d_config_serves_a_layer_and_prefix_through_the_cli(tmp_path):
    from tests.conftest import REPO
    from tests.test_recformer import TINY

    tiny = tmp_path / "tiny.yaml"
    tiny.write_text("model:\n  init_args:\n    encoder:\n      init_args:\n        model: null\n"
                    "        backbone: {hidden_size: 16, num_layers: 2, num_heads: 2, intermediate_size: 32, "
                    "attention_window: 8}\n        tokens: {max_items: 5, max_token_num: 64, max_attr_length: 8}\n")

    def fit(run, *extra):
        return main(["fit", "--config", str(REPO / "configs" / "recformer_2d.yaml"), "--config", str(tiny),
                     "--run-dir", str(run), "--data.dataset", "synthetic", "--data.options", TINY,
                     "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false", *extra])

    run, served = tmp_path / "run", tmp_path / "served"
    assert fit(run, "--trainer.fast_dev_run", "true") == 0
    assert fit(served, "--transfer-from", str(run), "--trainer.max_epochs", "0", ENC + "serve_layer", "1") == 0
    out = tmp_path / "eval.json"
    assert main(["evaluate", "--run-dir", str(served), "--index", "prefix:dim=8", "--out", str(out)]) == 0
    assert 0.0 <= json.loads(out.read_text())["ndcg@20"] <= 1.0
    # The served run's stored item table is the 1-layer encoding of the same weights.
    from recsys.runs import Run

    model = Run.open(run).recommender()
    layered_encoder(model.encoder).set_serve_layer(1)
    stored = torch.load(served / "model.pt", weights_only=True)["state_dict"]["encoder.item_cache"]
    with torch.no_grad():
        torch.testing.assert_close(model.encoder.item_table(), stored, atol=1e-5, rtol=1e-4)


def test_recformer_shallow_pass_skips_its_extra_loss_terms():
    """The MLM term is the last layer's step's only: the shallow pass of a 2D step computes none."""
    torch.manual_seed(0)
    data = checkerboard()
    enc = _recformer(lm_layers=[1], mlm_weight=0.1, mlm_probability=0.5)
    enc.bind(data)
    enc.train()
    batch = Batch(torch.arange(4), torch.randint(0, data.n_items, (4, 2)))
    batch.history = torch.from_numpy(data.history(batch.users.numpy(), "train", enc.history_len))
    assert set(enc.batch_losses(batch)) == {"mlm"}
    with enc.at_layer(1):
        assert enc.batch_losses(batch) == {}
    with enc.at_layer(DEPTH):
        assert set(enc.batch_losses(batch)) == {"mlm"}
