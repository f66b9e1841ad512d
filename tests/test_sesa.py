"""SESA: concept vocabularies, the encoder contract, non-negative activations, exact score decompositions,
explanations in `recsys score`, and the pipeline through the CLI with a tiny LM."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from recsys.cli import main
from recsys.data.batch import Batch
from recsys.data.concepts import Concepts, clean_concept
from recsys.encoders import SESA
from recsys.encoders.language import TextFeatures
from recsys.errors import DataError
from recsys.losses import SoftmaxLoss
from recsys.scorers import CosineScorer, DotScorer
from recsys.scoring.explain import top_concepts
from recsys.testing import EncoderConformance, checkerboard
from recsys.testing.fixtures import tiny_synthetic
from tests.conftest import fit_args
from tests.test_text import make_tiny_bert


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    root = tmp_path_factory.mktemp("sesa_lm")
    return str(make_tiny_bert(root / "model")), str(root / "cache")


def _text(lm) -> TextFeatures:
    return TextFeatures(lm_path=lm[0], cache_dir=lm[1])


class _TinySESA:
    scorer = CosineScorer(0.2)
    loss = SoftmaxLoss()
    lr = 0.02
    weight_decay = 0.0
    checkerboard_epochs = 15

    @pytest.fixture(autouse=True)
    def _lm(self, tiny_lm):
        self.lm = tiny_lm


class TestSESAHistory(_TinySESA, EncoderConformance):
    def make_encoder(self):
        return SESA(Concepts(columns=["genres"], min_items=1), _text(self.lm))


class TestSESAPooled(_TinySESA, EncoderConformance):
    def make_encoder(self):
        return SESA(Concepts(columns=["genres"], min_items=1), _text(self.lm), user="pooled", activation="sigmoid",
                    residual="item", l1_weight=0.01)


# ------------------------------------------------------------------------------------------------ vocabularies
def test_clean_concept_merges_spellings():
    assert clean_concept(" Sci-Fi ") == clean_concept("sci-fi") == "sci-fi"
    assert clean_concept("Film_Noir") == "film noir"
    assert clean_concept("'quoted tag'!") == "quoted tag"
    assert clean_concept(None) == clean_concept(float("nan")) == ""


def test_vocabulary_from_attributes_is_cleaned_and_frequency_filtered():
    data = checkerboard()
    data.item_table["tags"] = [["Rare"] if i == 0 else ["Common Tag", "common_tag", "in netflix queue"]
                               for i in range(data.n_items)]
    vocab = Concepts(columns=["genres", "tags"], min_items=2).build(data)
    assert "rare" not in vocab.names and "in netflix queue" not in vocab.names
    assert {"group0", "group1", "common tag"} <= set(vocab.names)
    assert vocab.items.shape == (data.n_items, len(vocab))
    assert vocab.item_concepts(1) == sorted(vocab.item_concepts(1), key=vocab.names.index)
    assert set(vocab.item_concepts(1)) == {"group1", "common tag"}


def test_vocabulary_from_synthetic_concept_tags():
    data = tiny_synthetic()
    vocab = Concepts(columns=["genres", "tags", "concepts"], min_items=1).build(data)
    truth = [set(map(clean_concept, c)) for c in data.item_table["concepts"]]
    assert all(set(vocab.item_concepts(i)) == truth[i] for i in range(data.n_items))


def test_vocabulary_from_user_supplied_tables(tmp_path):
    data = checkerboard()
    names = tmp_path / "skills.txt"
    names.write_text("Python\nSQL\nunused skill\n")
    items = tmp_path / "item_skills.csv"
    items.write_text("item,concept\n0,python\n1,sql\n1,Spark\n")
    users = tmp_path / "user_skills.csv"
    users.write_text("user,concept\n0,Python\n2,unknown\n")
    vocab = Concepts(columns=[], names=str(names), item_table=str(items), user_table=str(users)).build(data)
    assert vocab.names == ["python", "sql", "unused skill", "spark"]
    assert set(vocab.item_concepts(1)) == {"sql", "spark"}
    assert vocab.users.shape == (data.n_users, 4) and vocab.users[0].toarray().tolist() == [[1, 0, 0, 0]]
    assert vocab.users[2].nnz == 0  # "unknown" is not in the vocabulary (logged, not an error)


def test_vocabulary_errors_are_clear(tmp_path):
    data = checkerboard()
    with pytest.raises(DataError, match="none of the concept columns"):
        Concepts(columns=["skills"]).build(data)
    bad = tmp_path / "bad.csv"
    bad.write_text("item,concept\n999,python\n")
    with pytest.raises(DataError, match="unknown item ID 999"):
        Concepts(columns=[], item_table=str(bad)).build(data)
    with pytest.raises(DataError, match="empty"):
        Concepts(columns=["genres"], min_items=10_000).build(data)


# ------------------------------------------------------------------------------------------------ the encoder
@pytest.mark.parametrize("activation", ["relu", "sigmoid"])
@pytest.mark.parametrize("user", ["history", "pooled"])
def test_activations_are_non_negative(tiny_lm, activation, user):
    data = tiny_synthetic()
    enc = SESA(Concepts(columns=["concepts"], min_items=1), _text(tiny_lm), activation=activation, user=user,
               residual="both", residual_std=1.0)
    enc.bind(data)
    with torch.no_grad():
        # Push the weights hard in both directions: activations must stay non-negative whatever was learned.
        for p in enc.parameters():
            p.add_(torch.randn_like(p) * 3)
        users, items = enc.propagate()
    assert enc.out_dim == len(enc.concept_names()) == users.shape[1] == items.shape[1]
    assert (users >= 0).all() and (items >= 0).all()
    assert (items > 0).any()


def test_concept_embeddings_start_from_name_embeddings(tiny_lm):
    data = tiny_synthetic()
    enc = SESA(Concepts(columns=["concepts"], min_items=1), _text(tiny_lm))
    enc.bind(data)
    torch.testing.assert_close(enc.concept_emb.detach(), enc.text.embed(enc.concept_names()))


@pytest.mark.parametrize("scorer", [DotScorer(), CosineScorer(0.1)])
def test_contributions_sum_to_score(tiny_lm, scorer):
    data = tiny_synthetic()
    enc = SESA(Concepts(columns=["concepts"], min_items=1), _text(tiny_lm), residual="both", residual_std=0.5)
    enc.bind(data)
    enc.eval()
    users = torch.arange(data.n_users).repeat_interleave(3)
    items = torch.randint(0, data.n_items, (len(users),))
    contrib = enc.contributions(users, items, scorer)
    with torch.no_grad():
        score = scorer(enc.user_activations(users), enc.item_activations(items)[:, None, :]).squeeze(1)
    assert (contrib >= 0).all()
    torch.testing.assert_close(contrib.sum(-1), score, rtol=1e-5, atol=1e-6)
    idx, shares = top_concepts(scorer.prepare_queries(enc.user_activations(users)),
                               scorer.prepare_items(enc.item_activations(items)), enc.concept_names())
    top = contrib.topk(3, dim=-1)
    nonzero = (top.values > 0).numpy()
    assert (idx[nonzero] == top.indices.numpy()[nonzero]).all() and (idx[~nonzero] == -1).all()
    np.testing.assert_allclose(shares[nonzero], (top.values / score[:, None]).numpy()[nonzero], rtol=1e-4)
    assert (shares.sum(1) <= 1 + 1e-5).all()


def test_declared_concepts_feed_both_sides(tiny_lm, tmp_path):
    data = checkerboard()
    users = tmp_path / "u.csv"
    users.write_text("user,concept\n0,group0\n")
    enc = SESA(Concepts(columns=["genres"], min_items=1, user_table=str(users)), _text(tiny_lm),
               declared_weight=5.0)
    enc.bind(data)
    with torch.no_grad():
        items = enc.item_activations(torch.tensor([0, 1]))
        u = enc.user_activations(torch.tensor([0, 2]))
    g0 = enc.concept_names().index("group0")
    assert items[0, g0] >= 5.0 - 1e-4 and items[1, g0] < 5.0  # item 0 is in group0, item 1 is not
    assert u[0, g0] >= 5.0 - 1e-4 and u[1, g0] < 5.0


def test_declared_support_and_undeclared_penalty(tiny_lm):
    data = tiny_synthetic()
    concepts = Concepts(columns=["concepts"], min_items=1)
    enc = SESA(concepts, _text(tiny_lm), item_support="declared", residual="item", residual_std=1.0)
    enc.bind(data)
    with torch.no_grad():
        items = enc.item_activations(torch.arange(data.n_items))
    assert ((items > 0) <= (enc.item_declared > 0)).all()  # only declared concepts activate
    enc = SESA(concepts, _text(tiny_lm), undeclared_l1=0.1)
    enc.bind(data)
    enc.train()
    batch = Batch(torch.arange(4), torch.randint(0, data.n_items, (4, 3)))
    out = enc(batch)
    items = enc.item_activations(batch.items)
    expected = 0.1 * (items * (1 - enc.item_declared[batch.items])).sum(-1).mean()
    torch.testing.assert_close(out.losses["sparsity"], expected)


def test_invalid_options():
    with pytest.raises(ValueError, match="activation"):
        SESA(activation="tanh")
    with pytest.raises(ValueError, match="user"):
        SESA(user="id")
    with pytest.raises(ValueError, match="residual"):
        SESA(residual="all")
    with pytest.raises(ValueError, match="item_support"):
        SESA(item_support="some")


# ------------------------------------------------------------------------------------------------ the pipeline
def _sesa_args(run, lm, *extra):
    return fit_args("sesa.yaml", run, "--model.init_args.encoder.init_args.text.init_args.lm_path", lm[0],
                    "--model.init_args.encoder.init_args.text.init_args.cache_dir", lm[1],
                    "--model.init_args.encoder.init_args.text.init_args.lm_dim", "16", *extra)


@pytest.fixture(scope="module")
def sesa_run(tiny_lm, tmp_path_factory):
    run = tmp_path_factory.mktemp("sesa") / "run"
    assert main(_sesa_args(run, tiny_lm)) == 0
    return run


def test_fit_stores_concepts_and_score_explains(sesa_run, tmp_path):
    from recsys.runs import Run

    payload = Run.open(sesa_run).payload
    names, (q, i) = payload.concepts, payload.tables
    assert q.shape[1] == i.shape[1] == len(names) and (q >= 0).all() and (i >= 0).all()

    out = tmp_path / "top.parquet"
    assert main(["score", "--run-dir", str(sesa_run), "--out", str(out), "--k", "5", "--explain"]) == 0
    t = pq.read_table(out).to_pandas()
    assert list(t.columns) == ["user", "item", "rank", "score", "explanation"]
    first = t.iloc[0]
    assert 1 <= len(first["explanation"]) <= 3 and all(e["concept"] in names for e in first["explanation"])
    shares = [e["share"] for e in first["explanation"]]
    assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 1 + 1e-5
    # The shares are exact: recompute the top concept's contribution from the stored tables.
    from recsys.data.vocab import Vocabulary

    u = Vocabulary.load(sesa_run / "data/user_vocab.parquet", "user").encode([first["user"]])[0]
    it = Vocabulary.load(sesa_run / "data/item_vocab.parquet", "item").encode([first["item"]])[0]
    contrib = q[u] * i[it]
    assert abs(float(contrib.sum()) - first["score"]) < 1e-4
    assert names[int(contrib.argmax())] == first["explanation"][0]["concept"]


def test_score_with_seismic_index_matches_exact(sesa_run, tmp_path):
    exact, approx = tmp_path / "exact.parquet", tmp_path / "seismic.parquet"
    assert main(["score", "--run-dir", str(sesa_run), "--out", str(exact), "--k", "10"]) == 0
    assert main(["score", "--run-dir", str(sesa_run), "--out", str(approx), "--k", "10",
                 "--index", "seismic:n_postings=none,block_size=4"]) == 0
    a, b = pq.read_table(exact).to_pandas(), pq.read_table(approx).to_pandas()
    assert len(a) == len(b)
    np.testing.assert_allclose(a["score"].to_numpy(), b["score"].to_numpy(), rtol=1e-5, atol=1e-6)


def test_explain_needs_an_explicit_model(mf_run, tmp_path):
    assert main(["score", "--run-dir", str(mf_run), "--out", str(tmp_path / "o.parquet"), "--explain"]) == 1


def test_explain_and_index_keep_the_score_path_light(sesa_run, tmp_path):
    import subprocess
    import sys

    from tests.conftest import REPO

    code = ("import sys; from recsys.cli import main; "
            f"main(['score', '--run-dir', {str(sesa_run)!r}, '--out', {str(tmp_path / 'o.parquet')!r}, "
            "'--explain', '--index', 'seismic']); "
            "bad = [m for m in ('lightning', 'torch_geometric', 'transformers') if m in sys.modules]; "
            "print('HEAVY', bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True).stdout
    assert "HEAVY []" in out
