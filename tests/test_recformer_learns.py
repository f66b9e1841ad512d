"""Recformer's known-answer learning test: on text chains (the next item is the one whose title is the current
item's ``next`` word) a tiny randomly initialised Recformer, trained through ``RecModel`` and a Lightning
``Trainer``, must rank held-out next items far above popularity and random."""

from functools import partial

import numpy as np
import pytest
import torch

from recsys.baselines.popularity import MostPopular
from recsys.data.datamodule import Loader
from recsys.data.examples import Prefixes
from recsys.encoders import Backbone, EpochTable, Recformer, TrainableTable
from recsys.losses import SoftmaxLoss
from recsys.metrics.evaluate import evaluate
from recsys.model import RecModel
from recsys.scorers import CosineScorer
from recsys.testing.fixtures import text_chains
from recsys.testing.training import fit_tiny
from recsys.text.recformer_tokens import TokenOptions
from recsys.training import FullCatalogue, InBatchNegatives

PER_USER = 6


def _random_ndcg10(data) -> float:
    """Expected ndcg@10 of a uniformly random ranking: one test item among the items not excluded for test (every
    user's train and valid items, ``PER_USER - 1`` distinct ring steps)."""
    candidates = data.n_items - (PER_USER - 1)
    return float(sum(1.0 / np.log2(r + 1) for r in range(1, 11)) / candidates)


@pytest.fixture(scope="module")
def chains():
    data = text_chains(n_items=40, n_users=160, per_user=PER_USER, seed=0)
    pop = MostPopular()
    pop.fit(data)
    return data, evaluate(pop, data, "test", ks=(10,))


@pytest.mark.parametrize(("pooling", "stage"), [("cls", "pretrain"), ("mean", "stage1")])
def test_recformer_learns_next_item_from_text(chains, pooling, stage):
    """Pre-training (items encoded with gradients, in-batch negatives) with the ``<s>`` state, and fine-tuning stage
    1 (table re-encoded each epoch, softmax over the catalogue) with mean pooling, both from random weights.

    Measured (seed 0, 5 epochs): ndcg@10 0.90 (cls, pre-training) and 0.87 (mean, stage 1), recall@10 1.0;
    popularity 0.18, random 0.13.
    """
    data, pop = chains
    torch.manual_seed(0)
    table, negatives = (TrainableTable(), InBatchNegatives()) if stage == "pretrain" else (EpochTable(),
                                                                                            FullCatalogue())
    enc = Recformer(None, Backbone(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                                   attention_window=8, dropout=0.0),
                    TokenOptions(max_items=5, max_token_num=64, max_attr_length=8), item_table=table, pooling=pooling)
    model = RecModel(enc, CosineScorer(temperature=0.05), SoftmaxLoss(), negatives=negatives,
                     optimizer=partial(torch.optim.AdamW, lr=1e-3, weight_decay=0.0))
    fit_tiny(model, data, Loader(batch_size=32, num_negatives=0, examples=Prefixes()), max_epochs=5)
    got = evaluate(model, data, "test", ks=(10,))
    rand = _random_ndcg10(data)
    assert pop["ndcg@10"] < 2 * rand  # uniform walk starts: popularity is near random here
    assert got["ndcg@10"] >= 3 * pop["ndcg@10"], (got, pop)
    assert got["ndcg@10"] >= 4 * rand, (got, rand)
    assert got["recall@10"] >= 0.8, got
