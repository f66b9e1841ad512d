"""Batch-scoring throughput, side by side in one run, on one synthetic catalogue.

Rows: our scorer (chunked GEMM + seen-item masking + top-k, ``recsys.scoring.topk``), a bare torch matmul+topk
floor with the same chunking (no masking), ``implicit``'s batched ``recommend`` on the same factor matrices, and a
naive per-user loop (timed on a sample, extrapolated). Prints users/s, G scores/s, the ratios to the floor and to
implicit, and peak RSS.

    python scripts/bench_scoring.py --users 100000 --items 50000 --dim 64 --k 20
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import scipy.sparse as sp
import torch

from recsys.scoring.topk import chunk_size_for, gemm_score_fn, iter_topk


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=100_000)
    p.add_argument("--items", type=int, default=50_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--seen", type=int, default=20, help="Training items per user (masked).")
    p.add_argument("--naive-users", type=int, default=500)
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    rng = np.random.default_rng(0)
    users = torch.from_numpy(rng.standard_normal((a.users, a.dim), dtype=np.float32))
    items = torch.from_numpy(rng.standard_normal((a.items, a.dim), dtype=np.float32))
    seen = sp.csr_matrix((np.ones(a.users * a.seen, dtype=np.float32),
                          (np.repeat(np.arange(a.users), a.seen), rng.integers(0, a.items, a.users * a.seen))),
                         shape=(a.users, a.items))
    seen.sum_duplicates()
    seen.data[:] = 1
    rows = np.arange(a.users)
    chunk = chunk_size_for(a.items)
    scores_total = a.users * a.items
    results = {}

    t = time.perf_counter()
    items_t = items.T.contiguous()
    buf = torch.empty(chunk, a.items)
    for s in range(0, a.users, chunk):
        q = users[s:s + chunk]
        out = torch.mm(q, items_t, out=buf[:len(q)])
        torch.topk(out, a.k, dim=1)
    results["floor (matmul+topk)"] = time.perf_counter() - t

    t = time.perf_counter()
    for _ in iter_topk(gemm_score_fn(users, items), rows, a.items, a.k, seen, chunk):
        pass
    results["recsys scorer"] = time.perf_counter() - t

    try:
        from implicit.cpu.als import AlternatingLeastSquares

        model = AlternatingLeastSquares(factors=a.dim)
        model.user_factors, model.item_factors = users.numpy(), items.numpy()
        t = time.perf_counter()
        model.recommend(rows, seen, N=a.k, filter_already_liked_items=True)
        results["implicit recommend"] = time.perf_counter() - t
    except Exception as e:  # implicit is a dependency, but keep the benchmark useful if its API moves
        print(f"implicit skipped: {e}")

    n = min(a.naive_users, a.users)
    user_np, item_np = users.numpy(), items.numpy()
    t = time.perf_counter()
    for u in range(n):
        s = item_np @ user_np[u]
        s[seen.indices[seen.indptr[u]:seen.indptr[u + 1]]] = -np.inf
        top = np.argpartition(-s, a.k)[:a.k]
        top[np.argsort(-s[top])]
    results["naive per-user loop"] = (time.perf_counter() - t) * a.users / n

    floor = results["floor (matmul+topk)"]
    print(f"catalogue: {a.users} users x {a.items} items, d={a.dim}, k={a.k}, chunk={chunk}, "
          f"threads={torch.get_num_threads()}")
    print(f"{'method':<24}{'seconds':>10}{'users/s':>12}{'G scores/s':>12}{'vs floor':>10}{'vs implicit':>13}")
    for name, sec in results.items():
        vs_imp = results.get("implicit recommend")
        print(f"{name:<24}{sec:>10.2f}{a.users / sec:>12.0f}{scores_total / sec / 1e9:>12.3f}"
              f"{floor / sec:>10.2f}{(vs_imp / sec if vs_imp else float('nan')):>13.2f}")
    print(f"peak RSS: {peak_rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
