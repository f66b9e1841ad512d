"""The chunked top-k engine against a dense reference."""

import numpy as np
import torch

from recsys.data.interactions import to_csr
from recsys.scoring.topk import gemm_score_fn, topk


def test_topk_matches_dense_reference_with_masking():
    g = torch.Generator().manual_seed(0)
    q, items = torch.randn(37, 8, generator=g), torch.randn(50, 8, generator=g)
    rng = np.random.default_rng(0)
    u, i = rng.integers(0, 37, 300), rng.integers(0, 50, 300)
    exclude = to_csr(u, i, (37, 50))
    users = np.arange(37)
    got, scores = topk(gemm_score_fn(q, items), users, 50, 10, exclude, chunk_size=7)
    dense = (q @ items.T).numpy()
    dense[exclude.toarray() > 0] = -np.inf
    ref = np.argsort(-dense, axis=1, kind="stable")[:, :10]
    np.testing.assert_allclose(scores, np.take_along_axis(dense, ref, 1), rtol=1e-5)
    assert not np.isin(got[0], exclude[0].indices).any()


def test_topk_pads_when_too_few_items_qualify():
    q, items = torch.ones(2, 2), torch.ones(3, 2)
    exclude = to_csr(np.array([0, 0]), np.array([0, 1]), (2, 3))
    got, _ = topk(gemm_score_fn(q, items), np.arange(2), 3, 5, exclude)
    assert got[0].tolist() == [2, -1, -1, -1, -1]
    assert sorted(got[1, :3].tolist()) == [0, 1, 2] and (got[1, 3:] == -1).all()


def test_bf16_shortlist_rerank_matches_float32():
    from recsys.scoring.topk import iter_topk, scoring_dtype

    assert scoring_dtype("auto", "cpu") == torch.float32 and scoring_dtype("bf16") == torch.bfloat16
    g = torch.Generator().manual_seed(1)
    q, items = torch.randn(64, 16, generator=g), torch.randn(300, 16, generator=g)
    rng = np.random.default_rng(1)
    exclude = to_csr(rng.integers(0, 64, 500), rng.integers(0, 300, 500), (64, 300))
    ref_items, ref_scores = topk(gemm_score_fn(q, items), np.arange(64), 300, 10, exclude, chunk_size=16)
    chunks = list(iter_topk(gemm_score_fn(q, items), np.arange(64), 300, 10, exclude, 16, dtype=torch.bfloat16))
    got_items = torch.cat([c[1] for c in chunks]).numpy()
    got_scores = torch.cat([c[2] for c in chunks])
    assert got_scores.dtype == torch.float32
    # The float32 re-rank of a 2k bf16 shortlist recovers the float32 top-k (allowing float rounding only).
    np.testing.assert_allclose(got_scores.numpy(), ref_scores, rtol=1e-5, atol=1e-5)
    assert (got_items == ref_items).mean() > 0.99
