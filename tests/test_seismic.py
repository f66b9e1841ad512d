"""The Seismic-style inverted index: exact without pruning, close to exact with it, exclusions respected."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys.retrieval import SeismicIndex, exact_topk
from recsys.scoring.topk import RowSets


def _sparse_vectors(rng, n, k, cut=1.0):
    return np.maximum(rng.normal(size=(n, k)) - cut, 0).astype(np.float32)


def _assert_same_topk(ids, scores, ex_ids, ex_scores):
    # Equal score lists (ties may swap ids), and every returned id's score is right.
    np.testing.assert_allclose(scores, ex_scores, rtol=1e-5, atol=1e-6)
    assert ((ids >= 0) == (ex_ids >= 0)).all()


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(1, 30), block=st.integers(1, 16))
def test_exact_when_pruning_is_off(seed, k, block):
    rng = np.random.default_rng(seed)
    items, queries = _sparse_vectors(rng, 300, 12), _sparse_vectors(rng, 8, 12, 0.3)
    index = SeismicIndex(n_postings=None, block_size=block, seed=seed).build(items)
    ids, scores = index.search_batch(queries, k)
    ex_ids, ex_scores = exact_topk(queries, items, k)
    positive = ex_scores > 0
    # Items that share no concept with the query score 0: the index never visits them, brute force ranks them
    # arbitrarily. Compare the positive part, and check the index returns no false positives.
    np.testing.assert_allclose(np.where(positive, scores, 0), np.where(positive, ex_scores, 0), rtol=1e-5,
                               atol=1e-6)
    assert ((ids >= 0) <= (ex_ids >= 0)).all()
    assert (ids[positive] >= 0).all()


def test_block_skipping_happens_and_stays_exact():
    rng = np.random.default_rng(0)
    items, queries = _sparse_vectors(rng, 5000, 40, 1.2), _sparse_vectors(rng, 20, 40, 1.0)
    index = SeismicIndex(n_postings=None, block_size=16).build(items)
    evaluated = []
    for q in queries:
        ids, scores = index.search(q, 10)
        evaluated.append(index.last_evaluated)
        ex_ids, ex_scores = exact_topk(q[None], items, 10)
        _assert_same_topk(ids[None], scores[None], ex_ids, ex_scores)
    assert np.mean(evaluated) < 0.5 * index.stats["blocks"]


def test_pruned_index_has_high_recall():
    rng = np.random.default_rng(1)
    items, queries = _sparse_vectors(rng, 20000, 64, 1.3), _sparse_vectors(rng, 30, 64, 0.8)
    index = SeismicIndex(n_postings=1500, block_size=32, query_cut=12, summary_energy=0.9).build(items)
    ids, _ = index.search_batch(queries, 50)
    ex_ids, _ = exact_topk(queries, items, 50)
    recall = np.mean([len(set(a) & set(b)) / 50 for a, b in zip(ids, ex_ids, strict=True)])
    assert recall >= 0.9


def test_exclusions_are_never_returned():
    rng = np.random.default_rng(2)
    items, queries = _sparse_vectors(rng, 500, 10, 0.5), _sparse_vectors(rng, 4, 10, 0.0)
    ex_ids, _ = exact_topk(queries, items, 5)
    excl = RowSets.from_pairs(np.repeat(np.arange(4), 5), ex_ids.reshape(-1), 4)
    index = SeismicIndex(n_postings=None, block_size=8).build(items)
    ids, scores = index.search_batch(queries, 5, excl)
    assert all(not set(a) & set(b) for a, b in zip(ids, ex_ids, strict=True))
    ref_ids, ref_scores = exact_topk(queries, items, 5, excl)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5)


def test_rejects_negative_vectors_and_bad_options():
    with pytest.raises(ValueError, match="non-negative"):
        SeismicIndex().build(-np.ones((3, 2), dtype=np.float32))
    with pytest.raises(ValueError):
        SeismicIndex(heap_factor=0)
    with pytest.raises(RuntimeError, match="build"):
        SeismicIndex().search(np.ones(2), 1)
