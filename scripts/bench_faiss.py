"""Faiss item indexes against the exact engine: recall@k of the approximate ones and search speed, side by side.

For each catalogue, every index is built over the same scorer-prepared tables and searched through the same top-k
engine (:func:`recsys.scoring.topk.topk`, with its user chunks and exclusions) that ``recsys score`` uses:

* ``exact``: our chunked GEMM + top-k (the reference: recall 1, speed 1x);
* ``faiss:flat`` (exact inner product), ``faiss:ivf`` at a few ``nprobe``, ``faiss:hnsw``;
* ``faiss:binary`` (sign codes by Hamming distance) with and without a float re-rank of a shortlist, and our own
  numpy ``hamming:`` index (XOR + popcount) the same two ways.

Recall@k is ``|top-k ∩ exact top-k| / |exact top-k|`` per query, averaged; speed is the exact engine's search
time over the index's at the same k (best of ``--repeats`` each, the two run alternately). Build time (training an
IVF, linking an HNSW graph, packing codes) is reported apart. One thread for torch and faiss (the target machine is
one core).

Catalogues: ``p1``, a trained run's tables (``--run-dir``; its training items excluded, as ``recsys score`` does,
and once more without exclusions), and ``lowrank`` / ``clustered``, synthetic float tables (``--items`` × ``--dim``,
``--queries`` queries; low-rank Gaussian as in ``scripts/bench_binary.py``, or a Gaussian mixture)::

    .venv/bin/python scripts/bench_faiss.py --run-dir /work/h4runs/mf_p1 --out bench_faiss.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import numpy as np
import torch
from bench_binary import timed  # scripts/ is on sys.path when a script runs

from recsys.scoring.index import ServingTables, parse_index_spec
from recsys.scoring.topk import RowSets, topk


def specs(n_items: int, shortlists: list[int], nprobes: list[int], m: int, ef_search: int) -> list[str]:
    """The specs to compare, the exact engine first."""
    nlist = max(1, round(math.sqrt(n_items)))
    out = ["exact", "faiss:flat"]
    out += [f"faiss:ivf,nlist={nlist},nprobe={p}" for p in nprobes if p <= nlist]
    out += [f"faiss:hnsw,m={m},ef_search={ef_search}", "faiss:binary", "hamming:codes_only=true"]
    for s in shortlists:
        out += [f"faiss:binary,shortlist={s}", f"hamming:shortlist={s}"]
    return out


def synthetic(kind: str, n_items: int, n_queries: int, dim: int, seed: int = 0) -> ServingTables:
    """Float tables with structure, as trained embeddings have: ``lowrank`` Gaussian or a ``clustered`` mixture.

    Shapes:
        -> queries [n_queries, dim], items [n_items, dim]
    """
    g = torch.Generator().manual_seed(seed)
    if kind == "lowrank":
        basis = torch.randn(16, dim, generator=g)
        items = torch.randn(n_items, 16, generator=g) @ basis + 0.5 * torch.randn(n_items, dim, generator=g)
        queries = torch.randn(n_queries, 16, generator=g) @ basis + 0.5 * torch.randn(n_queries, dim, generator=g)
    else:
        centres = torch.randn(1000, dim, generator=g)
        items = centres[torch.randint(0, 1000, (n_items,), generator=g)] + 0.3 * torch.randn(n_items, dim, generator=g)
        queries = (centres[torch.randint(0, 1000, (n_queries,), generator=g)]
                   + 0.3 * torch.randn(n_queries, dim, generator=g))
    return ServingTables(queries.contiguous(), items.contiguous())


def p1(run_dir: str) -> tuple[ServingTables, RowSets]:
    """A trained run's serving tables and its training items per user (what ``recsys score`` excludes)."""
    from recsys.runs import Run

    run = Run.open(run_dir)
    tables = ServingTables.from_payload(run.payload, file=str(run.path))
    return tables, RowSets.from_pairs(*run.train_pairs(), len(tables.queries))


def recall(got: np.ndarray, want: np.ndarray) -> float:
    """Mean ``|got ∩ want| / |want|`` over rows (-1 entries are no item)."""
    per = []
    for g, w in zip(got, want):
        w = set(w[w >= 0].tolist())
        if w:
            per.append(len(w & set(g[g >= 0].tolist())) / len(w))
    return float(np.mean(per))


def bench(name: str, tables: ServingTables, exclude, all_specs: list[str], ks: list[int], repeats: int,
          chunk_size: int | None) -> dict:
    """Build every spec over ``tables`` and search each k, timed alternately with the exact engine (the reference).

    The machine is shared, so its speed drifts: each index's time is set against exact-engine runs interleaved
    with its own (best of ``repeats`` each), not against one exact measurement taken minutes earlier.
    """
    users, n = np.arange(len(tables.queries)), tables.items.shape[0]
    exact = parse_index_spec("exact").build(tables)

    def search(index, k):
        return topk(index.score_function(exclude=exclude), users, n, k, exclude, chunk_size)[0]

    reference = {k: search(exact, k) for k in ks}
    rows = []
    for spec in all_specs:
        t_build, index = timed(lambda s=spec: parse_index_spec(s).build(tables), 1)
        row = {"spec": spec, "build_s": t_build, "bytes_per_item": index.bytes_per_item()}
        for k in ks:
            t_exact, t_index, ids = float("inf"), float("inf"), None
            for _ in range(repeats):
                t_exact = min(t_exact, timed(lambda k=k: search(exact, k), 1)[0])
                t, ids = timed(lambda k=k, i=index: search(i, k), 1)
                t_index = min(t_index, t)
            row[f"search_s@{k}"], row[f"exact_s@{k}"] = t_index, t_exact
            row[f"speedup@{k}"] = t_exact / t_index
            row[f"recall@{k}"] = recall(ids, reference[k])
        rows.append(row)
        print(f"  {name}: {spec:<38} build {t_build:7.2f} s  "
              + "  ".join(f"@{k}: {row[f'search_s@{k}']:.3f} s ({row[f'speedup@{k}']:.2f}x), "
                          f"recall {row[f'recall@{k}']:.3f}" for k in ks), flush=True)
    return {"catalogue": name, "n_items": n, "n_queries": len(users), "dim": int(tables.items.shape[1]),
            "excluded_pairs": 0 if exclude is None else int(len(exclude.indices)), "rows": rows}


def markdown(result: dict, ks: list[int]) -> str:
    """One Markdown table of a catalogue's rows."""
    head = (f"**{result['catalogue']}**: {result['n_items']:,} items × {result['dim']} dims, "
            f"{result['n_queries']:,} queries, {result['excluded_pairs']:,} excluded pairs\n\n")
    cols = ["index", *[f"recall@{k}" for k in ks], *[f"speed@{k} vs exact" for k in ks],
            *[f"search@{k} (s)" for k in ks], "build (s)", "bytes/item"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" + "---:|" * (len(cols) - 1)]
    for r in result["rows"]:
        cells = [f"`{r['spec']}`", *[f"{r[f'recall@{k}']:.3f}" for k in ks],
                 *[f"{r[f'speedup@{k}']:.2f}x" for k in ks], *[f"{r[f'search_s@{k}']:.3f}" for k in ks],
                 f"{r['build_s']:.2f}", f"{r['bytes_per_item']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return head + "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", default=None, help="A trained run (P1): its tables, training items excluded.")
    ap.add_argument("--synthetic", nargs="*", default=["lowrank", "clustered"], choices=["lowrank", "clustered"])
    ap.add_argument("--items", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--ks", type=int, nargs="+", default=[20, 100])
    ap.add_argument("--nprobe", type=int, nargs="+", default=[4, 16, 64])
    ap.add_argument("--shortlist", type=int, nargs="+", default=[200, 1000])
    ap.add_argument("--hnsw-m", type=int, default=32)
    ap.add_argument("--ef-search", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--chunk-size", type=int, default=None, help="Users per chunk (the engine's budget when unset).")
    ap.add_argument("--out", default=None, help="JSON output (a Markdown copy is written beside it).")
    a = ap.parse_args()
    torch.set_num_threads(1)
    from recsys.scoring.faiss_index import import_faiss

    import_faiss().omp_set_num_threads(1)
    results = []
    started = time.perf_counter()
    if a.run_dir:
        tables, exclude = p1(a.run_dir)
        all_specs = specs(tables.items.shape[0], a.shortlist, a.nprobe, a.hnsw_m, a.ef_search)
        results.append(bench("P1, training items excluded", tables, exclude, all_specs, a.ks, a.repeats,
                             a.chunk_size))
        results.append(bench("P1, no exclusions", tables, None, all_specs, a.ks, a.repeats, a.chunk_size))
    for kind in a.synthetic:
        tables = synthetic(kind, a.items, a.queries, a.dim)
        all_specs = specs(a.items, a.shortlist, a.nprobe, a.hnsw_m, a.ef_search)
        results.append(bench(f"synthetic {kind}", tables, None, all_specs, a.ks, a.repeats, a.chunk_size))
    text = "\n\n".join(markdown(r, a.ks) for r in results)
    print(f"\none thread (torch and faiss), best of {a.repeats}; speed = exact engine time / index time at the same "
          f"k, timed alternately; total {time.perf_counter() - started:.0f} s\n")
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"threads": 1, "repeats": a.repeats, "ks": a.ks, "results": results,
                       "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}, f, indent=2)
        with open(os.path.splitext(a.out)[0] + ".md", "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
