"""The text-history-mean baseline: fitted through ``recsys fit``, ranks by text, scores new users and new items."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from recsys.baselines import TextHistoryMean
from recsys.capabilities import FoldsIn, Histories, ScoresHistories
from recsys.data.splits import TEST, TRAIN, VALID
from recsys.datasets.base import RawDataset
from recsys.fitting import fit_run
from recsys.runs import Run
from recsys.testing import BaselineConformance
from recsys.testing.fixtures import _CHAIN_WORDS, text_chains
from tests.conftest import REPO
from tests.test_text import SPECIAL, WORDS, make_tiny_bert


def make_word_bert(path, seed: int = 0):
    """:func:`make_tiny_bert` with every text-chain word as one token: a shared word is a shared random vector,
    which a character-level vocab (random weights) would blur."""
    from transformers import BertConfig, BertModel, BertTokenizer

    path.mkdir(parents=True, exist_ok=True)
    vocab = SPECIAL + WORDS + ["next", "0", "1"] + list(_CHAIN_WORDS)
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    try:
        tok = BertTokenizer(vocab=str(path / "vocab.txt"))  # transformers 5
    except TypeError:
        tok = BertTokenizer(vocab_file=str(path / "vocab.txt"))  # transformers 4
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64)
    BertModel(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    root = tmp_path_factory.mktemp("text_mean_lm")
    return str(make_tiny_bert(root / "model")), str(root / "cache")


@pytest.fixture(scope="module")
def word_lm(tmp_path_factory):
    root = tmp_path_factory.mktemp("text_mean_word_lm")
    return str(make_word_bert(root / "model")), str(root / "cache")


class TestTextHistoryMeanConformance(BaselineConformance):
    @pytest.fixture(autouse=True)
    def _lm(self, tiny_lm):
        self.lm_path, self.cache_dir = tiny_lm

    def make_model(self):
        return TextHistoryMean(lm_path=self.lm_path, cache_dir=self.cache_dir)


def chains_dataset() -> RawDataset:
    """:func:`text_chains` as a raw dataset with its fixed split, for ``recsys fit``."""
    data = text_chains(n_items=40, n_users=160, per_user=6, seed=0)
    names = {TRAIN: "train", VALID: "valid", TEST: "test"}
    log = pd.DataFrame({"user": data.users, "item": data.items, "timestamp": data.timestamps,
                        "split": [names[int(v)] for v in data.labels]})
    return RawDataset("text_chains", log, items=data.item_table.copy())


def test_fit_via_cli_ranks_the_text_successor_and_serves_new_users(word_lm, tmp_path):
    lm_path, cache = word_lm
    run_dir = tmp_path / "run"
    fit_run(["--config", str(REPO / "configs" / "text_mean.yaml"), "--run-dir", str(run_dir),
             "--model.init_args.lm_path", lm_path, "--model.init_args.cache_dir", cache],
            dataset=chains_dataset(), quiet=True)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    # A random ranking of the 35 candidates (the 40 items less the 5 of train+valid) has hit@20 = 20/35 and
    # ndcg@20 = sum_{r<=20} 1/log2(r+1) / 35 (about 0.20); the text has to do clearly better.
    n_candidates = 35
    random_ndcg = sum(1 / np.log2(r + 1) for r in range(1, 21)) / n_candidates
    assert metrics["ndcg@20"] > 1.5 * random_ndcg and metrics["hit@20"] > 0.8, metrics
    run = Run.open(run_dir)
    model = run.recommender()
    assert model.capability(FoldsIn) is model and model.capability(ScoresHistories) is model
    data = run.data()
    # A new user given a training user's history gets that user's query and scores.
    train = data.train
    h = Histories.from_lists([train.indices[train.indptr[0]:train.indptr[1]].tolist()], data.n_items)
    q, items = model.serving_tables(data)
    torch.testing.assert_close(model.fold_in(h), q[:1])
    torch.testing.assert_close(model.score_histories(h, torch.arange(1)), model.score_users(torch.arange(1)))
    # Items outside the catalogue are embedded from their text like catalogue items.
    torch.testing.assert_close(model.new_item_table(data.item_table.head(3)), items[:3], atol=1e-5, rtol=1e-5)


def test_missing_attribute_is_a_one_line_error(tiny_lm):
    from recsys.errors import DataError

    m = TextHistoryMean(lm_path=tiny_lm[0], cache_dir=tiny_lm[1], attributes=["title", "plot"])
    with pytest.raises(DataError, match=r"column 'plot' is not in the item table \(available: title, next\)"):
        m.fit(text_chains())
