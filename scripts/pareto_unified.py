"""Pareto study: Unified Embedding against per-feature tables and one hashed table, test ndcg@20 vs parameters.

Coleman et al., "Unified Embedding: Battle-Tested Feature Representations for Web-Scale ML Systems", NeurIPS 2023,
claim that multiplexing every feature into shared hashed tables beats one table per feature at equal parameter
budgets. This script trains the two-tower model of ``configs/unified_two_tower.yaml`` (sampled softmax) with each
layout at several budgets, through ``recsys fit`` (RecModel + RecDataModule + Lightning, early stopping on valid
ndcg@20), on

* ``p1``: ml-latest-small with the datamodule's default 80/10/10 random split; items: ID, genres, year bucket,
  tags (first 16); users: ID and an activity bucket (ml-latest-small has no user table);
* ``synthetic``: the built-in generator; items: ID, concepts, category, brand, year / price / popularity buckets;
  users: ID, age group, country, device, activity bucket.

Per-feature tables split a budget in one of two ways: ``per_feature`` by water-filling (small vocabularies kept
whole, the rest hashed into equal shares) and ``per_feature_proportional`` (every feature compressed alike).

A budget is a compression factor: embedding parameters = factor × the size of collision-free per-feature tables
(both towers compressed alike), so the three layouts of one budget have equal table parameters up to rounding (the
actual counts are reported; the output projection is the same for all layouts and reported separately).

Writes ``OUT/results.csv``, ``OUT/results.md`` (every point, plus per-feature collision rates) and ``OUT/pareto.png``
(test ndcg@20 against embedding parameters, one panel per dataset). Finished runs (``OUT/runs/...``) are reused, so
an interrupted study resumes where it stopped.

Usage::

    .venv/bin/python scripts/pareto_unified.py                                     # everything (long on one core)
    .venv/bin/python scripts/pareto_unified.py --datasets synthetic --compressions 0.05 0.2 --max-epochs 3
    .venv/bin/python scripts/pareto_unified.py --report-only                       # tables and plot from runs
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ML_SMALL = ROOT.parent / "shared" / "datasets" / "ml-latest-small"
CONFIG = ROOT / "configs" / "unified_two_tower.yaml"
LAYOUTS = ("unified", "per_feature", "per_feature_proportional", "single_hash")
LABELS = {"unified": "Unified Embedding", "per_feature": "per-feature tables (water-filling)",
          "per_feature_proportional": "per-feature tables (proportional)", "single_hash": "single hashed table"}

P1_ITEMS = [{"name": "item_id", "column": "@id", "kind": "categorical"},
            {"name": "genres", "kind": "multi"},
            {"name": "year", "kind": "numeric", "buckets": 10},
            {"name": "tags", "kind": "multi", "max_values": 16}]
P1_USERS = [{"name": "user_id", "column": "@id", "kind": "categorical"},
            {"name": "activity", "column": "@count", "kind": "numeric", "buckets": 10}]


def dataset_args(name: str) -> list[str]:
    """``recsys fit`` overrides selecting a dataset and its features (None features: the encoders' defaults)."""
    enc = "--model.init_args.encoder.init_args."
    if name == "p1":
        if not (ML_SMALL / "ratings.csv").exists():
            raise SystemExit(f"P1 needs ml-latest-small at {ML_SMALL}")
        return ["--data.dataset", "ml-latest-small", "--data.path", str(ML_SMALL),
                enc + "item_features", json.dumps(P1_ITEMS), enc + "user_features", json.dumps(P1_USERS)]
    if name == "synthetic":
        return ["--data.dataset", "synthetic"]
    raise SystemExit(f"unknown dataset {name!r} (p1, synthetic)")


def run_one(run_dir: Path, dataset: str, layout: str, compression: float, a) -> None:
    """Train and test one point through ``recsys fit`` (skipped when the run already finished)."""
    from recsys.cli import main
    from recsys.runs import Run

    if Run(run_dir).status == "finished":
        return

    enc = "--model.init_args.encoder.init_args."
    argv = ["fit", "--config", str(CONFIG), "--run-dir", str(run_dir), "--overwrite", "--seed", str(a.seed),
            *dataset_args(dataset), enc + "compression", str(compression),
            enc + "dim_per_table", str(a.dim_per_table), enc + "num_chunks", str(a.num_chunks),
            enc + "out_dim", str(a.out_dim),
            "--data.loader.num_negatives", str(a.num_negatives), "--trainer.max_epochs", str(a.max_epochs),
            "--early_stopping.patience", str(a.patience), "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false", "--trainer.logger", "true"]
    argv += {"unified": [enc + "layout", "recsys.encoders.UnifiedTables", enc + "layout.num_tables",
                         str(a.num_tables)],
             "per_feature": [enc + "layout", "recsys.encoders.PerFeatureTables"],
             "per_feature_proportional": [enc + "layout", "recsys.encoders.PerFeatureTables",
                                          enc + "layout.allocation", "proportional"],
             "single_hash": [enc + "layout", "recsys.encoders.SingleHashTable"]}[layout]
    if a.lr is not None:
        argv += ["--model.init_args.optimizer.init_args.lr", str(a.lr)]
    t = time.perf_counter()
    if main(argv) != 0:
        raise SystemExit(f"recsys fit failed for {run_dir}")
    print(f"[pareto] {dataset} {layout} x{compression}: {time.perf_counter() - t:.0f} s", flush=True)


def collect(run_dir: Path, dataset: str, layout: str, compression: float) -> dict:
    """One result row: metrics, parameter counts and collision rates of a finished run."""
    from recsys.runs import Run

    run = Run.open(run_dir)
    enc = run.recommender().encoder
    test, valid, timing = run.metrics(), run.metrics("valid"), run.read_json("timing.json")
    stats = enc.collision_stats()
    item_id = stats["item"]["item_id"]
    total = sum(p.numel() for p in enc.parameters())
    return {"dataset": dataset, "layout": layout, "compression": compression,
            "embedding_params": enc.embedding_params, "total_params": total,
            "valid_ndcg@20": valid["ndcg@20"], "test_ndcg@20": test["ndcg@20"], "test_recall@20": test["recall@20"],
            "epochs": timing["epochs"], "fit_s": round(timing["fit_s"], 1),
            "item_id_collided": item_id["collided"], "item_id_identical": item_id["identical"],
            "collisions": json.dumps({side: {k: round(v["collided"], 3) for k, v in s.items()}
                                      for side, s in stats.items()}),
            "run_dir": str(run_dir)}


def write_report(rows: list[dict], out: Path) -> None:
    """``results.csv``, ``results.md`` and ``pareto.png`` from the collected rows."""
    if not rows:
        return
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    lines = ["# Unified Embedding Pareto study", "",
             "Two towers (sampled softmax); test ndcg@20 of the best valid-ndcg@20 checkpoint. `emb params`: lookup "
             "tables of both towers; `total`: plus the output projections (identical across layouts).", ""]
    for ds in dict.fromkeys(r["dataset"] for r in rows):
        lines += [f"## {ds}", "", "| compression | layout | emb params | total | valid ndcg@20 | test ndcg@20 | "
                  "test recall@20 | epochs | item-ID collided | item-ID identical |",
                  "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in sorted((r for r in rows if r["dataset"] == ds), key=lambda r: (r["compression"], r["layout"])):
            lines.append(f"| {r['compression']:g} | {r['layout']} | {r['embedding_params']:,} | {r['total_params']:,} "
                         f"| {r['valid_ndcg@20']:.4f} | {r['test_ndcg@20']:.4f} | {r['test_recall@20']:.4f} | "
                         f"{r['epochs']} | {r['item_id_collided']:.3f} | {r['item_id_identical']:.3f} |")
        lines += ["", "Unified Embedding minus the other layouts (test ndcg@20) at equal budgets:", ""]
        for c in sorted({r["compression"] for r in rows if r["dataset"] == ds}):
            by = {r["layout"]: r for r in rows if r["dataset"] == ds and r["compression"] == c}
            if "unified" in by:
                diffs = [f"{other} {by['unified']['test_ndcg@20'] - by[other]['test_ndcg@20']:+.4f}"
                         for other in LAYOUTS[1:] if other in by]
                lines.append(f"- compression {c:g}: " + ", ".join(diffs))
        lines += ["", "Per-feature collision rates (share of distinct values sharing a bucket with another value):",
                  ""]
        for r in sorted((r for r in rows if r["dataset"] == ds), key=lambda r: (r["compression"], r["layout"])):
            lines.append(f"- {r['compression']:g} {r['layout']}: `{r['collisions']}`")
        lines.append("")
    (out / "results.md").write_text("\n".join(lines) + "\n")

    from recsys.plots import plot_tradeoff

    panels = {ds: {LABELS[layout]: [(r["embedding_params"], r["test_ndcg@20"]) for r in rows
                                    if r["dataset"] == ds and r["layout"] == layout] for layout in LAYOUTS}
              for ds in dict.fromkeys(r["dataset"] for r in rows)}
    plot_tradeoff(panels, out / "pareto.png", xlabel="embedding parameters (both towers)", ylabel="test ndcg@20")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "pareto_unified")
    p.add_argument("--datasets", nargs="+", default=["p1", "synthetic"])
    p.add_argument("--layouts", nargs="+", default=list(LAYOUTS), choices=LAYOUTS)
    p.add_argument("--compressions", nargs="+", type=float, default=[1 / 64, 1 / 16, 1 / 4, 1.0],
                   help="budgets as fractions of collision-free per-feature tables")
    p.add_argument("--dim-per-table", type=int, default=32)
    p.add_argument("--num-chunks", type=int, default=2)
    p.add_argument("--num-tables", type=int, default=2)
    p.add_argument("--out-dim", type=int, default=64)
    p.add_argument("--num-negatives", type=int, default=32)
    p.add_argument("--lr", type=float, default=None, help="Adam learning rate (default: the config's)")
    p.add_argument("--max-epochs", type=int, default=20)
    p.add_argument("--patience", type=int, default=3)
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--threads", type=int, default=1, help="torch threads (more than free cores only slows down)")
    p.add_argument("--report-only", action="store_true", help="only collect finished runs and write the report")
    a = p.parse_args(argv)

    import torch

    from recsys.runs import Run

    torch.set_num_threads(a.threads)
    a.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for ds in a.datasets:
        for c in sorted(a.compressions):
            for layout in a.layouts:
                run_dir = a.out / "runs" / ds / f"{layout}-x{c:.4g}"
                if not a.report_only:
                    run_one(run_dir, ds, layout, c, a)
                if Run(run_dir).status == "finished":
                    rows.append(collect(run_dir, ds, layout, c))
                    write_report(rows, a.out)  # after every point, so a long study can be read while it runs
    write_report(rows, a.out)
    print(f"[pareto] {len(rows)} points; see {a.out / 'results.md'} and {a.out / 'pareto.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
