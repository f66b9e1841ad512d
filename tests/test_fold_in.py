"""Users unseen in training scored from item histories (``recsys score --histories``): known answers per model.

Each fold-in is checked against a closed form or an independent computation: the least-squares solve against
implicit's own ``recalculate_user``, MF against a numpy ridge solution, EASE / item-kNN / GF-CF against their score
of the same rows as training users, SASRec against its training-time query, AlphaRec against propagation over the
graph extended with the new user. The end-to-end tests hold users out of a fit and score them through the CLI.
"""

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp
import torch
from conftest import REPO, TINY_SYNTHETIC

from recsys.baselines import ALS, BPR, EASE, GFCF, ItemKNN, MostPopular
from recsys.capabilities import FoldsIn, Histories, ScoresHistories
from recsys.cli import main
from recsys.data.batch import Batch
from recsys.data.prepared import PreparedData
from recsys.data.splits import TRAIN
from recsys.data.vocab import Vocabulary
from recsys.encoders import AlphaRec, LightGCN, MatrixFactorization, Matryoshka, SASRec
from recsys.encoders.id import least_squares_fold_in
from recsys.errors import DataError, ServingError
from recsys.recommender import EmbeddingRecommender
from recsys.runs import Run
from recsys.scorers import DotScorer
from recsys.scoring.batch import run_scoring
from recsys.scoring.fold_in import check_scores_histories, fold_in_queries, read_histories
from recsys.testing import checkerboard, tiny_synthetic

pytestmark = pytest.mark.usefixtures("one_thread")


def train_histories(data: PreparedData, rows: np.ndarray, max_len: int = 200) -> Histories:
    """The training histories of ``rows`` in time order, as a histories file would give them."""
    seqs = data.history(rows, "train", max_len)
    return Histories.from_lists([s[s >= 0] for s in seqs], data.n_items)


# ------------------------------------------------------------------------------------------------ Histories
def test_histories_matrix_counts_repeats_once_and_sequences_are_left_padded():
    h = Histories.from_lists([[3, 1, 3], [], [0, 1, 2, 4]], 5)
    np.testing.assert_array_equal(h.matrix().toarray(), [[0, 1, 0, 1, 0], [0] * 5, [1, 1, 1, 0, 1]])
    np.testing.assert_array_equal(h.sequences(3), [[3, 1, 3], [-1, -1, -1], [1, 2, 4]])
    sub = h.select(np.array([2, 0]))
    np.testing.assert_array_equal(sub.sequences(4), [[0, 1, 2, 4], [-1, 3, 1, 3]])


def test_read_histories_orders_by_timestamp_and_counts_unknown_items(tmp_path):
    f = tmp_path / "h.csv"
    pd.DataFrame({"user": [7, 7, 7, 9, 9, 5], "item": [30, 10, 999, 20, 998, 997],
                  "timestamp": [30, 10, 5, 1, 2, 3]}).to_csv(f, index=False)
    hist = read_histories(f, Vocabulary(np.array([1, 2]), "user"), Vocabulary(np.array([10, 20, 30]), "item"))
    np.testing.assert_array_equal(hist.ids, [7, 9])
    assert hist.ids.dtype == np.int64  # the run's user ID type
    np.testing.assert_array_equal(hist.histories.sequences(2), [[0, 2], [-1, 1]])  # 10 (t=10) before 30 (t=30)
    assert (hist.n_rows, hist.unknown_items, hist.first_unknown_item) == (6, 3, 999)
    np.testing.assert_array_equal(hist.empty_ids, [5])  # every item of user 5 was unknown


def test_read_histories_refuses_a_user_id_of_another_type(tmp_path):
    f = tmp_path / "h.csv"
    f.write_text("user,item\n1,10\nbob,10\n")
    with pytest.raises(DataError, match=r"user ID 'bob' is not of the run's user ID type.*h\.csv.*row 1"):
        read_histories(f, Vocabulary(np.array([1, 2]), "user"), Vocabulary(np.array([10]), "item"))


# ------------------------------------------------------------------------------------------------ least squares
def test_least_squares_fold_in_is_implicits_recalculate_user():
    from implicit.cpu.als import AlternatingLeastSquares

    rng = np.random.default_rng(0)
    Y = rng.normal(size=(60, 6)).astype(np.float32)
    X = sp.random(9, 60, density=0.15, random_state=1, format="csr", dtype=np.float32)
    X.data[:] = 4.0
    ref = AlternatingLeastSquares(factors=6, regularization=0.3)
    ref.item_factors = Y
    want = ref.recalculate_user(np.arange(9), X)
    # A tiny block forces several solves of different widths: the same numbers.
    got = least_squares_fold_in(torch.from_numpy(Y), X, 0.3, block_bytes=2 * 12 * 6 * 8)
    np.testing.assert_allclose(got.numpy(), want, atol=1e-5)


def test_als_fold_in_of_training_users_recovers_their_factors():
    data = tiny_synthetic()
    als = ALS(factors=8, regularization=0.5, alpha=5.0, iterations=20, num_threads=1)
    als.fit(data)
    assert als.capability(FoldsIn) is als
    rows = np.arange(20)
    h = Histories.from_lists([data.train[r].indices for r in rows], data.n_items)
    got = als.fold_in(h)
    # ALS's last half-step solved these users against the same item factors (up to its conjugate-gradient steps).
    cos = torch.nn.functional.cosine_similarity(got, als.user_factors[torch.from_numpy(rows)], dim=1)
    assert cos.min() > 0.99


def test_mf_fold_in_is_the_confidence_weighted_ridge_solution():
    data = tiny_synthetic()
    mf = MatrixFactorization(dim=6, fold_in_alpha=4.0, fold_in_l2=0.5)
    mf.bind(data)
    h = Histories.from_lists([[1, 5, 5, 9], [0], [3, 2, 70]], data.n_items)
    got = mf.fold_in(h).detach().numpy()
    V = mf.item.table.weight.detach().double().numpy()
    l2 = 0.5 * np.trace(V.T @ V) / 6  # the penalty is relative to the table's mean Gram eigenvalue
    for b, items in enumerate([[1, 5, 9], [0], [2, 3, 70]]):
        c = np.ones(data.n_items)
        c[items] = 5.0
        p = np.zeros(data.n_items)
        p[items] = 1.0
        want = np.linalg.solve(V.T @ (c[:, None] * V) + l2 * np.eye(6), V.T @ (c * p))
        np.testing.assert_allclose(got[b], want, rtol=1e-4, atol=1e-5)


def test_bpr_fold_in_keeps_the_bias_coordinate():
    data = tiny_synthetic()
    bpr = BPR(factors=4, iterations=5, num_threads=1)
    bpr.fit(data)
    q = bpr.fold_in(Histories.from_lists([[1, 2], [3]], data.n_items))
    assert q.shape == (2, 5) and torch.equal(q[:, -1], torch.ones(2))


# ------------------------------------------------------------------------------------------------ item-item models
@pytest.mark.parametrize("factory", [lambda: EASE(l2=5.0), lambda: ItemKNN(k=20, similarity="bm25", num_threads=1),
                                     lambda: GFCF(k=16, alpha=0.3), lambda: MostPopular()],
                         ids=["ease", "itemknn", "gfcf", "pop"])
def test_history_scores_of_training_users_equal_their_scores(factory):
    data = tiny_synthetic()
    model = factory()
    model.fit(data)
    scorer = model.capability(ScoresHistories)
    assert scorer is model
    rows = np.arange(0, data.n_users, 7)
    h = Histories.from_lists([data.train[r].indices for r in rows], data.n_items)
    got = scorer.score_histories(h, torch.arange(len(rows)))
    want = model.score_users(torch.from_numpy(rows))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    out = torch.full((len(rows), data.n_items), 7.0)
    assert scorer.score_histories(h, torch.arange(len(rows)), out) is out
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)


def test_ease_history_scores_are_x_times_b():
    data = tiny_synthetic()
    ease = EASE(l2=5.0)
    ease.fit(data)
    h = Histories.from_lists([[4, 8, 8], [79]], data.n_items)
    x = h.matrix().toarray()
    want = torch.from_numpy(x) @ ease.weights
    torch.testing.assert_close(ease.score_histories(h, torch.arange(2)), want)


# ------------------------------------------------------------------------------------------------ history encoders
def test_sasrec_fold_in_equals_the_training_users_query():
    data = tiny_synthetic(split="loo")
    enc = SASRec(dim=8, num_layers=1, num_heads=2, max_len=10, dropout=0.0)
    enc.bind(data)
    enc.eval()
    rows = np.arange(12)
    want = enc.encode_queries(Batch(torch.from_numpy(rows), history=torch.from_numpy(data.history(rows, "train", 10))))
    got = enc.fold_in(train_histories(data, rows))
    torch.testing.assert_close(got, want)


def _with_new_user(data: PreparedData, items: list[int]) -> PreparedData:
    """``data`` plus one more user (the largest ID, so the last row) whose training items are ``items``."""
    new_id = int(data.user_vocab.ids.max()) + 1
    users = np.concatenate([data.users, np.full(len(items), data.n_users)])
    return PreparedData(Vocabulary(np.concatenate([data.user_vocab.ids, [new_id]]), "user"), data.item_vocab, users,
                        np.concatenate([data.items, items]), np.concatenate([data.labels, np.full(len(items), TRAIN)])
                        .astype(np.int8), np.concatenate([data.timestamps, np.arange(len(items)) + 10**6]),
                        item_table=data.item_table, user_table=None, name=data.name)


def test_alpharec_fold_in_is_propagation_over_the_extended_graph(tmp_path):
    from test_text import make_tiny_bert

    lm = str(make_tiny_bert(tmp_path / "lm"))
    data = checkerboard()
    history = [0, 2, 4, 6]
    enc = AlphaRec(dim=8, hidden_dim=16, n_layers=1, lm_path=lm, cache_dir=str(tmp_path / "cache"))
    enc.bind(data)
    enc.eval()
    got = enc.fold_in(Histories.from_lists([history], data.n_items))
    extended = AlphaRec(dim=8, hidden_dim=16, n_layers=1, lm_path=lm, cache_dir=str(tmp_path / "cache"))
    extended.bind(_with_new_user(data, history))
    extended.mapping.load_state_dict(enc.mapping.state_dict())
    with torch.no_grad():
        want = extended.propagate()[0][-1:]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------------ refusal
def test_a_model_without_the_capability_is_refused_in_one_line():
    data = checkerboard()
    for enc, name in ((LightGCN(dim=4, n_layers=1), "LightGCN"),):
        model = EmbeddingRecommender(enc, DotScorer())
        model.fit(data)
        with pytest.raises(ServingError, match=rf"EmbeddingRecommender\({name}\) cannot score users from --histories"):
            check_scores_histories(model)
        with pytest.raises(ServingError, match="declares neither FoldsIn nor ScoresHistories"):
            fold_in_queries(model, Histories.from_lists([[1]], data.n_items))


def test_a_wrapper_keeps_fold_in_through_its_query_transform():
    from recsys.capabilities import FoldsIn

    data = checkerboard()
    inner = MatrixFactorization(dim=8)
    wrapped = Matryoshka(inner, dim=4)
    EmbeddingRecommender(wrapped, DotScorer()).fit(data)
    assert isinstance(wrapped, FoldsIn)
    histories = Histories.from_lists([[1, 2], [5]], data.n_items)
    torch.testing.assert_close(wrapped.fold_in(histories), inner.fold_in(histories)[:, :4])


# ------------------------------------------------------------------------------------------------ end to end
HELD_OUT = [3, 17, 42, 77, 101]


@pytest.fixture(scope="module")
def held_out_run(tmp_path_factory):
    """An MF run fitted without five users, the log of those users, and the full log."""
    from recsys.datasets import generate_synthetic

    root = tmp_path_factory.mktemp("fold_in")
    log = generate_synthetic(n_users=150, n_items=80, n_interactions=3000, seed=0).interactions
    log[~log["user"].isin(HELD_OUT)].to_csv(root / "log.csv", index=False)
    run = root / "run"
    assert main(["fit", "--config", str(REPO / "configs" / "mf_bpr.yaml"), "--run-dir", str(run),
                 "--data.dataset", "generic", "--data.path", str(root / "log.csv"),
                 "--data.options", "{timestamp: timestamp}", "--trainer.max_epochs", "2",
                 "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]) == 0
    return run, log[log["user"].isin(HELD_OUT)], log


def test_cli_scores_held_out_users_from_their_histories(held_out_run, tmp_path, capsys):
    run, held, _ = held_out_run
    hist = held[["user", "item", "timestamp"]].copy()
    hist.loc[len(hist)] = [HELD_OUT[0], 123456, 0]  # an item the run never saw
    f = tmp_path / "h.parquet"
    hist.to_parquet(f, index=False)
    out = tmp_path / "top.parquet"
    assert main(["score", "--run-dir", str(run), "--out", str(out), "--k", "10", "--histories", str(f)]) == 0
    printed = capsys.readouterr().out
    assert "5 users scored from" in printed and "1 rows dropped, their item is not in the run's catalogue" in printed
    assert "0 already-consumed items in the output" in printed
    top = pq.read_table(out).to_pandas()
    assert sorted(top["user"].unique()) == HELD_OUT and top["user"].dtype == np.int64
    # Every list avoids the user's history and ranks by the fold-in's scores against the stored item table.
    r = Run.open(run)
    model = r.recommender()
    items = r.payload.items
    u = HELD_OUT[1]
    own = held[held["user"] == u]
    h = Histories.from_lists([r.vocab("item").encode(own["item"].to_numpy())], items.shape[0])
    scores = (model.prepare_queries(model.capability(FoldsIn).fold_in(h)) @ items.T)[0].detach().numpy()
    scores[h.items] = -np.inf
    want = r.vocab("item").decode(np.argsort(-scores, kind="stable")[:10])
    np.testing.assert_array_equal(top[top["user"] == u].sort_values("rank")["item"].to_numpy(), want)


def test_histories_take_precedence_for_a_trained_user(held_out_run, tmp_path):
    run, _, log = held_out_run
    r = Run.open(run)
    data = r.data()
    trained = int(data.user_vocab.ids[0])
    given = [int(i) for i in data.item_vocab.ids[:3]]
    f = tmp_path / "h.csv"
    pd.DataFrame({"user": trained, "item": given}).to_csv(f, index=False)
    report = run_scoring(run, tmp_path / "top.parquet", k=data.n_items, histories=f)
    assert report.history_users == 1 and report.consumed == 0
    top = pq.read_table(tmp_path / "top.parquet").to_pandas()
    # Scored from the three given items (the fold-in), not from the stored vector; still without any item the
    # run knows the user had, nor the given ones.
    seen = set(log[log["user"] == trained]["item"]) | set(given)
    assert set(top["item"]).isdisjoint(seen) and len(top) == data.n_items - len(seen)
    model = r.recommender()
    h = Histories.from_lists([data.item_vocab.encode(np.array(given))], data.n_items)
    q = model.prepare_queries(model.capability(FoldsIn).fold_in(h))[0]
    first = data.item_vocab.encode(top["item"].to_numpy()[:1])[0]
    assert float(top["score"].iloc[0]) == pytest.approx(float(q @ r.payload.items[first]), rel=1e-5)


def test_histories_with_exclude_none_keep_the_history_items(held_out_run, tmp_path):
    run, held, _ = held_out_run
    f = tmp_path / "h.csv"
    held[["user", "item"]].to_csv(f, index=False)
    report = run_scoring(run, tmp_path / "top.parquet", k=80, histories=f, exclude="none")
    assert report.consumed == len(held.drop_duplicates(["user", "item"])) and report.checked == 5 * 80


def test_histories_on_a_baseline_run_without_tables(tmp_path):
    run = tmp_path / "ease"
    assert main(["fit", "--config", str(REPO / "configs" / "ease.yaml"), "--run-dir", str(run), "--data.dataset",
                 "synthetic", "--data.path", "null", "--data.options", TINY_SYNTHETIC]) == 0
    r = Run.open(run)
    data = r.data()
    users = data.user_vocab.ids[:4]
    f = tmp_path / "h.csv"
    pd.DataFrame({"user": np.repeat(users, 2) + 10_000, "item": np.tile(data.item_vocab.ids[:2], 4)}).to_csv(
        f, index=False)
    users_file = tmp_path / "users.txt"
    # Trained users and history users interleaved: one chunk routes each to its own score.
    users_file.write_text("\n".join(str(u) for pair in zip(users, users + 10_000) for u in pair) + "\n")
    report = run_scoring(run, tmp_path / "top.parquet", k=5, histories=f, users_file=users_file)
    top = pq.read_table(tmp_path / "top.parquet").to_pandas()
    assert report.consumed == 0 and report.history_users == 4
    assert list(dict.fromkeys(top["user"])) == [int(u) for pair in zip(users, users + 10_000) for u in pair]
    model = r.recommender()
    h = Histories.from_lists([data.item_vocab.encode(data.item_vocab.ids[:2])], data.n_items)
    s = model.score_histories(h, torch.arange(1))[0]
    s[h.items] = -float("inf")
    new_user = top[top["user"] == users[0] + 10_000]
    np.testing.assert_allclose(new_user["score"].to_numpy(), torch.topk(s, 5).values.numpy(), rtol=1e-5)
