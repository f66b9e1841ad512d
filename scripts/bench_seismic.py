"""Seismic-style inverted index vs exact brute force on SESA concept vectors (issue 7, acceptance 3).

Recall@k of the index against exact top-k, and per-query latency against two brute-force references: a per-query
GEMV + partial sort (the like-for-like reference, one query at a time) and a batched GEMM + ``torch.topk`` over
all queries (the framework's own scoring engine). Single-threaded (``OMP_NUM_THREADS=1``, torch threads 1).

Catalogues:

* ``--run-dir RUN``: the run's stored explicit tables (users are the queries, their training items excluded).
* ``--synthetic-items N --run-dir RUN``: N items made from RUN's item vectors — each new item copies a random trained
  item's activation vector, multiplies every non-zero activation by log-normal noise (σ = 0.3) and drops each
  with probability 0.1 — so the catalogue keeps the trained model's activation statistics without an LM pass
  over N new texts (about 100 texts/s on this CPU). Queries are RUN's user vectors; nothing is excluded.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_seismic.py --run-dir runs/sesa/p1 --out bench.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recsys.retrieval import SeismicIndex, exact_topk  # noqa: E402
from recsys.runs import Run  # noqa: E402
from recsys.scoring.topk import RowSets  # noqa: E402


def load_tables(run_dir: Path, n_items: int | None, seed: int = 0):
    """(queries, items, exclude) as float32 numpy arrays (exclude: RowSets of training items, or None)."""
    run = Run.open(run_dir)
    if run.payload.tables is None:
        raise SystemExit(f"{run_dir} stores no user/item tables")
    q = run.payload.queries.numpy().astype(np.float32)
    items = run.payload.items.numpy().astype(np.float32)
    if n_items is None:
        return q, items, RowSets.from_pairs(*run.train_pairs(), len(q))
    rng = np.random.default_rng(seed)
    base = items[rng.integers(0, len(items), n_items)]
    noise = rng.lognormal(0.0, 0.3, size=base.shape).astype(np.float32)
    keep = rng.uniform(size=base.shape) >= 0.1
    return q, np.where(keep, base * noise, 0.0).astype(np.float32), None


def brute_force_per_query(q: np.ndarray, items: np.ndarray, k: int, exclude) -> float:
    """Seconds per query of GEMV + argpartition + sort, the one-query-at-a-time reference."""
    t = time.perf_counter()
    for j in range(len(q)):
        s = items @ q[j]
        if exclude is not None:
            s[exclude.indices[exclude.indptr[j]:exclude.indptr[j + 1]]] = -np.inf
        top = np.argpartition(-s, k - 1)[:k]
        top[np.argsort(-s[top])]
    return (time.perf_counter() - t) / len(q)


def run(args) -> dict:
    torch.set_num_threads(1)
    q, items, exclude = load_tables(Path(args.run_dir), args.synthetic_items)
    rng = np.random.default_rng(1)
    rows = np.sort(rng.choice(len(q), min(args.queries, len(q)), replace=False))
    if exclude is not None:
        # Re-index the exclusions to the sampled queries' positions.
        lens = exclude.indptr[rows + 1] - exclude.indptr[rows]
        idx = np.concatenate([exclude.indices[exclude.indptr[r]:exclude.indptr[r + 1]] for r in rows])
        exclude = RowSets(np.concatenate([[0], np.cumsum(lens)]), idx)
    qs = q[rows]
    k = args.k
    t = time.perf_counter()
    ex_ids, ex_scores = exact_topk(qs, items, k, exclude)
    gemm_s = (time.perf_counter() - t) / len(qs)
    per_query_s = brute_force_per_query(qs, items, k, exclude)
    opts = {"n_postings": args.n_postings, "block_size": args.block_size, "summary_energy": args.summary_energy,
            "query_cut": args.query_cut, "heap_factor": args.heap_factor}
    index = SeismicIndex(**opts).build(items)
    t = time.perf_counter()
    ids, scores = index.search_batch(qs, k, exclude)
    index_s = (time.perf_counter() - t) / len(qs)
    recall = np.mean([len(set(a[a >= 0]) & set(b[b >= 0])) / max(1, (b >= 0).sum())
                      for a, b in zip(ids, ex_ids, strict=True)])
    nnz = (items > 0).sum(1)
    return {"catalogue": "synthetic-perturbed" if args.synthetic_items else "run", "run": args.run_dir,
            "n_items": int(len(items)), "n_concepts": int(items.shape[1]), "queries": int(len(qs)), "k": k,
            "item_nnz_mean": float(nnz.mean()), "query_nnz_mean": float((qs > 0).sum(1).mean()),
            "index": {**opts, **{k2: (round(v, 3) if isinstance(v, float) else v) for k2, v in index.stats.items()}},
            "recall@k": float(recall),
            "items_scored_per_query_fraction": index.batch_scored / len(qs) / len(items),
            "ms_per_query": {"index": 1e3 * index_s, "brute_force_gemv": 1e3 * per_query_s,
                             "brute_force_batched_gemm": 1e3 * gemm_s},
            "speedup_vs_gemv": per_query_s / index_s, "speedup_vs_batched_gemm": gemm_s / index_s}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run-dir", required=True)
    p.add_argument("--synthetic-items", type=int, default=None)
    p.add_argument("--queries", type=int, default=500)
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--n-postings", type=int, default=2000)
    p.add_argument("--block-size", type=int, default=32)
    p.add_argument("--summary-energy", type=float, default=1.0)
    p.add_argument("--query-cut", type=int, default=None)
    p.add_argument("--heap-factor", type=float, default=1.0)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    if a.n_postings is not None and a.n_postings <= 0:
        a.n_postings = None
    res = run(a)
    text = json.dumps(res, indent=2)
    print(text)
    if a.out:
        from recsys.io_utils import atomic_write_text

        atomic_write_text(a.out, text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
