"""Tests for recsys.metrics: hand-worked examples, a pure-Python reference, and hypothesis properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import recsys.metrics.ranking as ranking_mod
from recsys.metrics import (
    METRIC_NAMES,
    align_per_user,
    coverage,
    item_coverage,
    novelty,
    paired_test,
    per_user_metrics,
    popularity_bias,
    ranking_metrics,
)


def lg(i: int) -> float:
    """Discount of 1-based position i."""
    return 1.0 / math.log2(i + 1)


def csr_from_sets(sets: list[set[int]] | list[list[int]], n_items: int) -> sp.csr_array:
    rows = [u for u, s in enumerate(sets) for _ in s]
    cols = [i for s in sets for i in s]
    return sp.csr_array((np.ones(len(cols)), (np.array(rows, dtype=np.int64), np.array(cols, dtype=np.int64))),
                        shape=(len(sets), n_items))


# --------------------------------------------------------------------------------------------------------------
# Pure-Python reference: one user at a time, straight from the definitions.
# --------------------------------------------------------------------------------------------------------------

def reference_user(ranked_row: list[int], rel: set[int], k: int) -> dict[str, float]:
    top = list(ranked_row[:k])
    hits = [1 if (item >= 0 and item in rel) else 0 for item in top]
    n_hits = sum(hits)
    dcg = sum(lg(i + 1) for i, h in enumerate(hits) if h)
    idcg = sum(lg(i + 1) for i in range(min(len(rel), k)))
    mrr = 0.0
    for i, h in enumerate(hits):
        if h:
            mrr = 1.0 / (i + 1)
            break
    ap = 0.0
    for i, h in enumerate(hits):
        if h:
            ap += sum(hits[: i + 1]) / (i + 1)
    return {
        "recall": n_hits / len(rel),
        "precision": n_hits / k,
        "ndcg": dcg / idcg,
        "mrr": mrr,
        "hit": 1.0 if n_hits else 0.0,
        "map": ap / min(len(rel), k),
    }


def reference_metrics(ranked: np.ndarray, rel_sets: list[set[int]], ks: tuple[int, ...]) -> dict[str, float]:
    users = [u for u, s in enumerate(rel_sets) if s]
    out = {}
    for k in ks:
        per = [reference_user(list(ranked[u]), rel_sets[u], k) for u in users]
        for name in METRIC_NAMES:
            out[f"{name}@{k}"] = sum(p[name] for p in per) / len(per)
    return out


def random_case(rng: np.random.Generator, n_users: int, n_items: int, k_cols: int, pad_prob: float = 0.1,
                ) -> tuple[np.ndarray, list[set[int]]]:
    """Random unique-per-row rankings (with -1 padding) and random relevant sets (some empty)."""
    ranked = np.argsort(rng.random((n_users, n_items)), axis=1)[:, :k_cols].astype(np.int64)
    ranked[rng.random(ranked.shape) < pad_prob] = -1
    rel_sets = []
    for _ in range(n_users):
        size = int(rng.integers(0, min(n_items, 2 * k_cols) + 1))
        rel_sets.append(set(rng.choice(n_items, size=size, replace=False).tolist()))
    return ranked, rel_sets


# --------------------------------------------------------------------------------------------------------------
# Hand-computed example
# --------------------------------------------------------------------------------------------------------------

HAND_RANKED = np.array([
    [3, 1, 7, 2, 5],    # u0: rel {1, 2, 9}: hits at positions 2 and 4
    [0, 6, 8, -1, -1],  # u1: rel {0}: hit at position 1, padding after
    [1, 2, 3, 4, 5],    # u2: no relevant items -> not evaluated
    [5, 4, 3, 2, 1],    # u3: rel {0, 8}: no hit
    [2, 9, 4, 1, 0],    # u4: rel {0, 1, 2, 4, 6, 7}: hits at positions 1, 3, 4, 5
])
HAND_REL = [{1, 2, 9}, {0}, set(), {0, 8}, {0, 1, 2, 4, 6, 7}]


def expect(*, recall: float, precision: float, ndcg: float, mrr: float, hit: float,
           map: float) -> dict[str, float]:
    """One user's expected metrics at one k, keyed by metric family."""
    return {"recall": recall, "precision": precision, "ndcg": ndcg, "mrr": mrr, "hit": hit, "map": map}


IDCG3 = 1 + lg(2) + lg(3)  # = 1 + 1/log2(3) + 1/2
IDCG5 = IDCG3 + lg(4) + lg(5)
HAND_EXPECTED = {
    # u0 @3: 1 hit (pos 2). recall 1/3, precision 1/3, DCG = 1/log2(3), IDCG over min(3,3)=3 positions,
    #        MRR 1/2, AP = precision@2 / min(3,3) = (1/2)/3.
    # u0 @5: 2 hits (pos 2, 4). recall 2/3, precision 2/5, DCG = 1/log2(3) + 1/log2(5), AP = (1/2 + 2/4)/3.
    0: {3: expect(recall=1 / 3, precision=1 / 3, ndcg=lg(2) / IDCG3, mrr=1 / 2, hit=1.0, map=(1 / 2) / 3),
        5: expect(recall=2 / 3, precision=2 / 5, ndcg=(lg(2) + lg(4)) / IDCG3, mrr=1 / 2, hit=1.0,
                map=(1 / 2 + 2 / 4) / 3)},
    # u1: the single relevant item is first: everything 1 except precision = 1/k.
    1: {3: expect(recall=1.0, precision=1 / 3, ndcg=1.0, mrr=1.0, hit=1.0, map=1.0),
        5: expect(recall=1.0, precision=1 / 5, ndcg=1.0, mrr=1.0, hit=1.0, map=1.0)},
    3: {3: expect(recall=0.0, precision=0.0, ndcg=0.0, mrr=0.0, hit=0.0, map=0.0),
        5: expect(recall=0.0, precision=0.0, ndcg=0.0, mrr=0.0, hit=0.0, map=0.0)},
    # u4 @3: hits at 1, 3. recall 2/6, precision 2/3, DCG = 1 + 1/log2(4) = 1.5, IDCG over min(6,3)=3,
    #        AP = (1/1 + 2/3) / 3.
    # u4 @5: hits at 1, 3, 4, 5. recall 4/6, precision 4/5, IDCG over min(6,5)=5,
    #        AP = (1/1 + 2/3 + 3/4 + 4/5) / 5.
    4: {3: expect(recall=2 / 6, precision=2 / 3, ndcg=1.5 / IDCG3, mrr=1.0, hit=1.0, map=(1 + 2 / 3) / 3),
        5: expect(recall=4 / 6, precision=4 / 5, ndcg=(1 + lg(3) + lg(4) + lg(5)) / IDCG5, mrr=1.0, hit=1.0,
                map=(1 + 2 / 3 + 3 / 4 + 4 / 5) / 5)},
}


def test_hand_example_per_user():
    per = per_user_metrics(HAND_RANKED, csr_from_sets(HAND_REL, 10), ks=(3, 5))
    assert per["users"].dtype == np.int64
    assert per["users"].tolist() == [0, 1, 3, 4]
    for row, user in enumerate(per["users"].tolist()):
        for k, expected in HAND_EXPECTED[user].items():
            for name, value in expected.items():
                assert per[f"{name}@{k}"][row] == pytest.approx(value, abs=1e-12), (user, k, name)


def test_hand_example_means():
    got = ranking_metrics(HAND_RANKED, csr_from_sets(HAND_REL, 10), ks=(3, 5))
    assert set(got) == {f"{n}@{k}" for n in METRIC_NAMES for k in (3, 5)}
    assert all(type(v) is float for v in got.values())
    # recall@3 over evaluated users u0, u1, u3, u4 = (1/3 + 1 + 0 + 1/3) / 4 = 5/12
    assert got["recall@3"] == pytest.approx(5 / 12, abs=1e-12)
    # mrr@5 = (1/2 + 1 + 0 + 1) / 4 = 5/8
    assert got["mrr@5"] == pytest.approx(5 / 8, abs=1e-12)
    # hit@5 = 3/4
    assert got["hit@5"] == pytest.approx(3 / 4, abs=1e-12)
    for k in (3, 5):
        for name in METRIC_NAMES:
            mean = sum(HAND_EXPECTED[u][k][name] for u in (0, 1, 3, 4)) / 4
            assert got[f"{name}@{k}"] == pytest.approx(mean, abs=1e-12)
    assert got == pytest.approx(reference_metrics(HAND_RANKED, HAND_REL, (3, 5)), abs=1e-12)


def test_ndcg_uses_min_rel_k_ideal():
    # 1 relevant item at position 2 of 2: DCG = 1/log2(3), IDCG = 1 (one ideal position, not k).
    got = ranking_metrics(np.array([[5, 1]]), csr_from_sets([{1}], 6), ks=(2,))
    assert got["ndcg@2"] == pytest.approx(1 / math.log2(3))
    assert got["map@2"] == pytest.approx(0.5)


def test_torch_input_matches_numpy():
    rel = csr_from_sets(HAND_REL, 10)
    a = ranking_metrics(HAND_RANKED, rel, ks=(3, 5))
    b = ranking_metrics(torch.from_numpy(HAND_RANKED), rel, ks=(3, 5))
    c = ranking_metrics(torch.from_numpy(HAND_RANKED).to(torch.int32), rel, ks=(3, 5))
    assert a == b == c


def test_csr_matrix_and_coo_accepted_and_not_mutated():
    rel = csr_from_sets(HAND_REL, 10)
    expected = ranking_metrics(HAND_RANKED, rel, ks=(3, 5))
    assert ranking_metrics(HAND_RANKED, sp.csr_matrix(rel), ks=(3, 5)) == expected
    assert ranking_metrics(HAND_RANKED, rel.tocoo(), ks=(3, 5)) == expected
    # Unsorted column indices, a duplicate entry and an explicit zero, built straight from CSR arrays.
    messy = sp.csr_array((np.array([1.0, 0.0, 1.0, 1.0]), np.array([2, 5, 1, 2]), np.array([0, 4, 4, 4, 4, 4])),
                         shape=(5, 10))
    before = (messy.data.copy(), messy.indices.copy(), messy.indptr.copy())
    clean = csr_from_sets([{1, 2}, set(), set(), set(), set()], 10)
    assert ranking_metrics(HAND_RANKED, messy, ks=(3, 5)) == ranking_metrics(HAND_RANKED, clean, ks=(3, 5))
    for old, new in zip(before, (messy.data, messy.indices, messy.indptr), strict=True):
        np.testing.assert_array_equal(old, new)


def test_reference_random_data():
    rng = np.random.default_rng(1234)
    for n_users, n_items, k_cols, ks in [(50, 30, 10, (1, 5, 10)), (200, 100, 20, (10, 20)), (30, 8, 8, (3, 8))]:
        ranked, rel_sets = random_case(rng, n_users, n_items, k_cols)
        got = ranking_metrics(ranked, csr_from_sets(rel_sets, n_items), ks=ks)
        want = reference_metrics(ranked, rel_sets, ks)
        assert got.keys() == want.keys()
        for key in want:
            assert abs(got[key] - want[key]) <= 1e-9, key


def test_blocked_computation_matches(monkeypatch):
    rng = np.random.default_rng(7)
    ranked, rel_sets = random_case(rng, 300, 60, 12)
    rel = csr_from_sets(rel_sets, 60)
    whole = per_user_metrics(ranked, rel, ks=(5, 12))
    monkeypatch.setattr(ranking_mod, "_BLOCK_CELLS", 12 * 7)  # 7 users per block, uneven last block
    blocked = per_user_metrics(ranked, rel, ks=(5, 12))
    assert whole.keys() == blocked.keys()
    for key in whole:
        np.testing.assert_array_equal(whole[key], blocked[key])


def test_only_first_max_k_columns_matter():
    rng = np.random.default_rng(3)
    ranked, rel_sets = random_case(rng, 40, 30, 15)
    rel = csr_from_sets(rel_sets, 30)
    assert ranking_metrics(ranked, rel, ks=(5, 10)) == ranking_metrics(ranked[:, :10], rel, ks=(5, 10))


@pytest.mark.parametrize("ks", [(10, 20), 20, (25,)])
def test_k_larger_than_list_raises(ks):
    with pytest.raises(ValueError, match="K=5"):
        ranking_metrics(HAND_RANKED, csr_from_sets(HAND_REL, 10), ks=ks)


def test_no_relevant_user_raises():
    with pytest.raises(ValueError, match="no user has a relevant item"):
        ranking_metrics(HAND_RANKED, sp.csr_array((5, 10)), ks=(3,))
    with pytest.raises(ValueError, match="no user has a relevant item"):
        per_user_metrics(HAND_RANKED, sp.csr_array((np.zeros(2), ([0, 1], [1, 0])), shape=(5, 10)), ks=(3,))


@pytest.mark.parametrize(
    ("ranked", "rel", "match"),
    [
        (HAND_RANKED[:4], csr_from_sets(HAND_REL, 10), "user rows"),
        (np.array([[0, 10]]), csr_from_sets([{0}], 10), r"\[-1, 10\)"),
        (np.array([[0, -2]]), csr_from_sets([{0}], 10), r"\[-1, 10\)"),
        (np.array([[3, 1, 3]]), csr_from_sets([{3}], 10), "item 3 more than once"),
        (np.array([[0.0, 1.0]]), csr_from_sets([{0}], 10), "integer"),
        (np.array([0, 1]), csr_from_sets([{0}], 10), "2-D"),
        (np.array([[0, 1]]), np.ones((1, 10)), "scipy sparse"),
    ],
)
def test_bad_inputs_raise(ranked, rel, match):
    k = ranked.shape[-1]  # only the first max(ks) columns are read, so look at all of them
    with pytest.raises(ValueError, match=match):
        ranking_metrics(ranked, rel, ks=(k,))


@pytest.mark.parametrize("ks", [(), (0,), (-1, 5), (2.0,), (True,)])
def test_bad_ks_raise(ks):
    with pytest.raises(ValueError):
        ranking_metrics(HAND_RANKED, csr_from_sets(HAND_REL, 10), ks=ks)


def test_repeated_padding_is_allowed():
    got = ranking_metrics(np.array([[4, -1, -1, -1]]), csr_from_sets([{4, 5}], 6), ks=(4,))
    assert got["recall@4"] == 0.5
    assert got["precision@4"] == 0.25


# --------------------------------------------------------------------------------------------------------------
# Hypothesis properties
# --------------------------------------------------------------------------------------------------------------

@st.composite
def ranking_cases(draw, min_users: int = 1, max_users: int = 6):
    """Random rankings (unique per row, -1 padding anywhere) with relevant sets; at least one non-empty."""
    n_items = draw(st.integers(2, 25))
    k_cols = draw(st.integers(1, n_items))
    n_users = draw(st.integers(min_users, max_users))
    items = st.integers(0, n_items - 1)
    ranked = []
    for _ in range(n_users):
        row = draw(st.lists(items, min_size=k_cols, max_size=k_cols, unique=True))
        pad = draw(st.lists(st.booleans(), min_size=k_cols, max_size=k_cols))
        ranked.append([-1 if p else i for i, p in zip(row, pad, strict=True)])
    rel_sets = [draw(st.sets(items, max_size=n_items)) for _ in range(n_users)]
    if not any(rel_sets):
        rel_sets[draw(st.integers(0, n_users - 1))] = {draw(items)}
    ks = tuple(sorted(draw(st.sets(st.integers(1, k_cols), min_size=1, max_size=3))))
    return np.array(ranked, dtype=np.int64).reshape(n_users, k_cols), rel_sets, n_items, ks


@settings(max_examples=50, deadline=None)
@given(ranking_cases())
def test_matches_reference(case):
    ranked, rel_sets, n_items, ks = case
    got = ranking_metrics(ranked, csr_from_sets(rel_sets, n_items), ks=ks)
    want = reference_metrics(ranked, rel_sets, ks)
    for key in want:
        assert abs(got[key] - want[key]) <= 1e-9, key


@settings(max_examples=30, deadline=None)
@given(ranking_cases())
def test_values_in_unit_interval_and_means_agree(case):
    ranked, rel_sets, n_items, ks = case
    rel = csr_from_sets(rel_sets, n_items)
    per = per_user_metrics(ranked, rel, ks=ks)
    means = ranking_metrics(ranked, rel, ks=ks)
    assert per["users"].tolist() == [u for u, s in enumerate(rel_sets) if s]
    assert set(per) == set(means) | {"users"}
    for key, value in means.items():
        assert per[key].shape == per["users"].shape
        assert np.all((per[key] >= 0) & (per[key] <= 1 + 1e-12)), key
        assert 0.0 <= value <= 1.0 + 1e-12
        assert value == pytest.approx(float(np.mean(per[key])), abs=1e-12)


@settings(max_examples=30, deadline=None)
@given(st.data())
def test_perfect_ranking(data):
    n_items = data.draw(st.integers(2, 30))
    k = data.draw(st.integers(1, n_items))
    n_users = data.draw(st.integers(1, 5))
    items = st.integers(0, n_items - 1)
    ranked, rel_sets = [], []
    for _ in range(n_users):
        rel = data.draw(st.lists(items, min_size=1, max_size=k, unique=True))
        rest = [i for i in data.draw(st.permutations(range(n_items))) if i not in rel]
        row = (rel + rest)[:k]
        row += [-1] * (k - len(row))
        ranked.append(row)
        rel_sets.append(set(rel))
    ranked = np.array(ranked, dtype=np.int64)
    per = per_user_metrics(ranked, csr_from_sets(rel_sets, n_items), ks=(k,))
    for name in ("recall", "ndcg", "hit", "mrr", "map"):
        np.testing.assert_allclose(per[f"{name}@{k}"], 1.0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(per[f"precision@{k}"], [len(s) / k for s in rel_sets], rtol=0, atol=1e-12)


@settings(max_examples=30, deadline=None)
@given(ranking_cases(), st.randoms(use_true_random=False), st.booleans())
def test_relevant_storage_order_is_irrelevant(case, rnd, duplicate):
    ranked, rel_sets, n_items, ks = case
    expected = ranking_metrics(ranked, csr_from_sets(rel_sets, n_items), ks=ks)
    # Same sets, rows' entries shuffled, optionally each entry stored twice, built as raw unsorted CSR.
    indptr, indices = [0], []
    for s in rel_sets:
        cols = list(s) * (2 if duplicate else 1)
        rnd.shuffle(cols)
        indices += cols
        indptr.append(len(indices))
    data = np.arange(1, len(indices) + 1, dtype=np.float64)  # arbitrary nonzero values
    messy = sp.csr_array((data, np.array(indices, dtype=np.int64), np.array(indptr)), shape=(len(rel_sets), n_items))
    assert ranking_metrics(ranked, messy, ks=ks) == expected
    # Same sets, COO triplets in a shuffled order.
    trip = [(u, i) for u, s in enumerate(rel_sets) for i in s]
    rnd.shuffle(trip)
    rows = np.array([t[0] for t in trip], dtype=np.int64)
    cols = np.array([t[1] for t in trip], dtype=np.int64)
    coo = sp.coo_array((np.ones(len(trip)), (rows, cols)), shape=(len(rel_sets), n_items))
    assert ranking_metrics(ranked, coo.tocsr(), ks=ks) == expected


@settings(max_examples=30, deadline=None)
@given(ranking_cases(), st.data())
def test_adding_user_without_relevant_items_changes_nothing(case, data):
    ranked, rel_sets, n_items, ks = case
    expected = ranking_metrics(ranked, csr_from_sets(rel_sets, n_items), ks=ks)
    at = data.draw(st.integers(0, len(rel_sets)))
    k_cols = ranked.shape[1]
    extra = data.draw(st.lists(st.integers(0, n_items - 1), min_size=k_cols, max_size=k_cols, unique=True))
    ranked2 = np.insert(ranked, at, np.array(extra, dtype=np.int64), axis=0)
    rel_sets2 = rel_sets[:at] + [set()] + rel_sets[at:]
    got = ranking_metrics(ranked2, csr_from_sets(rel_sets2, n_items), ks=ks)
    assert got == pytest.approx(expected, abs=1e-15)
    per2 = per_user_metrics(ranked2, csr_from_sets(rel_sets2, n_items), ks=ks)
    assert at not in per2["users"].tolist()


# --------------------------------------------------------------------------------------------------------------
# Beyond-accuracy metrics
# --------------------------------------------------------------------------------------------------------------

def test_item_coverage_known_values():
    ranked = np.array([[0, 1, 3], [1, 2, 3]])
    assert item_coverage(ranked, 4, 2) == 3 / 4   # {0, 1, 2}
    assert item_coverage(ranked, 4, 1) == 2 / 4   # {0, 1}
    assert item_coverage(ranked, 8, 3) == 4 / 8
    assert item_coverage(np.array([[0, -1], [-1, -1]]), 4, 2) == 1 / 4
    assert coverage is item_coverage
    assert item_coverage(torch.tensor([[0, 1]]), 2, 2) == 1.0


def test_novelty_known_values():
    pop = np.array([4, 2, 1, 0])
    # n_users = 8 -> p = [1/2, 1/4, 1/8, 1/8 (zero pop guarded to 1)] -> information [1, 2, 3, 3] bits.
    assert novelty(np.array([[0, 1], [2, 3]]), pop, 2, n_users=8) == pytest.approx((1.5 + 3.0) / 2)
    # Padding is ignored: user means 1 and 3.
    assert novelty(np.array([[0, -1], [2, 3]]), pop, 2, n_users=8) == pytest.approx(2.0)
    # Default n_users = number of ranked rows (4): p = [1, 1/2, 1/4, 1/4] -> information [0, 1, 2, 2].
    assert novelty(np.array([[0], [1], [2], [3]]), pop, 1) == pytest.approx((0 + 1 + 2 + 2) / 4)
    # p clipped at 1 when an item has more interactions than users.
    assert novelty(np.array([[0]]), np.array([5.0]), 1, n_users=2) == 0.0


def test_popularity_bias_known_values():
    pop = np.array([4, 2, 1, 0])
    assert popularity_bias(np.array([[0, 1], [2, 3]]), pop, 2) == pytest.approx((3 + 0.5) / 2)
    assert popularity_bias(np.array([[0, -1], [2, 3]]), pop, 2) == pytest.approx((4 + 0.5) / 2)
    assert popularity_bias(np.array([[0, 1], [2, 3]]), pop, 1) == pytest.approx((4 + 1) / 2)


def test_beyond_bad_inputs():
    pop = np.ones(4)
    with pytest.raises(ValueError, match="all slots"):
        popularity_bias(np.array([[-1, -1]]), pop, 2)
    with pytest.raises(ValueError, match="K=2"):
        novelty(np.array([[0, 1]]), pop, 3)
    with pytest.raises(ValueError, match=r"\[-1, 4\)"):
        item_coverage(np.array([[0, 4]]), 4, 2)
    with pytest.raises(ValueError, match="1-D"):
        popularity_bias(np.array([[0, 1]]), np.ones((2, 2)), 2)
    with pytest.raises(ValueError, match="non-negative"):
        novelty(np.array([[0, 1]]), np.array([1.0, -1.0]), 2)


# --------------------------------------------------------------------------------------------------------------
# Significance
# --------------------------------------------------------------------------------------------------------------

def test_paired_ttest_known_value():
    a = np.array([1.0, 2.0, 3.0, 4.0])
    b = np.array([0.0, 2.0, 2.0, 2.0])
    res = paired_test(a, b, method="ttest")
    # d = [1, 0, 1, 2]: mean 1, sample sd sqrt(2/3), t = 1 / (sqrt(2/3) / sqrt(4)) = sqrt(6), df = 3.
    # Student t with 3 df: CDF(t) = 1/2 + (1/pi) * (x / (1 + x^2) + atan(x)), x = t / sqrt(3) = sqrt(2)
    # -> two-sided p = 1 - (2/pi) * (sqrt(2)/3 + atan(sqrt(2))).
    assert res["statistic"] == pytest.approx(math.sqrt(6))
    assert res["p_value"] == pytest.approx(1 - (2 / math.pi) * (math.sqrt(2) / 3 + math.atan(math.sqrt(2))))
    assert res["mean_a"] == 2.5 and res["mean_b"] == 1.5 and res["diff"] == 1.0 and res["n"] == 4


def test_paired_wilcoxon_known_values():
    # d = [1, 2, 3, 4], all positive: W- = 0, exact two-sided p = 2 * (1 / 2^4) = 0.125.
    res = paired_test(np.array([1.0, 2, 3, 4]), np.zeros(4), method="wilcoxon")
    assert res["statistic"] == 0.0
    assert res["p_value"] == pytest.approx(0.125)
    # d = [1, 2, -3, 4, 5]: W- = 3; subsets of {1..5} with rank sum <= 3: {}, {1}, {2}, {3}, {1,2}
    # -> p = 2 * 5 / 32 = 0.3125.
    res = paired_test(np.array([1.0, 2, -3, 4, 5]), np.zeros(5), method="wilcoxon")
    assert res["statistic"] == 3.0
    assert res["p_value"] == pytest.approx(0.3125)


@pytest.mark.parametrize("method", ["ttest", "wilcoxon"])
def test_paired_identical_arrays(method):
    res = paired_test(np.array([0.1, 0.5, 0.2]), np.array([0.1, 0.5, 0.2]), method=method)
    assert res["statistic"] == 0.0 and res["p_value"] == 1.0 and res["diff"] == 0.0


def test_paired_bad_inputs():
    with pytest.raises(ValueError, match="same length"):
        paired_test(np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="method"):
        paired_test(np.ones(3), np.ones(3), method="sign")
    with pytest.raises(ValueError, match="at least 2"):
        paired_test(np.ones(1), np.ones(1))
    with pytest.raises(ValueError, match="NaN"):
        paired_test(np.array([1.0, np.nan]), np.ones(2))


def test_align_per_user():
    users, a, b = align_per_user([3, 1, 2], [30.0, 10.0, 20.0], np.array([2, 5, 3]), [0.2, 0.5, 0.3])
    assert users.dtype == np.int64
    assert users.tolist() == [2, 3]
    assert a.tolist() == [20.0, 30.0]
    assert b.tolist() == [0.2, 0.3]
    with pytest.raises(ValueError, match="more than once"):
        align_per_user([1, 1], [0.0, 0.0], [1], [0.0])
    with pytest.raises(ValueError, match="equal lengths"):
        align_per_user([1, 2], [0.0], [1], [0.0])


def test_per_user_metrics_feed_paired_test():
    rng = np.random.default_rng(5)
    ranked_a, rel_sets = random_case(rng, 80, 40, 10, pad_prob=0.0)
    rel = csr_from_sets(rel_sets, 40)
    ranked_b = ranked_a[:, ::-1].copy()
    pa = per_user_metrics(ranked_a, rel, ks=(10,))
    pb = per_user_metrics(ranked_b, rel, ks=(10,))
    users, a, b = align_per_user(pa["users"], pa["recall@10"], pb["users"], pb["recall@10"])
    np.testing.assert_array_equal(a, b)  # same top-10 set, so recall is identical
    res = paired_test(*align_per_user(pa["users"], pa["ndcg@10"], pb["users"], pb["ndcg@10"])[1:])
    assert res["n"] == users.size
    assert 0.0 <= res["p_value"] <= 1.0
