"""Tests for recsys.baselines: known answers on a block-structured log, checkpoint round trips, agreement with
``implicit``'s own ``recommend`` and with a numpy closed form of EASE."""

from __future__ import annotations

import importlib
import inspect
import sys

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from recsys.baselines import ALS, BPR, EASE, GFCF, Baseline, ItemKNN, MostPopular
from recsys.baselines.ease import ease_weights
from recsys.data.prepared import PreparedData
from recsys.data.vocab import Vocabulary
from recsys.metrics.evaluate import evaluate
from recsys.scoring.topk import topk
from recsys.testing import BaselineConformance

USERS_PER_GROUP, ITEMS_PER_GROUP = 10, 6

# Small hyper-parameters that separate two blocks reliably on a 20 × 12 log; the defaults are tuned for MovieLens.
FACTORIES = {
    "als": lambda: ALS(factors=2, regularization=0.1, alpha=10.0, iterations=15),
    "bpr": lambda: BPR(factors=2, learning_rate=0.05, regularization=0.01, iterations=200),
    "itemknn_cosine": lambda: ItemKNN(k=20, similarity="cosine"),
    "itemknn_bm25": lambda: ItemKNN(k=20, similarity="bm25"),
    "itemknn_tfidf": lambda: ItemKNN(k=20, similarity="tfidf"),
    "ease": lambda: EASE(l2=1.0),
    "pop": lambda: MostPopular(),
}
PERSONALISED = [name for name in FACTORIES if name != "pop"]


def make_data(users: np.ndarray, items: np.ndarray, labels: np.ndarray, user_ids=None, item_ids=None
              ) -> PreparedData:
    """PreparedData from raw ID columns (string user IDs, int item IDs) through the real vocabularies."""
    user_ids = np.asarray([f"u{u:03d}" for u in users]) if user_ids is None else user_ids
    item_ids = np.asarray(items) * 10 + 100 if item_ids is None else item_ids
    uv, iv = Vocabulary.from_values(user_ids, "user"), Vocabulary.from_values(item_ids, "item")
    return PreparedData(uv, iv, uv.encode(user_ids), iv.encode(item_ids), np.asarray(labels, dtype=np.int8),
                        name="blocks")


def block_data() -> tuple[PreparedData, np.ndarray, np.ndarray]:
    """Two user groups × two item groups; each group consumes only its own items.

    User k of a group holds out item ``k % 6`` of its group as test and ``(k + 1) % 6`` as valid, so every item is
    in some other user's training history.

    Returns:
        data, the group of each user row, the group of each item row.
    """
    users, items, labels = [], [], []
    for g in range(2):
        for k in range(USERS_PER_GROUP):
            u = g * USERS_PER_GROUP + k
            for j in range(ITEMS_PER_GROUP):
                users.append(u)
                items.append(g * ITEMS_PER_GROUP + j)
                labels.append(2 if j == k % ITEMS_PER_GROUP else 1 if j == (k + 1) % ITEMS_PER_GROUP else 0)
    data = make_data(np.array(users), np.array(items), np.array(labels))
    user_group = np.array([int(i[1:]) // USERS_PER_GROUP for i in data.user_vocab.ids])
    item_group = np.array([(int(i) - 100) // 10 // ITEMS_PER_GROUP for i in data.item_vocab.ids])
    return data, user_group, item_group


def random_data(n_users: int = 30, n_items: int = 25, density: float = 0.3, seed: int = 0) -> PreparedData:
    """A random log (distinct scores, so rankings have no ties to break), split about 80/10/10."""
    rng = np.random.default_rng(seed)
    dense = rng.random((n_users, n_items)) < density
    diag = np.arange(max(n_users, n_items))
    dense[diag % n_users, diag % n_items] = True  # every user and item appears
    users, items = np.nonzero(dense)
    return make_data(users, items, rng.choice(3, size=len(users), p=[0.8, 0.1, 0.1]))


@pytest.fixture(scope="module")
def blocks():
    return block_data()


@pytest.fixture(scope="module")
def fitted(blocks):
    data = blocks[0]
    models = {}
    for name, factory in FACTORIES.items():
        model = factory()
        model.fit(data)
        models[name] = model
    return models


def all_scores(model: Baseline, n_users: int) -> torch.Tensor:
    return model.score_users(torch.arange(n_users))


@pytest.mark.parametrize("name", PERSONALISED)
def test_known_answer_blocks(name, blocks, fitted):
    """A held-out item of the user's own group outranks every item of the other group."""
    data, user_group, item_group = blocks
    scores = all_scores(fitted[name], data.n_users).numpy()
    test = data.csr("test")
    for u in range(data.n_users):
        held_out = test.indices[test.indptr[u]:test.indptr[u + 1]]
        other = np.flatnonzero(item_group != user_group[u])
        assert scores[u, held_out].min() > scores[u, other].max(), (name, u)
    # Through the real evaluator (train and valid excluded): the held-out item is always first.
    metrics = evaluate(fitted[name], data, "test", ks=(1,), chunk_size=7)
    assert metrics["recall@1"] == pytest.approx(1.0)


def test_most_popular_known_answer(blocks, fitted):
    data = blocks[0]
    counts = np.asarray((data.train > 0).sum(axis=0)).ravel()
    scores = all_scores(fitted["pop"], data.n_users).numpy()
    np.testing.assert_array_equal(scores, np.broadcast_to(counts.astype(np.float32), scores.shape))
    np.testing.assert_array_equal(counts, data.item_popularity())


@pytest.mark.parametrize("name", list(FACTORIES))
def test_score_users_writes_into_out(name, blocks, fitted):
    data = blocks[0]
    model = fitted[name]
    users = torch.tensor([3, 0, 17, 3])
    expected = model.score_users(users)
    assert expected.shape == (4, data.n_items) and expected.dtype == torch.float32
    buf = torch.full((6, data.n_items), float("nan"))
    out = buf[:4]
    got = model.score_users(users, out)
    assert got.data_ptr() == out.data_ptr()
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", list(FACTORIES))
def test_state_dict_round_trip(name, blocks, fitted, tmp_path):
    data = blocks[0]
    model = fitted[name]
    path = tmp_path / f"{name}.pt"
    torch.save(model.state_dict(), path)
    fresh = FACTORIES[name]()
    fresh.load_state_dict(torch.load(path, weights_only=True))
    assert torch.equal(all_scores(fresh, data.n_users), all_scores(model, data.n_users))


@pytest.mark.parametrize("cls", [ALS, BPR])
def test_factor_tables_are_the_scores(cls, blocks, fitted):
    data = blocks[0]
    model = fitted[cls.__name__.lower()]
    queries, items = model.tables()
    assert queries.shape[0] == data.n_users and items.shape[0] == data.n_items
    torch.testing.assert_close(queries @ items.T, all_scores(model, data.n_users))


def _check_against_implicit(ours: torch.Tensor, ref, data: PreparedData) -> None:
    """Our score rows agree with ``ref.recommend`` on every item it returns, in its order, train items excluded."""
    train = data.train
    n_checked = 0
    for u in range(data.n_users):
        seen = train.indices[train.indptr[u]:train.indptr[u + 1]]
        ids, scores = ref.recommend(u, train[u], N=data.n_items, filter_already_liked_items=True)
        # implicit's item-kNN pads a short list with the user's own items at score 0; they are not recommendations.
        keep = ~np.isin(ids, seen)
        ids, scores = ids[keep], scores[keep]
        row = ours[u].numpy().astype(np.float64)
        np.testing.assert_allclose(row[ids], scores, rtol=1e-5, atol=1e-6)
        assert np.all(np.diff(row[ids]) <= 1e-6), "implicit's order is not ours"
        # Items implicit leaves out (no neighbour in the user's history) score zero for us.
        rest = np.setdiff1d(np.arange(data.n_items), np.concatenate([seen, ids]))
        np.testing.assert_allclose(row[rest], 0.0, atol=1e-6)
        n_checked += len(ids)
    assert n_checked > data.n_users


def test_als_matches_implicit():
    from implicit.cpu.als import AlternatingLeastSquares

    data = random_data()
    model = ALS(factors=8, regularization=0.05, alpha=5.0, iterations=5, seed=7)
    model.fit(data)
    ref = AlternatingLeastSquares(factors=8, regularization=0.05, alpha=5.0, iterations=5, random_state=7)
    ref.fit(data.train, show_progress=False)
    np.testing.assert_array_equal(model.user_factors.numpy(), ref.user_factors)
    np.testing.assert_array_equal(model.item_factors.numpy(), ref.item_factors)
    _check_against_implicit(all_scores(model, data.n_users), ref, data)


def test_bpr_matches_implicit_bias_column_included():
    from implicit.cpu.bpr import BayesianPersonalizedRanking

    data = random_data(seed=1)
    model = BPR(factors=8, learning_rate=0.05, regularization=0.01, iterations=20, seed=7)
    model.fit(data)
    ref = BayesianPersonalizedRanking(factors=8, learning_rate=0.05, regularization=0.01, iterations=20,
                                      random_state=7, num_threads=1)
    ref.fit(data.train, show_progress=False)
    assert model.user_factors.shape == (data.n_users, 9)
    assert torch.all(model.user_factors[:, -1] == 1)
    np.testing.assert_array_equal(model.item_factors.numpy(), ref.item_factors)
    _check_against_implicit(all_scores(model, data.n_users), ref, data)


@pytest.mark.filterwarnings("ignore:Method expects CSR input")
@pytest.mark.parametrize("similarity", ["cosine", "bm25", "tfidf"])
def test_itemknn_matches_implicit(similarity):
    from implicit import nearest_neighbours as nn_

    data = random_data(seed=2)
    model = ItemKNN(k=5, similarity=similarity, K1=1.5, B=0.5)
    model.fit(data)
    ref = {"cosine": lambda: nn_.CosineRecommender(K=5), "tfidf": lambda: nn_.TFIDFRecommender(K=5),
           "bm25": lambda: nn_.BM25Recommender(K=5, K1=1.5, B=0.5)}[similarity]()
    ref.fit(data.train, show_progress=False)
    ours = all_scores(model, data.n_users)
    _check_against_implicit(ours, ref, data)
    # The device (torch) path computes the same products as the CPU (scipy) path.
    torch.testing.assert_close(model._score_torch(torch.arange(data.n_users), None), ours, rtol=1e-5, atol=1e-6)


def test_itemknn_rejects_unknown_similarity():
    with pytest.raises(ValueError, match="similarity"):
        ItemKNN(similarity="jaccard")


def numpy_ease(X: np.ndarray, l2: float) -> np.ndarray:
    """Steck (2019), Algorithm 1, verbatim in float64."""
    G = X.T @ X + l2 * np.eye(X.shape[1])
    P = np.linalg.inv(G)
    B = P / (-np.diag(P))
    np.fill_diagonal(B, 0.0)
    return B


@pytest.mark.parametrize("shape", [(40, 15), (12, 30)])  # more users than items, and fewer
@pytest.mark.parametrize("method", ["auto", "primal", "dual"])
def test_ease_closed_form(shape, method):
    dense = (np.random.default_rng(3).random(shape) < 0.3).astype(np.float32)
    dense[:, 4] = 0  # an item nobody trained on: zero row and column
    X = sp.csr_matrix(dense)
    B = ease_weights(X, 7.0, method=method, block=4)
    assert B.dtype == torch.float32
    assert torch.all(B.diagonal() == 0)
    assert torch.all(B[:, 4] == 0) and torch.all(B[4] == 0)
    np.testing.assert_allclose(B.numpy(), numpy_ease(dense.astype(np.float64), 7.0), rtol=1e-5, atol=1e-6)


def test_ease_scores_are_history_times_weights(blocks, fitted):
    data = blocks[0]
    model = fitted["ease"]
    assert torch.all(model.weights.diagonal() == 0)
    expected = data.train.toarray() @ model.weights.numpy()
    np.testing.assert_allclose(all_scores(model, data.n_users).numpy(), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.weights.numpy(), numpy_ease(data.train.toarray(), 1.0), rtol=1e-5, atol=1e-6)


def test_topk_excludes_train_items(blocks, fitted):
    data = blocks[0]
    items, _ = topk(fitted["ease"].score_users, np.arange(data.n_users), data.n_items, 5, data.exclude_for("valid"))
    train = data.train
    for u in range(data.n_users):
        assert not set(items[u]) & set(train.indices[train.indptr[u]:train.indptr[u + 1]])


@pytest.mark.parametrize("cls", [ALS, BPR, ItemKNN, EASE, GFCF, MostPopular])
def test_signature_is_a_typed_schema(cls):
    """Built from YAML by jsonargparse: every argument is annotated, has a default and is documented."""
    doc = inspect.getdoc(cls) or ""
    for name, p in inspect.signature(cls.__init__).parameters.items():
        if name == "self":
            continue
        assert p.annotation is not inspect.Parameter.empty, name
        assert p.default is not inspect.Parameter.empty, name
        assert f"{name}:" in doc, name


def test_import_does_not_load_implicit(monkeypatch):
    """``recsys score`` loads baselines without paying for ``implicit`` (re-imported here without a subprocess)."""
    import recsys

    monkeypatch.setattr(recsys, "baselines", recsys.baselines)
    for name in list(sys.modules):
        if name.split(".")[0] == "implicit" or name.startswith("recsys.baselines"):
            monkeypatch.delitem(sys.modules, name)  # restored at teardown
    importlib.import_module("recsys.baselines")
    assert not any(name.split(".")[0] == "implicit" for name in sys.modules)


@pytest.fixture(scope="module")
def fit_parser():
    from recsys.config import build_fit_parser

    return build_fit_parser(exit_on_error=False)


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_every_baseline_saves_and_loads_through_a_run(name, blocks, fitted, fit_parser, tmp_path):
    """The one Recommender path: save_model writes the payload (factor models' tables too), recommender() rebuilds."""
    from recsys.recommender import Recommender
    from recsys.runs import Run

    data, model = blocks[0], fitted[name]
    assert isinstance(model, Recommender)
    cls = type(model)
    cfg = fit_parser.parse_object({"model": {"class_path": f"{cls.__module__}.{cls.__qualname__}"}})
    run = Run.create(tmp_path / name, fit_parser.dump(cfg, skip_none=False))
    run.save_data(data)
    payload = run.save_model(model, data)
    assert (payload.tables is not None) == (name in ("als", "bpr"))
    if payload.tables is not None:
        torch.testing.assert_close(payload.queries @ payload.items.T, all_scores(model, data.n_users))
    loaded = Run.open(run.path).recommender()
    assert torch.equal(all_scores(loaded, data.n_users), all_scores(model, data.n_users))


# The shared contract (recsys.testing.BaselineConformance), one class per baseline.


class TestALSConformance(BaselineConformance):
    def make_model(self):
        return ALS(factors=4, regularization=0.1, alpha=10.0, iterations=15)


class TestBPRConformance(BaselineConformance):
    def make_model(self):
        return BPR(factors=4, learning_rate=0.05, regularization=0.01, iterations=200)


class TestItemKNNConformance(BaselineConformance):
    def make_model(self):
        return ItemKNN(k=20, similarity="cosine")


class TestEASEConformance(BaselineConformance):
    def make_model(self):
        return EASE(l2=1.0)


class TestMostPopularConformance(BaselineConformance):
    learns_checkerboard = False  # one list for everybody: it cannot separate the groups

    def make_model(self):
        return MostPopular()


def test_ease_primal32_matches_float64():
    from recsys.baselines.ease import ease_weights

    rng = np.random.default_rng(5)
    X = sp.random(300, 130, density=0.08, random_state=rng, format="csr")
    X.data[:] = 1.0
    ref = ease_weights(X, 20.0, method="primal").numpy()
    got = ease_weights(X, 20.0, method="primal32", block=32).numpy()
    assert got.flags.c_contiguous and np.all(np.diag(got) == 0)
    np.testing.assert_allclose(got, ref, atol=1e-5)
