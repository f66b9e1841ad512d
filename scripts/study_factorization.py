"""Every factorization module on P1: quality against bytes per item (a Pareto plot), and scoring speed at 200k items.

One run per module, trained with ``recsys fit`` (the packaged config, P1 data, ``--seed``) unless the run directory
under ``--runs`` already holds a finished run; each run is then served through the item indexes a user would pick
(``recsys evaluate --index SPEC``: the same :func:`recsys.metrics.evaluate.evaluate` call) and every point gets

* ``ndcg@20`` on P1's test split (ml-latest-small, random 80/10/10 per user, seed 2026);
* bytes per item: what the index holds per item (:meth:`ItemIndex.bytes_per_item`: packed codes, float rows kept
  for a re-rank, a faiss index's serialized size), shared codebooks and bases not counted;
* scoring speed on a 200k-item synthetic catalogue: the run's own serving tables with their item rows (float rows,
  factors, codes alike) resampled to 200k and the float rows jittered by 1% of their spread, the index built on it,
  and ``index.search`` timed for ``--queries`` of the run's users (P1 has 610), top 100, best of ``--repeats``, one
  thread (the target machine is one core). The ratio is to float MF-128 ``exact`` on a catalogue of the same size.

The modules: MF trained natively at 16-128 dims (float32); Matryoshka (principal-axes prefixes of one MF-128 and
coarse-to-fine); product and residual quantization fitted after training on MF-128, with and without a float
re-rank; product quantization trained jointly; low-rank MF truncated to several ranks; Maestro's group lasso
(discovered rank); DSFormer dense × sparse tables; binary codes (the width's own 128 bits and a 32-bit learned
projection; Hamming alone, shortlist + float re-rank, faiss's binary index); latent quantization (16 and 4 levels);
CoReS stationary simplex; BT² (influence loss, and the basis transformation fitted between independently trained
MF-64 and MF-128) new→new and new→old. Residual quantization at M=16 is left out: at M=8 building it at 200k items
took about 8 minutes here. Writes ``study.md``, ``study.json`` and ``pareto.png`` to ``--out``::

    .venv/bin/python scripts/study_factorization.py --runs runs/factorization --out docs/factorization
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from recsys.metrics.evaluate import evaluate
from recsys.recommender import build_index
from recsys.runs import Run
from recsys.scoring.index import ExactSpec, ServingTables, parse_index_spec

METRIC = "ndcg@20"
P1 = ["--data.dataset", "ml-latest-small", "--data.path", "../shared/datasets/ml-latest-small"]
ENC = "--model.init_args.encoder.init_args."


@dataclass
class Point:
    """One served setting of a run: a series of the plot, a label, the index spec, or a gallery run (new→old)."""

    series: str
    setting: str
    index: str = "exact"
    gallery: str | None = None

    @property
    def label(self) -> str:
        """What the table's index column says: the spec, or the gallery run scored against."""
        return f"gallery {self.gallery}" if self.gallery else self.index


@dataclass
class Method:
    """A run to train (``recsys fit --config CONFIG ARGS``) and the points it is served at."""

    run: str
    config: str
    args: list[str]
    points: list[Point]
    after: str | None = None  # a run this one needs first (BT²'s old model)
    fit: str = "cli"  # "cli": recsys fit; "basis": BT²'s basis transformation of finished runs (Python API)


def methods() -> list[Method]:
    """The study's runs, each with the indexes it is served through (every point of the plot and the table)."""
    mf = [Method(f"mf{d}", "mf_bpr", [ENC + "dim", str(d)], [Point("MF float32 (native dims)", f"dim {d}")])
          for d in (16, 32, 64)]
    mf128 = Method("mf128", "mf_bpr", [], [Point("MF float32 (native dims)", "dim 128")] + [
        Point("PQ after training (ADC)", f"M={m}", f"pq:M={m},K=256") for m in (8, 16, 32)] + [
        Point("PQ after training + float re-rank 200", "M=8", "pq:M=8,K=256,rerank=200"),
        Point("RQ after training (ADC)", "M=8", "rq:M=8,K=256"),
        Point("Sign bits of plain MF (Hamming only)", "128 bits", "hamming:codes_only=true")])
    return mf + [mf128,
        Method("matryoshka", "mf_matryoshka", [],
               [Point("Matryoshka MF-128 (principal-axes prefixes)", f"prefix {d}", f"prefix:dim={d}")
                for d in (16, 32, 64, 128)]
               + [Point("Matryoshka coarse-to-fine", "16 → 128, shortlist 200", "prefix:coarse=16,shortlist=200")]),
        Method("pq_joint", "mf_pq", [], [Point("PQ trained jointly (MF-64, stored codes)", "M=8, K=256",
                                               "pq:stored=true")]),
        Method("lowrank", "mf_lowrank", [],
               [Point("Low-rank MF (ordered dropout, truncated)", f"rank {r}", f"lowrank:rank={r}")
                for r in (4, 8, 16, 32, 64)]),
        Method("maestro", "mf_lowrank", [ENC + "group_lasso", "1.0e-3"],
               [Point("Maestro (group lasso, discovered rank)", "discovered rank", "lowrank")]),
        Method("dsformer", "mf_dsformer", [], [Point("DSFormer dense × sparse (served as float)", "rank 64 + 16 nnz",
                                                     "exact")]),
        Method("binary", "mf_binary", [], [
            Point("Binary codes 128 bits: Hamming only", "128 bits", "hamming:codes_only=true"),
            Point("Binary codes: Hamming shortlist 200 + float re-rank", "128 bits", "hamming:shortlist=200"),
            Point("Binary codes 128 bits: faiss binary index", "faiss:binary", "faiss:binary"),
            Point("Binary MF float32 (the re-ranker alone)", "float 128", "exact")]),
        Method("binary32", "mf_binary", [ENC + "bits", "32"], [
            Point("Binary codes 32 bits (learned projection): Hamming only", "32 bits", "hamming:codes_only=true"),
            Point("Binary codes: Hamming shortlist 200 + float re-rank", "32 bits", "hamming:shortlist=200")]),
        Method("quant16", "mf_quantized", [], [Point("Latent quantization (per-dim codebooks)", "16 levels",
                                                     "quantized")]),
        Method("quant4", "mf_quantized", [ENC + "levels", "4"],
               [Point("Latent quantization (per-dim codebooks)", "4 levels", "quantized")]),
        Method("simplex", "mf_simplex", [], [Point("CoReS stationary simplex MF-128", "float 128", "exact")]),
        Method("bt2", "mf_compatible", [ENC + "old_run", "{runs}/mf64"], after="mf64", points=[
            Point("BT² influence loss MF-128", "new→new", "exact"),
            Point("BT² influence loss MF-128 → old MF-64 gallery", "new→old", gallery="mf64")]),
        Method("bt2_basis", "", [], after="mf128", fit="basis", points=[
            Point("BT² basis transformation (MF-128 → MF-64)", "new→new", "exact"),
            Point("BT² basis transformation → old MF-64 gallery", "new→old", gallery="mf64")]),
    ]


def train(m: Method, runs: Path, seed: int) -> None:
    """Train ``m``'s run unless it is finished already."""
    path = runs / m.run
    if (path / "model.pt").exists():
        return
    t = time.perf_counter()
    if m.fit == "basis":
        from recsys.upgrades import fit_basis_run

        fit_basis_run(runs / "mf128", runs / "mf64", path)
    else:
        recsys = str(Path(sys.executable).with_name("recsys"))
        args = [a.replace("{runs}", str(runs)) for a in m.args]
        cmd = [recsys, "fit", "--config", m.config, *P1, "--seed", str(seed), "--run-dir", str(path), *args]
        print("$", " ".join(cmd), flush=True)
        done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if done.returncode:
            raise SystemExit(f"fit of {m.run} failed: {done.stderr.strip().splitlines()[-1]}")
    print(f"  {m.run}: trained in {time.perf_counter() - t:.0f} s", flush=True)


def resampled(tables: ServingTables, n: int, seed: int) -> ServingTables:
    """``tables`` with their item rows drawn (with replacement) to ``n`` rows, float rows jittered by 1% of spread.

    Shapes:
        items: [N, D] -> [n, D] (and item_factors, codes, pq_codes alike)
    """
    g = torch.Generator().manual_seed(seed)
    rows = torch.randint(tables.items.shape[0], (n,), generator=g)
    out = {}
    for name in ("items", "item_factors", "codes", "pq_codes"):
        v = getattr(tables, name)
        if v is None:
            continue
        v = v[rows]
        if v.is_floating_point():
            v = v + 0.01 * v.std() * torch.randn(v.shape, generator=g, dtype=v.dtype)
        out[name] = v
    return dataclasses.replace(tables, **out)


def timed_search(index, queries: torch.Tensor, k: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        index.search(queries, k)
        best = min(best, time.perf_counter() - t)
    return best


def serve(m: Method, runs: Path, a, done: dict, log: Path) -> list[dict]:
    """Every point of ``m``: quality on P1, bytes per item, and search time on the 200k-item catalogue.

    Points in ``done`` (keyed by run and index, read from ``log``) are reused; each new one is appended to ``log``.
    """
    if all((m.run, p.label) in done for p in m.points):  # nothing to serve: do not load the run
        return [done[(m.run, p.label)] for p in m.points]
    run = Run.open(runs / m.run)
    data = run.data()
    model = run.recommender(data)
    tables = ServingTables.from_payload(run.payload, file=str(run.path))
    big = resampled(tables, a.items, a.seed)
    rows = []
    for p in m.points:
        if (m.run, p.label) in done:
            rows.append(done[(m.run, p.label)])
            continue
        spec = parse_index_spec(p.index)
        if p.gallery:
            gallery = Run.open(runs / p.gallery).item_table_for(data.item_vocab)
            quality = evaluate(model, data, "test", (20,), gallery=gallery)[METRIC]
            rows.append({"run": m.run, "series": p.series, "setting": p.setting, "index": p.label,
                         "bytes_per_item": 4.0 * gallery.shape[1], METRIC: quality})
            _append(log, rows[-1])
            continue
        quality = evaluate(model, data, "test", (20,), index=None if isinstance(spec, ExactSpec) else spec)[METRIC]
        small = build_index(spec, tables)
        row = {"run": m.run, "series": p.series, "setting": p.setting, "index": p.index,
               "bytes_per_item": float(small.bytes_per_item()), METRIC: quality}
        t = time.perf_counter()
        index = build_index(spec, big)
        row["build_s_200k"] = time.perf_counter() - t
        queries = index.queries[: a.queries]
        row["search_s_200k"] = timed_search(index, queries, 100, a.repeats)
        row["queries"] = len(queries)
        rows.append(row)
        _append(log, row)
        print(f"  {m.run:10s} {p.index:32s} {row['bytes_per_item']:8.1f} B  {quality:.4f}  "
              f"{row['search_s_200k']:.3f} s / {len(queries)} queries", flush=True)
    return rows


def _append(log: Path, row: dict) -> None:
    with open(log, "a") as f:
        f.write(json.dumps(row) + "\n")


def pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both bytes (fewer) and quality (higher), by increasing bytes."""
    front, best = [], -1.0
    for b, q in sorted(points, key=lambda p: (p[0], -p[1])):
        if q > best:
            front.append((b, q))
            best = q
    return front


def plot(rows: list[dict], out: Path) -> None:
    from recsys.plots import plot_tradeoff

    series: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        series.setdefault(r["series"], []).append((r["bytes_per_item"], r[METRIC]))
    series["Pareto front"] = pareto([(r["bytes_per_item"], r[METRIC]) for r in rows])
    plot_tradeoff({"P1 (ml-latest-small, test): quality vs bytes per item": series}, out / "pareto.png",
                  xlabel="bytes per item held by the index (log scale)", ylabel=METRIC, log_base=2,
                  panel_size=(12, 5.5), legend_fontsize=7, front="Pareto front", legend_outside=True)


def markdown(rows: list[dict], a) -> str:
    base = next((r for r in rows if r["run"] == "mf128" and r["index"] == "exact"), None)
    n_queries = max((r.get("queries", 0) for r in rows), default=0)
    lines = [f"# Factorization modules on P1: quality, bytes per item, speed on {a.items:,} items", "",
             "P1: ml-latest-small, random 80/10/10 per user (seed 2026), test split; one training seed "
             f"({a.seed}). Speed: `index.search` of {n_queries} users, top 100, one thread, best of {a.repeats}, "
             f"on the run's tables resampled to {a.items:,} items; ratio = float MF-128 exact time / this time.", "",
             f"| module | setting | index | bytes/item | {METRIC} | search s (200k) | speed vs float MF-128 |",
             "|---|---|---|---:|---:|---:|---:|"]
    for r in rows:
        t = r.get("search_s_200k")
        ratio = "" if t is None or base is None else f"{base['search_s_200k'] / t:.2f}×"
        lines.append(f"| {r['series']} | {r['setting']} | `{r['index']}` | {r['bytes_per_item']:g} | "
                     f"{r[METRIC]:.4f} | {'' if t is None else f'{t:.3f}'} | {ratio} |")
    front = pareto([(r["bytes_per_item"], r[METRIC]) for r in rows])
    lines += ["", "Pareto front (bytes/item, ndcg@20): " + ", ".join(f"({b:g}, {q:.4f})" for b, q in front)]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="runs/factorization", help="Run directories (trained here when missing).")
    ap.add_argument("--out", default="runs/factorization/study")
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--items", type=int, default=200_000, help="Synthetic catalogue size for the speed column.")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--only", nargs="+", default=None, help="Run names to serve (all when omitted).")
    ap.add_argument("--train-only", action="store_true", help="Train the missing runs and stop.")
    ap.add_argument("--report-only", action="store_true",
                    help="Redraw study.md and pareto.png from OUT/points.jsonl (no training, no serving).")
    a = ap.parse_args()
    runs, out = Path(a.runs).resolve(), Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    plan = [m for m in methods() if a.only is None or m.run in a.only]
    if a.report_only:
        if not (out / "points.jsonl").exists():
            raise SystemExit(f"{out / 'points.jsonl'} does not exist: run the study without --report-only first")
        report([json.loads(line) for line in (out / "points.jsonl").read_text().splitlines()], out, a)
        return
    by_name = {m.run: m for m in methods()}
    for m in plan:  # one heavy process at a time: each fit finishes before the next starts, serving after all
        if m.after:
            train(by_name[m.after], runs, a.seed)
        train(m, runs, a.seed)
    if a.train_only:
        return
    torch.set_num_threads(1)
    try:
        import faiss

        faiss.omp_set_num_threads(1)
    except ImportError:
        pass
    # Finished points survive an interrupted study (one JSON line each): a rerun serves only the rest.
    log = out / "points.jsonl"
    done = {}
    if log.exists():
        for line in log.read_text().splitlines():
            r = json.loads(line)
            done[(r["run"], r["index"])] = r
    report([r for m in plan for r in serve(m, runs, a, done, log)], out, a)


def report(rows: list[dict], out: Path, a) -> None:
    (out / "study.json").write_text(json.dumps(rows, indent=2) + "\n")
    plot(rows, out)
    md = markdown(rows, a)
    (out / "study.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
