"""Prefix training examples for sequential models: correctness against a per-user loop, batches, the datamodule."""

import numpy as np
import pytest
import torch

from recsys.data.datamodule import Loader, RecDataModule
from recsys.data.examples import Prefixes
from recsys.data.prepared import PreparedData
from recsys.data.sequences import PrefixBatches, PrefixExamples, SequenceBatches
from recsys.data.splits import TEST, TRAIN, VALID
from recsys.data.vocab import Vocabulary


def _log(seed: int = 0, n_users: int = 7, n_items: int = 20) -> PreparedData:
    """Shuffled log with tied timestamps; per user the latest is test, the one before valid."""
    rng = np.random.default_rng(seed)
    users, items, ts = [], [], []
    for u in range(n_users):
        n = int(rng.integers(1, 9))
        users += [u] * n
        items += rng.choice(n_items, n, replace=False).tolist()
        ts += rng.integers(0, 4, n).tolist()  # many ties: order falls back to log position
    perm = rng.permutation(len(users))
    users, items, ts = np.array(users)[perm], np.array(items)[perm], np.array(ts)[perm]
    order = np.lexsort((np.arange(len(users)), ts, users))
    labels = np.full(len(users), TRAIN, dtype=np.int8)
    for u in range(n_users):
        idx = order[users[order] == u]
        if len(idx) >= 2:
            labels[idx[-1]] = TEST
        if len(idx) >= 3:
            labels[idx[-2]] = VALID
    return PreparedData(Vocabulary(np.arange(n_users), "user"), Vocabulary(np.arange(n_items), "item"),
                        users, items, labels, ts)


def _reference(data: PreparedData, max_len: int):
    """(user, target, history) of every prefix, by a plain per-user loop."""
    out = []
    for u in range(data.n_users):
        idx = [i for i in range(len(data.users)) if data.users[i] == u and data.labels[i] == TRAIN]
        idx.sort(key=lambda i: (data.timestamps[i], i))
        seq = [int(data.items[i]) for i in idx]
        for t in range(1, len(seq)):
            hist = seq[max(0, t - max_len):t]
            out.append((u, seq[t], [-1] * (max_len - len(hist)) + hist))
    return out


@pytest.mark.parametrize("max_len", [1, 3, 10])
def test_prefixes_match_a_per_user_loop(max_len):
    data = _log()
    ex = PrefixExamples(data)
    ref = _reference(data, max_len)
    hist = ex.histories(np.arange(len(ex)), max_len)
    got = [(int(u), int(t), h.tolist()) for u, t, h in zip(ex.users, ex.targets, hist)]
    assert got == ref


def test_last_prefix_plus_target_is_the_evaluators_history():
    """The history of a user's last training item, plus that item, is what validation queries read."""
    data = _log(1)
    ex = PrefixExamples(data)
    last = np.flatnonzero(np.r_[ex.users[1:] != ex.users[:-1], True])
    full = ex.histories(last, 6)
    full = np.concatenate([full[:, 1:], ex.targets[last, None]], axis=1)
    np.testing.assert_array_equal(full, data.history(ex.users[last], "train", 6))


def test_per_user_sample_is_one_prefix_per_user():
    data = _log(2)
    ex = PrefixExamples(data)
    idx = ex.per_user_sample(np.random.default_rng(0))
    assert sorted(ex.users[idx].tolist()) == sorted(set(ex.users.tolist()))


def test_prefix_batches_shapes_negatives_and_determinism():
    data = _log(3, n_users=30, n_items=40)
    ds = PrefixBatches(data, Loader(batch_size=8, num_negatives=3), seed=1, history_len=4)
    b = ds[0]
    assert b.items.shape == (len(b.users), 4) and b.history.shape == (len(b.users), 4)
    train = data.train.toarray()
    assert not train[b.users.numpy()[:, None], b.items[:, 1:].numpy()].any()
    ds2 = PrefixBatches(data, Loader(batch_size=8, num_negatives=3), seed=1, history_len=4)
    torch.testing.assert_close(ds2[0].items, b.items)
    ds0 = PrefixBatches(data, Loader(batch_size=8, num_negatives=0), seed=1, history_len=4, per_user=True)
    assert ds0[0].items.shape[1] == 1
    assert sum(len(ds0[i]) for i in range(len(ds0))) == len(np.unique(ds0.examples.users))
    with pytest.raises(ValueError, match="history length"):
        PrefixBatches(data, Loader(), seed=1, history_len=0)


def test_datamodule_serves_prefixes():
    dm = RecDataModule("synthetic", options={"n_users": 40, "n_items": 30, "n_interactions": 400},
                       loader=Loader(batch_size=16, num_negatives=0, examples=Prefixes(), history_len=5))
    dm.prepare()
    b = next(iter(dm.train_dataloader()))
    assert b.history.shape == (16, 5) and b.items.shape == (16, 1)


def test_sequence_batches_target_the_next_item_at_every_position():
    data = _log(4, n_users=30, n_items=40)
    ds = SequenceBatches(data, Loader(batch_size=64), seed=0, history_len=4)
    b = ds[0]
    assert b.items.shape == b.history.shape == (len(b.users), 4)
    ex = ds.examples
    for u, h, t in zip(b.users.tolist(), b.history.tolist(), b.items.tolist()):
        seq = ex.seq[ex.indptr[u]:ex.indptr[u + 1]].tolist()
        assert [x == -1 for x in h] == [x == -1 for x in t]
        real = [(x, y) for x, y in zip(h, t) if x >= 0]
        for x, y in real:  # every target follows its input in the user's sequence
            assert seq[seq.index(x) + 1] == y
        assert [y for _, y in real][:-1] == [x for x, _ in real][1:]


def _sequences_log(seqs: dict[int, list[int]], n_items: int = 20) -> PreparedData:
    """All-train log of the given chronological sequences (user -> items)."""
    users = np.array([u for u, s in seqs.items() for _ in s])
    items = np.array([i for s in seqs.values() for i in s])
    return PreparedData(Vocabulary(np.arange(len(seqs)), "user"), Vocabulary(np.arange(n_items), "item"),
                        users, items, np.full(len(users), TRAIN, dtype=np.int8), np.arange(len(users)))


def test_second_half_targets_follow_recformers_sample_pairs():
    """Recformer's collator.py ``sample_pairs``: target position uniform in [(n - 1) // 2, n - 1] (here >= 1)."""
    seqs = {0: [10, 11, 12, 13, 14, 15], 1: [1, 2], 2: [3], 3: [4, 5, 6, 7], 4: [16, 17, 18, 19, 0]}
    second_half = {0: {12, 13, 14, 15}, 1: {2}, 3: {5, 6, 7}, 4: {18, 19, 0}}  # n = 6, 2, 4, 5; user 2: none
    data = _sequences_log(seqs)
    loader = Loader(batch_size=100, num_negatives=0)
    every = Prefixes(target_from="second_half").dataset(data, loader, 0, 3)
    ex = every.examples
    got = sorted((int(u), int(t)) for u, t in zip(ex.users[every.order], ex.targets[every.order]))
    assert got == sorted((u, t) for u, ts in second_half.items() for t in ts)
    seen = {u: set() for u in second_half}
    for epoch in range(40):
        ds = Prefixes(per_user=True, target_from="second_half").dataset(data, loader, 7, 3)
        ds.set_epoch(epoch)
        b = ds[0]
        assert sorted(b.users.tolist()) == sorted(second_half)  # one pair per user with a history
        for u, t, h in zip(b.users.tolist(), b.items[:, 0].tolist(), b.history.tolist()):
            assert t in second_half[u]
            seq = seqs[u]
            k = seq.index(t)
            assert [x for x in h if x >= 0] == seq[max(0, k - 3):k]  # the history is what precedes the target
            seen[u].add(t)
        again = Prefixes(per_user=True, target_from="second_half").dataset(data, loader, 7, 3)
        again.set_epoch(epoch)
        torch.testing.assert_close(again[0].items, b.items)  # reproducible per (seed, epoch)
        torch.testing.assert_close(again[0].history, b.history)
    assert seen == second_half  # every second-half position gets drawn over the epochs
    draws = {}
    for seed in (7, 8):
        ds = Prefixes(per_user=True, target_from="second_half").dataset(data, loader, seed, 3)
        draws[seed] = [(ds.set_epoch(e), ds[0].items.tolist())[1] for e in range(3)]
    assert draws[7] != draws[8]  # the seed matters


def test_prefixes_refuse_an_unknown_target_rule():
    from recsys.errors import UsageError

    with pytest.raises(UsageError, match="target_from"):
        Prefixes(target_from="last")
    assert repr(Prefixes(True, "second_half")) == "Prefixes(per_user=True, target_from='second_half')"
