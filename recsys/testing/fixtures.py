"""Tiny data with known answers, shared by the test suites of every model family."""

from __future__ import annotations

import numpy as np

from recsys.data.interactions import to_csr  # noqa: F401  (re-exported for tests)
from recsys.data.prepared import PreparedData
from recsys.data.splits import TEST, TRAIN, VALID
from recsys.data.vocab import Vocabulary


def checkerboard(n_users: int = 60, n_items: int = 30, n_groups: int = 2, per_user: int = 8, seed: int = 0
                 ) -> PreparedData:
    """A block-diagonal log: users of group g interact only with items of group g.

    Each user has ``per_user`` distinct in-group items; the last one (by time) is test, the one before valid.
    Any sensible model must rank a user's held-out in-group items above every out-of-group item.
    Item side table: ``title`` naming the group, ``genres`` = [group name].
    """
    import pandas as pd

    rng = np.random.default_rng(seed)
    ug = np.arange(n_users) % n_groups
    ig = np.arange(n_items) % n_groups
    users, items = [], []
    for u in range(n_users):
        pool = np.flatnonzero(ig == ug[u])
        chosen = rng.choice(pool, size=min(per_user, len(pool)), replace=False)
        users.extend([u] * len(chosen))
        items.extend(chosen.tolist())
    users, items = np.array(users), np.array(items)
    ts = np.arange(len(users), dtype=np.int64)
    pos_from_end = np.zeros(len(users), dtype=np.int64)
    for u in range(n_users):
        idx = np.flatnonzero(users == u)
        pos_from_end[idx] = np.arange(len(idx))[::-1]
    labels = np.where(pos_from_end == 0, TEST, np.where(pos_from_end == 1, VALID, TRAIN)).astype(np.int8)
    names = [f"group{g}" for g in range(n_groups)]
    item_table = pd.DataFrame({"item": np.arange(n_items), "title": [f"{names[g]} item {i}" for i, g in
                                                                       enumerate(ig)],
                               "genres": [[names[g]] for g in ig]})
    user_table = pd.DataFrame({"user": np.arange(n_users), "segment": [names[g] for g in ug]})
    return PreparedData(Vocabulary(np.arange(n_users), "user"), Vocabulary(np.arange(n_items), "item"),
                        users, items, labels, ts, item_table=item_table, user_table=user_table,
                        name="checkerboard")


def group_separation(scores: np.ndarray, data: PreparedData, n_groups: int = 2) -> float:
    """Mean per-user AUC of held-out test items against every out-of-group item (1.0 = perfect separation).

    Shapes:
        scores: [n_users, n_items]
    """
    ug = np.arange(data.n_users) % n_groups
    ig = np.arange(data.n_items) % n_groups
    test = data.csr("test")
    aucs = []
    for u in range(data.n_users):
        held = test.indices[test.indptr[u]:test.indptr[u + 1]]
        if len(held) == 0:
            continue
        other = scores[u, ig != ug[u]]
        aucs.append(float((scores[u, held][:, None] > other[None, :]).mean()))
    return float(np.mean(aucs))


def tiny_synthetic(n_users: int = 120, n_items: int = 80, n_interactions: int = 2400, seed: int = 0,
                   split: str = "random") -> PreparedData:
    """A small prepared slice of the synthetic generator (with item text, concepts and user features)."""
    from recsys.data.prepared import SplitSpec, prepare
    from recsys.datasets import generate_synthetic

    raw = generate_synthetic(n_users=n_users, n_items=n_items, n_interactions=n_interactions, seed=seed)
    return prepare(raw, split=SplitSpec(method=split))


_CHAIN_WORDS = ("apple", "river", "stone", "cloud", "tiger", "piano", "garden", "silver", "candle", "forest",
                "engine", "castle", "ocean", "pepper", "violin", "desert", "rocket", "mirror", "falcon", "island",
                "copper", "meadow", "thunder", "lemon", "harbor", "winter", "shadow", "orange", "bridge", "velvet",
                "planet", "marble", "saddle", "hammer", "jungle", "ribbon", "tunnel", "canyon", "lantern", "feather")


def text_chains(n_items: int = 40, n_users: int = 160, per_user: int = 6, seed: int = 0) -> PreparedData:
    """Items on one ring, users walk it: the next item is the one whose text names the current item's successor.

    The items form a ring in a random order; item ``i``'s side table has ``title`` = its own word and ``next`` = its
    successor's word, so the successor's title repeats a word of the current item (a token shared with the next item
    and with nothing else outside the history). Each user walks ``per_user`` consecutive ring steps from a random
    start; the last step is test, the one before valid. Starts are uniform, so item popularity carries almost no
    signal and a model that reads the text should rank the test item near the top; ID-only and popularity models
    cannot. Needs ``n_items <= 40`` (one distinct English word per item).
    """
    import pandas as pd

    if not 2 <= n_items <= len(_CHAIN_WORDS):
        raise ValueError(f"n_items must be in [2, {len(_CHAIN_WORDS)}], got {n_items}")
    rng = np.random.default_rng(seed)
    ring = rng.permutation(n_items)
    succ = np.empty(n_items, dtype=np.int64)
    succ[ring] = np.roll(ring, -1)
    users, items = [], []
    for u in range(n_users):
        cur = int(rng.integers(n_items))
        for _ in range(per_user):
            users.append(u)
            items.append(cur)
            cur = int(succ[cur])
    users, items = np.array(users), np.array(items)
    ts = np.arange(len(users), dtype=np.int64)
    step = np.tile(np.arange(per_user), n_users)
    labels = np.where(step == per_user - 1, TEST, np.where(step == per_user - 2, VALID, TRAIN)).astype(np.int8)
    words = np.array(_CHAIN_WORDS[:n_items])
    item_table = pd.DataFrame({"item": np.arange(n_items), "title": words, "next": words[succ]})
    return PreparedData(Vocabulary(np.arange(n_users), "user"), Vocabulary(np.arange(n_items), "item"),
                        users, items, labels, ts, item_table=item_table, name="text_chains")
