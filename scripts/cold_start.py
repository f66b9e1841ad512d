"""Cold-item table: every model fitted through ``recsys fit`` under the library's cold-item protocol.

The protocol is ``--data.split.cold_items`` (:func:`recsys.data.splits.cold_item_rows`): a share of the items
(``--cold 0.1``, seeded) or the items matching a side-table condition (``--cold 'year>=2000'``) are held out
entirely; every interaction with them is in test, none in train or valid, and training never samples them as
negatives. Each fit writes ``cold_metrics.json`` (:func:`recsys.metrics.cold.cold_item_metrics`): recall@20 and
ndcg@20 on the cold items, ranked among the whole catalogue, with the exact expectation of a random ranking.

AlphaRec is reported in the paper's form (an item without training edges keeps only its mapped text vector) and,
as a separate row, with the inference-time imputation ``cold_neighbors=10`` applied to the *same* trained weights:
a zero-shot ``recsys fit --transfer-from`` of the run onto the same data with ``--trainer.max_epochs 0``.

Usage (P1, 10% of the items cold; the within-MovieLens release-year split)::

    OMP_NUM_THREADS=1 python scripts/cold_start.py --out runs/cold_p1
    OMP_NUM_THREADS=1 python scripts/cold_start.py --out runs/cold_year --cold 'year>=2000' --split temporal

Finished runs under ``--out`` are reused; ``--models`` picks a subset.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ML_SMALL = REPO.parent / "shared" / "datasets" / "ml-latest-small"
ENC = "--model.init_args.encoder.init_args."

#: Recformer fine-tuned straight from all-MiniLM-L6-v2 (no Recformer pre-training) on a CPU budget: 3 epochs, no
#: gradient accumulation and 30 warm-up steps (the official 8 and 100 would leave a 3-epoch run at a few optimizer
#: steps, below its peak lr), masked-mean pooling (MiniLM's own; its <s> states start collapsed).
RECFORMER_CPU = ["--trainer.max_epochs", "3", "--trainer.accumulate_grad_batches", "1",
                 "--model.init_args.lr_schedule.init_args.warmup_steps", "30",
                 "--model.init_args.encoder.init_args.pooling", "mean"]

#: name -> (config, extra fit options). Epoch caps keep the table inside a CPU session; they are printed with it.
MODELS = {
    "pop": ("pop", []),
    "mf_bpr": ("mf_bpr", ["--trainer.max_epochs", "100"]),
    "text_mean": ("text_mean", []),
    "linear_probe": ("linear_probe", ["--trainer.max_epochs", "15"]),
    "alpharec_mlp": ("alpharec_mlp", ["--trainer.max_epochs", "15", ENC + "hidden_dim", "1536"]),
    "sesa": ("sesa", ["--trainer.max_epochs", "40"]),
    "recformer": ("recformer", RECFORMER_CPU),
}


def fit(run: Path, config: str, data_args: list[str], extra: list[str]) -> None:
    """One ``recsys fit`` in a subprocess (its log beside the run); skipped when the run is finished."""
    if (run / "timing.json").exists():
        return
    cmd = [sys.executable, "-m", "recsys", "fit", "--config", config, "--run-dir", str(run), "--overwrite",
           *data_args, "--trainer.enable_progress_bar", "false", *extra]
    print("[cold] " + " ".join(cmd), flush=True)
    with open(str(run) + ".log", "w") as log:
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    if rc:
        raise SystemExit(f"[cold] {run.name} failed (rc {rc}); see {run}.log")


def row(name: str, run: Path, caps: list[str]) -> dict:
    """The table row of a finished run: cold metrics, overall test ndcg@20, epochs and fit seconds."""
    cold = json.loads((run / "cold_metrics.json").read_text())
    test = json.loads((run / "metrics.json").read_text())
    timing = json.loads((run / "timing.json").read_text())
    return {"model": name, **{k: cold[k] for k in ("recall@20", "ndcg@20", "random_recall@20", "random_ndcg@20",
                                                  "ndcg@20_vs_random", "users", "cold_items")},
            "test_ndcg@20": test.get("ndcg@20"), "epochs": timing.get("epochs"), "fit_s": timing.get("fit_s"),
            "caps": " ".join(c.replace(ENC, "") for c in caps) or "-"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/cold_p1")
    p.add_argument("--data", default=str(ML_SMALL))
    p.add_argument("--cold", default="0.1", help="--data.split.cold_items: a share, or e.g. 'year>=2000'.")
    p.add_argument("--split", default="random", help="--data.split.method for the warm interactions.")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--fit-args", nargs=argparse.REMAINDER, default=[], help="Extra options for every fit.")
    a = p.parse_args()
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data_args = ["--data.dataset", "ml-latest-small", "--data.path", a.data, "--data.split.method", a.split,
                 "--data.split.cold_items", a.cold]
    rows = []
    for name in a.models:
        config, caps = MODELS[name]
        fit(out / name, config, data_args, caps + a.fit_args)
        rows.append(row(name, out / name, caps))
        if name == "alpharec_mlp":
            # The same weights, edgeless items given their text neighbours' graph part (imputation).
            imp = out / "alpharec_mlp_imputed"
            fit(imp, config, data_args, caps + ["--transfer-from", str(out / name), "--trainer.max_epochs", "0",
                                                ENC + "cold_neighbors", "10"])
            rows.append(row("alpharec_mlp + imputation (cold_neighbors 10)", imp, ["same weights"]))
        r = rows[-1]
        print(f"[cold] {r['model']}: cold recall@20 {r['recall@20']:.4f}, ndcg@20 {r['ndcg@20']:.4f} "
              f"({r['ndcg@20_vs_random']:.1f}x random)", flush=True)
    first = rows[0]
    lines = [f"Cold items {a.cold!r} ({first['cold_items']} items held out entirely, {first['users']} users with a "
             f"cold test item; warm interactions split {a.split}); random ranking: recall@20 "
             f"{first['random_recall@20']:.4f}, ndcg@20 {first['random_ndcg@20']:.4f}", "",
             "| model | cold recall@20 | cold ndcg@20 | × random | all-test ndcg@20 | epochs | fit s | caps |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['recall@20']:.4f} | {r['ndcg@20']:.4f} | {r['ndcg@20_vs_random']:.1f} | "
                     f"{r['test_ndcg@20']:.4f} | {r['epochs']} | {r['fit_s']:.0f} | {r['caps']} |")
    table = "\n".join(lines)
    print("\n" + table)
    (out / "cold.md").write_text(table + "\n")
    (out / "cold.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
