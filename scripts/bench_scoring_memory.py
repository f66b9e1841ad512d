"""Memory-bound check of sharded batch scoring: 1M users x 50k items through ``recsys score --shard-users``.

Builds a synthetic run directory (GEMM-ready tables in ``model.pt``, integer external IDs, a training split of
``--seen`` items per user, part of them drawn from a popular head so that seen-item masking changes the lists),
runs ``recsys score`` in a child process and reports its peak RSS (``RUSAGE_CHILDREN``) and wall time, then
checks the streamed Parquet shards row for row against an exact reference (full float32 score rows, seen items
set to -inf, ``torch.topk``) on a random sample of users.

    nice -n 10 python scripts/bench_scoring_memory.py --users 1000000 --items 50000 --dim 64 --k 20
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def build_run(run: Path, n_users: int, n_items: int, dim: int, seen: int, seed: int = 0) -> None:
    """Write a minimal run directory that ``recsys score`` reads: tables, vocabularies, the training split.

    Args:
        run: the directory to create.
        n_users, n_items, dim: table sizes.
        seen: training items per user (a quarter of them from the 500 most popular items).
        seed: RNG seed.
    """
    from recsys.data.prepared import PreparedData
    from recsys.data.vocab import Vocabulary
    from recsys.runs import ModelPayload, Run

    rng = np.random.default_rng(seed)
    # No model to rebuild: `recsys score` serves the stored tables and never parses this config.
    r = Run.create(run, "# synthetic tables written by scripts/bench_scoring_memory.py; no model to rebuild\n"
                        "model: null\n")
    queries = rng.standard_normal((n_users, dim), dtype=np.float32)
    items = rng.standard_normal((n_items, dim), dtype=np.float32)
    # A popular head: coordinate 0 lifts 500 items for every user, so top lists overlap and masking matters.
    head = min(500, n_items)
    queries[:, 0] = np.abs(queries[:, 0]) + 1
    items[:head, 0] += 3
    r.save_payload(ModelPayload(state_dict={}, queries=torch.from_numpy(queries), items=torch.from_numpy(items)))
    del queries, items
    n_head = seen // 4
    users = np.repeat(np.arange(n_users, dtype=np.int64), seen)
    picks = rng.integers(0, n_items, (n_users, seen))
    picks[:, :n_head] = rng.integers(0, head, (n_users, n_head))
    r.save_data(PreparedData(Vocabulary(np.arange(n_users, dtype=np.int64) + 10_000_000, "user"),
                             Vocabulary(np.arange(n_items, dtype=np.int64) + 500_000, "item"), users,
                             picks.reshape(-1).astype(np.int64), np.zeros(len(users), dtype=np.int8),
                             name="bench-scoring-memory"))


def verify(run: Path, out: Path, k: int, sample: int, seed: int = 1) -> dict:
    """Compare the shards' rows of ``sample`` random users with an exact full-row reference.

    Returns counts of users checked, lists the masking changed, rows compared, item mismatches and the largest
    score difference.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from recsys.runs import Run

    r = Run.open(run)
    queries, items = r.payload.tables
    n_users, n_items = len(queries), len(items)
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(n_users, size=min(sample, n_users), replace=False))
    ids = rows + 10_000_000
    train_users, train_items = r.train_pairs()
    sampled = np.isin(train_users, rows)
    split_users, split_items = train_users[sampled], train_items[sampled]
    scores = queries[torch.from_numpy(rows)] @ items.T
    unmasked = torch.topk(scores, k, dim=1).indices
    pos = np.searchsorted(rows, split_users)
    scores[torch.from_numpy(pos), torch.from_numpy(split_items)] = float("-inf")
    ref_vals, ref_idx = torch.topk(scores, k, dim=1, sorted=True)
    got = []
    id_set = pa.array(ids)
    for f in sorted(out.glob("part-*.parquet")):
        tab = pq.read_table(f)
        got.append(tab.filter(pc.is_in(tab.column("user"), value_set=id_set)))
    got = pa.concat_tables(got).sort_by([("user", "ascending"), ("rank", "ascending")])
    g_items = got.column("item").to_numpy().reshape(len(rows), k) - 500_000
    g_scores = got.column("score").to_numpy().reshape(len(rows), k)
    assert (got.column("user").to_numpy().reshape(len(rows), k) == ids[:, None]).all()
    assert (got.column("rank").to_numpy().reshape(len(rows), k) == np.arange(1, k + 1)).all()
    mismatch = int((g_items != ref_idx.numpy()).sum())
    # How many sampled lists the seen-item masking changed: the check covers masking, not just the GEMM.
    masked = int((unmasked != ref_idx).any(1).sum())
    return {"users_checked": len(rows), "lists_changed_by_masking": masked, "rows_compared": int(got.num_rows),
            "item_mismatches": mismatch,
            "max_abs_score_diff": float(np.abs(g_scores - ref_vals.numpy()).max()), "n_items": n_items}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=1_000_000)
    p.add_argument("--items", type=int, default=50_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--seen", type=int, default=20, help="Training items per user (masked).")
    p.add_argument("--shard-users", type=int, default=50_000)
    p.add_argument("--sample", type=int, default=2000, help="Users checked against the exact reference.")
    p.add_argument("--workdir", default=None, help="Keep the run and output here (default: a temp dir, removed).")
    p.add_argument("--limit-gib", type=float, default=4.0)
    a = p.parse_args()
    work = Path(a.workdir) if a.workdir else Path(tempfile.mkdtemp(prefix="recsys-mem-"))
    run, out = work / "run", work / "scores"
    try:
        t = time.perf_counter()
        from recsys.runs import Run

        if Run(run).status == "configured":  # no model.pt yet
            build_run(run, a.users, a.items, a.dim, a.seen)
        print(f"synthetic run: {a.users} users x {a.items} items, d={a.dim}, seen={a.seen}/user "
              f"({time.perf_counter() - t:.1f} s to build)", flush=True)
        shutil.rmtree(out, ignore_errors=True)
        cmd = [sys.executable, "-m", "recsys.cli", "score", "--run-dir", str(run), "--out", str(out),
               "--k", str(a.k), "--shard-users", str(a.shard_users)]
        t = time.perf_counter()
        subprocess.run(cmd, cwd=REPO, check=True)
        wall = time.perf_counter() - t
        rss_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
        manifest = json.loads((out / "manifest.json").read_text())
        print(f"scoring: {wall:.1f} s wall, {a.users / wall:.0f} users/s, "
              f"{a.users * a.items / wall / 1e9:.3f} G scores/s, peak RSS {rss_gib:.2f} GiB "
              f"(limit {a.limit_gib} GiB: {'OK' if rss_gib < a.limit_gib else 'EXCEEDED'})", flush=True)
        print(f"manifest: complete={manifest['complete']}, {manifest['rows']} rows in {manifest['n_shards']} shards "
              f"(expected {a.users * a.k})", flush=True)
        t = time.perf_counter()
        v = verify(run, out, a.k, a.sample)
        ok = v["item_mismatches"] == 0 and v["max_abs_score_diff"] < 1e-4
        print(f"verification ({time.perf_counter() - t:.1f} s): {json.dumps(v)} -> {'PASS' if ok else 'FAIL'}")
    finally:
        if not a.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
