"""Vocabulary, preprocessing, splits, negative sampling and histories."""

import numpy as np
import pandas as pd
import pytest

from recsys.data.interactions import preprocess, to_csr
from recsys.data.sampling import NegativeSampler
from recsys.data.splits import TEST, TRAIN, VALID, global_temporal_split, leave_one_out, random_split, temporal_split
from recsys.data.vocab import Vocabulary
from recsys.errors import DataError
from recsys.testing import checkerboard


def test_vocabulary_round_trip(tmp_path):
    v = Vocabulary.from_values(np.array([30, 10, 20, 10]), "user")
    assert len(v) == 3
    rows = v.encode([20, 30, 10])
    assert rows.tolist() == [1, 2, 0]
    assert v.decode(rows).tolist() == [20, 30, 10]
    v.save(tmp_path / "v.parquet")
    w = Vocabulary.load(tmp_path / "v.parquet")
    assert w.encode([20]).tolist() == [1]
    s = Vocabulary.from_values(np.array(["b", "a", "c"], dtype=object), "item")
    s.save(tmp_path / "s.parquet")
    assert Vocabulary.load(tmp_path / "s.parquet").decode([0, 2]).tolist() == ["a", "c"]


def test_vocabulary_unknown_id_names_source_and_row():
    v = Vocabulary.from_values(np.array([1, 2, 3]), "user")
    with pytest.raises(DataError, match=r"unknown user ID 9.*file users\.txt.*row 1"):
        v.encode(np.array([1, 9]), source="users.txt")
    assert v.encode(np.array([1, 9]), missing="ignore").tolist() == [0, -1]


def test_preprocess_reports_every_drop():
    df = pd.DataFrame({"user": [1, 1, 1, 2, 2, 3], "item": [10, 10, 11, 10, 12, 10],
                       "rating": [5.0, 4.0, 1.0, 5.0, 5.0, 5.0], "timestamp": [1, 2, 3, 4, 5, 6]})
    out, report = preprocess(df, rating_threshold=3.0, min_user_interactions=2)
    # rating drop: 1 row; duplicate (1,10): 1 row; users with <2 after that: users 1 (1 row) and 3 (1 row).
    assert dict(report.steps)["below rating threshold 3.0"] == 1
    assert report.rows_out == len(out) == 2
    assert set(out["user"]) == {2}
    kept = preprocess(df, duplicates="latest")[0]
    assert kept.loc[(kept.user == 1) & (kept.item == 10), "rating"].item() == 4.0


def test_random_split_is_seeded_and_per_user():
    users = np.repeat(np.arange(50), 20)
    a, b = random_split(users, seed=1), random_split(users, seed=1)
    assert (a == b).all()
    assert not (a == random_split(users, seed=2)).all()
    for u in range(50):
        lab = a[users == u]
        assert (lab == TRAIN).sum() == 16 and (lab == VALID).sum() == 2 and (lab == TEST).sum() == 2


def test_small_users_keep_training_data():
    users = np.array([0, 0, 0, 1, 1])
    labels = random_split(users, seed=0)
    assert (labels[users == 1] == TRAIN).sum() >= 1


def test_temporal_and_loo_splits_follow_time():
    users = np.array([0] * 10)
    ts = np.arange(10)[::-1].copy()
    lab = temporal_split(users, ts)
    assert lab[ts.argmax()] == TEST and lab[ts.argmin()] == TRAIN
    loo = leave_one_out(np.array([0, 0, 0, 0, 1]), np.array([4, 3, 2, 1, 0]))
    assert loo.tolist() == [TEST, VALID, TRAIN, TRAIN, TRAIN]
    g = global_temporal_split(np.arange(10))
    assert g.tolist() == [0] * 8 + [1] + [2]


def test_negative_sampler_excludes_training_items():
    train = to_csr(np.array([0, 0, 0, 1]), np.array([0, 1, 2, 3]), (2, 5))
    s = NegativeSampler(train)
    negs = s.sample(np.array([0] * 200 + [1] * 200), 3, np.random.default_rng(0))
    assert negs.shape == (400, 3)
    assert not np.isin(negs[:200], [0, 1, 2]).any()
    assert not (negs[200:] == 3).any()
    pop = NegativeSampler(train, "popularity").sample(np.array([1] * 100), 2, np.random.default_rng(0))
    assert not (pop == 3).any()


def test_history_is_chronological_and_left_padded():
    data = checkerboard()
    h = data.history(np.array([0, 1]), "train", max_len=6)
    assert h.shape == (2, 6)
    assert (h[:, :0] == -1).all() and (h >= 0).all()  # 6 train items per user fill the window
    t = data.history(np.array([0]), "train+valid", max_len=8)
    assert t[0, -1] == data.items[(data.users == 0) & (data.labels == VALID)][0]
