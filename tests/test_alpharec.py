"""AlphaRec and the linear probe: the encoder contract, cold items, the CLI pipeline with a tiny LM, the LM cache."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from recsys.cli import main
from recsys.data.batch import Batch
from recsys.data.prepared import PreparedData
from recsys.data.splits import TEST
from recsys.encoders import AlphaRec, LinearProbe
from recsys.encoders.language import history_mean
from recsys.losses import SoftmaxLoss
from recsys.scorers import CosineScorer
from recsys.testing import EncoderConformance, checkerboard
from recsys.text.lm import STATS
from tests.conftest import fit_args, write_new_items
from tests.test_text import make_tiny_bert


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    root = tmp_path_factory.mktemp("alpharec_lm")
    return str(make_tiny_bert(root / "model")), str(root / "cache")


class _TinyLM:
    scorer = CosineScorer(0.15)
    loss = SoftmaxLoss()
    lr = 0.01
    weight_decay = 1e-6
    checkerboard_epochs = 10  # text separates the groups from the start: a few epochs suffice

    @pytest.fixture(autouse=True)
    def _lm(self, tiny_lm):
        self.lm_path, self.cache_dir = tiny_lm


class TestAlphaRecMLP(_TinyLM, EncoderConformance):
    def make_encoder(self):
        return AlphaRec(dim=8, mapping="mlp", hidden_dim=16, lm_path=self.lm_path, cache_dir=self.cache_dir)


class TestAlphaRecLinear(_TinyLM, EncoderConformance):
    def make_encoder(self):
        return AlphaRec(dim=8, mapping="linear", n_layers=1, lm_path=self.lm_path, cache_dir=self.cache_dir)


class TestLinearProbeHistory(_TinyLM, EncoderConformance):
    def make_encoder(self):
        return LinearProbe(dim=8, user="history", lm_path=self.lm_path, cache_dir=self.cache_dir)


class TestLinearProbeID(_TinyLM, EncoderConformance):
    def make_encoder(self):
        return LinearProbe(dim=8, user="id", lm_path=self.lm_path, cache_dir=self.cache_dir)


def test_history_mean_matches_dense():
    train = sp.csr_matrix(np.array([[1, 0, 2], [0, 0, 0], [1, 1, 1]], dtype=np.float32))
    z = torch.arange(6, dtype=torch.float32).reshape(3, 2)
    got = history_mean(train, z)
    want = torch.stack([(z[0] + z[2]) / 2, torch.zeros(2), z.mean(0)])
    torch.testing.assert_close(got, want)


def test_normalized_output_with_dot_equals_cosine_scorer(tiny_lm):
    """normalize_output + DotScorer + SoftmaxLoss(τ) is the CosineScorer(τ) loss, gradients included."""
    from recsys.scorers import DotScorer

    data = checkerboard()
    batch = Batch(torch.arange(6), torch.randint(0, data.n_items, (6, 5)))
    grads, losses = [], []
    for normalize, scorer, loss_fn in ((False, CosineScorer(0.15), SoftmaxLoss()),
                                       (True, DotScorer(), SoftmaxLoss(0.15))):
        torch.manual_seed(0)
        enc = AlphaRec(dim=8, hidden_dim=16, lm_path=tiny_lm[0], cache_dir=tiny_lm[1], normalize_output=normalize)
        enc.bind(data)
        out = enc(batch)
        s = scorer(out.query, out.candidates)
        loss = loss_fn(s[:, 0], s[:, 1:])
        loss.backward()
        losses.append(loss.detach())
        grads.append(enc.mapping[0].weight.grad)
    torch.testing.assert_close(losses[0], losses[1])
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("normalize_output,cold_neighbors", [(False, 0), (True, 0), (False, 3)])
def test_cold_items_are_embedded_from_text(tiny_lm, normalize_output, cold_neighbors):
    """Items with side-table text but no training interaction get their mapped text embedding (zero-shot)."""

    base = checkerboard()
    cold = np.arange(base.n_items - 4, base.n_items)
    labels = np.where(np.isin(base.items, cold), TEST, base.labels).astype(np.int8)
    data = PreparedData(base.user_vocab, base.item_vocab, base.users, base.items, labels, base.timestamps,
                        item_table=base.item_table, name="cold")
    assert data.train[:, cold].nnz == 0
    torch.manual_seed(0)
    enc = AlphaRec(dim=8, hidden_dim=16, lm_path=tiny_lm[0], cache_dir=tiny_lm[1], normalize_output=normalize_output,
                   cold_neighbors=cold_neighbors)
    enc.bind(data)
    assert (enc.cold_rows is not None) == (cold_neighbors > 0)
    enc.eval()
    enc.precompute()
    table = enc.item_table()
    enc.clear_cache()
    assert torch.isfinite(table).all() and (table[cold].norm(dim=1) > 0).all()
    # embed_new_items reproduces a cold catalogue item from its text, and embeds texts outside the catalogue.
    torch.testing.assert_close(enc.embed_new_items(data.item_table.iloc[cold]), table[cold], atol=1e-5, rtol=1e-5)
    new = data.item_table.iloc[:1].assign(title="group0 item 99")
    assert enc.embed_new_items(new).shape == (1, 8)
    if cold_neighbors:
        # Borrowing the neighbours' graph part moves cold items off their bare text embedding.
        own = enc.propagation.alpha[0] * enc.mapping(enc.lm_nodes[enc.cold_rows])
        assert not torch.allclose(table[cold], own.detach())


def test_fit_cli_and_cache(tiny_lm, tmp_path):
    lm_path, _ = tiny_lm
    cache = str(tmp_path / "lm_cache")
    extra = ["--model.init_args.encoder.init_args.lm_path", lm_path,
             "--model.init_args.encoder.init_args.cache_dir", cache,
             "--data.loader.batch_size", "512", "--data.loader.num_negatives", "16"]
    before = dict(STATS)
    assert main(fit_args("alpharec_mlp.yaml", tmp_path / "a", *extra, epochs=2)) == 0
    metrics = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert 0.0 <= metrics["ndcg@20"] <= 1.0
    first = STATS["encoded"] - before["encoded"]
    assert first > 0
    # A second fit of another config on the same data: every text comes from the cache, no model is loaded.
    mid = dict(STATS)
    assert main(fit_args("alpharec.yaml", tmp_path / "b", *extra, epochs=1)) == 0
    assert STATS["encoded"] == mid["encoded"] and STATS["model_loads"] == mid["model_loads"]
    assert STATS["cached"] - mid["cached"] >= first
    # Reloading the run (evaluate rebinds the encoder) also reads the cache.
    assert main(["evaluate", "--run-dir", str(tmp_path / "a")]) == 0
    assert STATS["encoded"] == mid["encoded"]
    # Changing the text (another attribute set) encodes again.
    assert main(fit_args("linear_probe.yaml", tmp_path / "c", *extra,
                         "--model.init_args.encoder.init_args.attributes", "[title]", epochs=1)) == 0
    assert STATS["encoded"] > mid["encoded"]


def test_score_ranks_new_items_from_their_side_table(tiny_lm, tmp_path, capsys):
    import pandas as pd

    lm_path, cache = tiny_lm
    extra = ["--model.init_args.encoder.init_args.lm_path", lm_path,
             "--model.init_args.encoder.init_args.cache_dir", cache,
             "--data.loader.batch_size", "512", "--data.loader.num_negatives", "16"]
    run = tmp_path / "run"
    assert main(fit_args("alpharec.yaml", run, *extra, epochs=1)) == 0
    trained = pd.read_parquet(run / "data" / "items.parquet")
    new = write_new_items(run, tmp_path / "new.csv")
    n_items = len(trained)
    out = tmp_path / "top.parquet"
    assert main(["score", "--run-dir", str(run), "--out", str(out), "--k", str(n_items + 2), "--keep-seen",
                 "--new-items", str(tmp_path / "new.csv")]) == 0
    top = pd.read_parquet(out)
    per_user = top.groupby("user")["item"].apply(lambda s: set(map(str, s)))
    assert all({str(v) for v in new["item"]} <= items for items in per_user)
    assert all(len(items) == n_items + 2 for items in per_user)
    # An ID the model was trained on is not new: a clear error naming the file and row.
    trained.head(1).assign(**{c: "x" for c in trained.columns if c != "item"}).to_csv(tmp_path / "old.csv",
                                                                                        index=False)
    capsys.readouterr()
    assert main(["score", "--run-dir", str(run), "--out", str(tmp_path / "x.parquet"),
                 "--new-items", str(tmp_path / "old.csv")]) != 0
    err = capsys.readouterr().err
    assert "already in the trained catalogue" in err and "old.csv" in err and "row 0" in err
    assert not (tmp_path / "x.parquet").exists()


def test_new_item_ids_must_match_the_catalogue_id_type(tmp_path):
    from recsys.errors import DataError
    from recsys.scoring.new_items import _as_vocab_ids

    np.testing.assert_array_equal(_as_vocab_ids(np.array([7, 8], dtype=object), np.dtype(np.int64), "f.csv"), [7, 8])
    with pytest.raises(DataError, match=r"file f\.csv.*column 'item'.*row 1"):
        _as_vocab_ids(np.array([7, "x"], dtype=object), np.dtype(np.int64), "f.csv")
    assert _as_vocab_ids(np.array([7]), np.dtype(object), "f.csv").tolist() == ["7"]


def test_mlp_width_follows_the_official_rule():
    from recsys.encoders.language import make_mapping, official_hidden_dim

    # The official per-LM table (models/General/AlphaRec.py): BERT ×8, ada-002 ×2, text-embedding-3-large ×1/2,
    # 4096-d 7B LMs ×9/32 - all 768 · 6144 first-layer weights.
    assert [official_hidden_dim(d) for d in (768, 1536, 3072, 4096)] == [6144, 3072, 1536, 1152]
    assert official_hidden_dim(384) == 12288  # all-MiniLM-L6-v2
    mlp = make_mapping(384, 64, "mlp", None)
    assert mlp[0].weight.shape == (12288, 384) and mlp[2].weight.shape == (64, 12288) and mlp[0].bias is not None
    assert make_mapping(384, 64, "mlp", 100)[0].weight.shape == (100, 384)  # still settable
    assert make_mapping(384, 64, "linear", None).bias is None


def test_titles_only_text_and_a_missing_attribute(tiny_lm):
    from recsys.errors import DataError

    data = checkerboard()
    enc = AlphaRec(dim=8, hidden_dim=16, lm_path=tiny_lm[0], cache_dir=tiny_lm[1], attributes=["title"])
    assert all(t.startswith("title: ") and "genres" not in t for t in enc.text.texts(data.item_table))
    bad = AlphaRec(dim=8, hidden_dim=16, lm_path=tiny_lm[0], cache_dir=tiny_lm[1], attributes=["title", "tags"])
    with pytest.raises(DataError) as e:
        bad.bind(data)
    assert str(e.value) == ("attributes: column 'tags' is not in the item table (available: "
                            + ", ".join(c for c in data.item_table.columns if c != "item") + ")")


def test_default_width_fits_with_a_small_lm(tiny_lm, tmp_path):
    # hidden_dim null with the 32-d test LM: 768 · 6144 // 32 = 147456 hidden units; one tiny fit still trains.
    lm_path, cache = tiny_lm
    run = tmp_path / "wide"
    assert main(fit_args("alpharec_titles.yaml", run, "--model.init_args.encoder.init_args.lm_path", lm_path,
                         "--model.init_args.encoder.init_args.cache_dir", cache, "--data.loader.batch_size", "512",
                         "--data.loader.num_negatives", "16", epochs=1)) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert np.isfinite(metrics["ndcg@20"])


def test_runs_from_before_the_official_width_rule_still_load(tiny_lm):
    """A checkpoint whose MLP has the old default width (4 × the LM size) loads into hidden_dim=None at that width."""
    data = checkerboard()
    old = AlphaRec(dim=8, hidden_dim=4 * 32, lm_path=tiny_lm[0], cache_dir=tiny_lm[1])
    old.bind(data)
    new = AlphaRec(dim=8, lm_path=tiny_lm[0], cache_dir=tiny_lm[1])
    new.bind(data)
    assert new.mapping[0].out_features != 128
    new.load_state_dict(old.state_dict())
    assert new.mapping[0].out_features == 128
    with torch.no_grad():
        assert torch.equal(new.propagate()[1], old.propagate()[1])
