"""Binary codes on a 200k-item synthetic catalogue: memory per item and candidate-generation speed, side by side.

Compares, for the same queries and the same top-k engine (:func:`recsys.scoring.topk.iter_topk`):

* float: a float32 GEMM over the full ``D``-dim table (``4·D`` bytes per item), then top-k;
* Hamming: XOR + popcount over ``D``-bit packed codes (``D/8`` bytes per item), then top-k;
* Hamming shortlist + float re-rank: the Hamming pass keeps ``shortlist`` items, re-scored with the float vectors.

It prints the distance-kernel time alone (the candidate generation proper) and the end-to-end top-k time, with
ratios to float, plus the recall of the cascade's top-k against the exact float top-k. Items are drawn from a
low-rank Gaussian model so that the codes carry signal, as trained embeddings do. All timings use one thread
(the target machine is one core; torch's GEMM would otherwise use every core and numpy's popcount one)::

    .venv/bin/python scripts/bench_binary.py --items 200000 --dim 128 --queries 1024
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from recsys.scoring.cascade import hamming_distances, pack_bits
from recsys.scoring.index import ExactSpec, HammingSpec, ServingTables
from recsys.scoring.topk import topk


def timed(fn, repeats: int):
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--queries", type=int, default=1024)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--shortlist", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None, help="Optional JSON output.")
    a = ap.parse_args()
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    basis = torch.randn(16, a.dim, generator=g)
    items = torch.randn(a.items, 16, generator=g) @ basis + 0.5 * torch.randn(a.items, a.dim, generator=g)
    queries = torch.randn(a.queries, 16, generator=g) @ basis + 0.5 * torch.randn(a.queries, a.dim, generator=g)
    q_bits, i_bits = pack_bits(queries), pack_bits(items)
    users = np.arange(a.queries)
    chunk = 256

    t_gemm, _ = timed(lambda: [queries[s:s + chunk] @ items.T for s in range(0, a.queries, chunk)], a.repeats)
    t_ham, _ = timed(lambda: [hamming_distances(q_bits[s:s + chunk], i_bits) for s in range(0, a.queries, chunk)],
                     a.repeats)

    tables = ServingTables(queries, items)

    def run(spec):
        # Building the index (packing the item codes) is part of each timed run, as in a fresh scoring job.
        return topk(spec.build(tables).score_function(), users, a.items, a.k, chunk_size=chunk)[0]

    t_float, exact = timed(lambda: run(ExactSpec()), a.repeats)
    t_codes, codes = timed(lambda: run(HammingSpec(codes_only=True)), a.repeats)
    t_casc, casc = timed(lambda: run(HammingSpec(shortlist=a.shortlist)), a.repeats)

    def recall(ranked):
        return float(np.mean([len(set(r) & set(e)) / a.k for r, e in zip(ranked, exact)]))

    res = {
        "items": a.items, "dim": a.dim, "queries": a.queries, "k": a.k, "shortlist": a.shortlist, "threads": 1,
        "bytes_per_item": {"float32": 4 * a.dim, "packed_bits": a.dim / 8},
        "catalogue_mib": {"float32": 4 * a.dim * a.items / 2**20, "packed_bits": a.dim / 8 * a.items / 2**20},
        "kernel_s": {"float_gemm": t_gemm, "hamming": t_ham},
        "topk_s": {"float": t_float, "hamming_only": t_codes, "hamming_shortlist_rerank": t_casc},
        f"recall@{a.k}_vs_exact": {"hamming_only": recall(codes), "hamming_shortlist_rerank": recall(casc)},
    }
    print(f"catalogue {a.items:,} items × {a.dim} dims, {a.queries} queries, one thread")
    print(f"memory per item: float32 {4 * a.dim} B, packed bits {a.dim / 8:g} B  ({32:.0f}x smaller; catalogue "
          f"{res['catalogue_mib']['float32']:.1f} MiB vs {res['catalogue_mib']['packed_bits']:.2f} MiB)")
    print(f"candidate generation (distance kernel): float GEMM {t_gemm:.3f} s, Hamming {t_ham:.3f} s "
          f"-> speed-up {t_gemm / t_ham:.2f}x")
    print(f"end-to-end top-{a.k}: float {t_float:.3f} s; Hamming only {t_codes:.3f} s ({t_float / t_codes:.2f}x); "
          f"Hamming shortlist {a.shortlist} + float re-rank {t_casc:.3f} s ({t_float / t_casc:.2f}x)")
    print(f"recall@{a.k} vs exact float: Hamming only {recall(codes):.3f}, shortlist + re-rank {recall(casc):.3f}")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
