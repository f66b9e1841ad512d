"""Run a list of configs on one dataset through `recsys fit` and print one comparison table.

Columns: test metrics, fit time, mean training time per epoch, test evaluation time, peak RSS, and a paired t-test
(and Wilcoxon) p-value on per-user ndcg@20 against the first config. Each config runs in its own process, so peak
memory is per model. Writes the table as Markdown and JSON.

    python scripts/benchmark.py --dataset ml-latest-small --path ../shared/datasets/ml-latest-small \
        --configs configs/mf_bpr.yaml configs/als.yaml configs/bpr_implicit.yaml configs/itemknn.yaml configs/ease.yaml
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIGS = ["mf_bpr", "als", "bpr_implicit", "itemknn", "ease"]
METRICS = ["recall@10", "recall@20", "ndcg@10", "ndcg@20", "mrr@10", "mrr@20", "hit@10", "hit@20",
           "precision@10", "precision@20"]


def run_config(config: Path, out: Path, args, extra: list[str]) -> dict:
    run_dir = out / config.stem
    from recsys.runs import Run

    if args.reuse and Run(run_dir).status == "finished":
        return _collect(config, run_dir, None)
    cmd = [sys.executable, "-m", "recsys.cli", "fit", "--config", str(config), "--run-dir", str(run_dir), "--overwrite",
           "--data.dataset", args.dataset, "--trainer.enable_progress_bar", "false",
           "--trainer.enable_model_summary", "false", *extra]
    if args.path:
        cmd += ["--data.path", args.path]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
        return {"config": config.stem, "error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"}
    return _collect(config, run_dir, wall)


def _collect(config: Path, run_dir: Path, wall: float | None) -> dict:
    from recsys.runs import Run

    run = Run.open(run_dir)
    metrics, timing = run.metrics(), run.read_json("timing.json")
    epochs = timing.get("train_epoch_s") or []
    return {"config": config.stem, "run_dir": str(run_dir), **metrics, "fit_s": timing["fit_s"],
            "epoch_s": float(np.mean(epochs)) if epochs else None, "epochs": len(epochs) or None,
            "eval_s": timing["test_eval_s"], "peak_rss_mib": timing["peak_rss_mib"], "process_s": wall}


def run_recbole(model: str, protocol: str = "p1") -> dict:
    """RecBole 1.2.1 on the same protocol (``../shared/peers``), for side-by-side fit and per-epoch times."""
    import ast
    import re

    script = REPO.parent / "shared" / "peers" / "recbole_p1.sh"
    if not script.exists():
        return {"config": f"recbole:{model}", "error": "peer script not found"}
    t = time.perf_counter()
    import tempfile

    # RecBole writes log/ and log_tensorboard/ into its working directory: keep them out of the repository.
    proc = subprocess.run([str(script), model, "--protocol", protocol], capture_output=True, text=True,
                          cwd=tempfile.mkdtemp(prefix="recbole-"))
    wall = time.perf_counter() - t
    out = proc.stdout + proc.stderr
    epochs = [float(x) for x in re.findall(r"training \[time: ([\d.]+)s", out)]
    m = re.search(r"RESULT \S+ (\{.*\}) fit_secs ([\d.]+)", out)
    if not m:
        return {"config": f"recbole:{model}", "error": (out.strip().splitlines() or ["failed"])[-1]}
    metrics = {k.lower(): float(v) for k, v in ast.literal_eval(m.group(1)).items()}
    return {"config": f"recbole:{model}", **metrics, "fit_s": float(m.group(2)),
            "epoch_s": float(sum(epochs) / len(epochs)) if epochs else None, "epochs": len(epochs) or None,
            "process_s": wall}


def add_significance(rows: list[dict]) -> None:
    from recsys.metrics.significance import paired_test
    from recsys.runs import Run

    ok = [r for r in rows if "error" not in r and "run_dir" in r]
    if len(ok) < 2:
        return

    ref = pq.read_table(Run(ok[0]["run_dir"]).artifact("per_user_test.parquet")).to_pandas().set_index("user")
    for r in ok[1:]:
        other = pq.read_table(Run(r["run_dir"]).artifact("per_user_test.parquet")).to_pandas().set_index("user")
        common = ref.index.intersection(other.index)
        a, b = other.loc[common, "ndcg@20"].to_numpy(), ref.loc[common, "ndcg@20"].to_numpy()
        r["p_ttest_vs_first"] = paired_test(a, b, "ttest")["p_value"]
        r["p_wilcoxon_vs_first"] = paired_test(a, b, "wilcoxon")["p_value"]


def to_markdown(rows: list[dict], title: str) -> str:
    cols = ["config", *METRICS, "fit_s", "epoch_s", "epochs", "eval_s", "peak_rss_mib", "p_ttest_vs_first"]
    lines = [f"### {title}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c)
            if v is None:
                cells.append("–" if "error" not in r or c == "config" else r["error"][:40])
            elif isinstance(v, float):
                cells.append(f"{v:.3g}" if c.startswith("p_") else f"{v:.4f}" if "@" in c else f"{v:.2f}")
            else:
                cells.append(str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="ml-latest-small")
    p.add_argument("--path", default=None)
    p.add_argument("--configs", nargs="+", default=[str(REPO / "configs" / f"{c}.yaml") for c in DEFAULT_CONFIGS])
    p.add_argument("--out", default="runs/benchmark")
    p.add_argument("--reuse", action="store_true", help="Reuse finished runs found in --out instead of refitting.")
    p.add_argument("--recbole", nargs="*", default=[], help="RecBole models to run side by side (e.g. BPR).")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="Options passed to every `recsys fit`.")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for c in args.configs:
        print(f"[benchmark] {c} ...", flush=True)
        rows.append(run_config(Path(c), out, args, args.extra))
        r = rows[-1]
        print(f"[benchmark]   ndcg@20={r.get('ndcg@20', float('nan')):.4f} fit={r.get('fit_s', float('nan')):.1f}s",
              flush=True)
    for m in args.recbole:
        print(f"[benchmark] recbole {m} ...", flush=True)
        rows.append(run_recbole(m))
    add_significance(rows)
    md = to_markdown(rows, f"{args.dataset} (p-values: paired t-test on per-user ndcg@20 vs {rows[0]['config']})")
    print(md)
    (out / "benchmark.md").write_text(md + "\n")
    (out / "benchmark.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
