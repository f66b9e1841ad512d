"""Fold-in on P1: users held out of training entirely, scored from their histories by ``recsys score --histories``.

Picks 50 users of ml-latest-small (seeded), writes a copy of the release without them, fits each model on it
through the real CLI (``recsys fit``, P1's preprocessing and random 80/10/10 split), then for each held-out user
gives the earliest 80% of their ratings (by time) as ``--histories`` and measures ndcg@20 / recall@20 of the latest
20% with the shared metrics module (:func:`recsys.metrics.ranking_metrics`; a held-out item that no training user
rated stays relevant, so no model can reach it). MostPopular is the reference (its list ignores the history).

Epoch caps keep the run short on CPU (printed with the table): ``mf_bpr`` at 100 epochs (early stopping ends it
near 80 on P1 anyway) and ``sasrec`` at 40 (about 10 s an epoch on one slow core; its config allows 400); the
closed-form models run their configs unchanged. Finished runs under ``--out`` are reused::

    OMP_NUM_THREADS=1 .venv/bin/python scripts/fold_in_p1.py --data ../shared/datasets/ml-latest-small \\
        --out runs/fold_in_p1
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recsys.metrics import ranking_metrics
from recsys.runs import Run

#: Recformer fine-tuned straight from all-MiniLM-L6-v2 (no Recformer pre-training) on a CPU budget: 3 epochs, no
#: gradient accumulation and 30 warm-up steps (the official 8 and 100 would leave a 3-epoch run at a few optimizer
#: steps, below its peak lr), masked-mean pooling (MiniLM's own; its <s> states start collapsed).
RECFORMER_CPU = ["--trainer.max_epochs", "3", "--trainer.accumulate_grad_batches", "1",
                 "--model.init_args.lr_schedule.init_args.warmup_steps", "30",
                 "--model.init_args.encoder.init_args.pooling", "mean"]

#: (config, extra fit options): the epoch caps are the only changes to the packaged configs.
MODELS = (
    ("pop", []),
    ("mf_bpr", ["--trainer.max_epochs", "100"]),
    ("als", []),
    ("ease", []),
    ("itemknn", []),
    ("sasrec", ["--trainer.max_epochs", "40"]),
    # Text models: a new user is the history's text (TextHistoryMean, the linear probe, AlphaRec: the mapped mean
    # LM vector of the history, AlphaRec then propagated; Recformer: the history's item sentences encoded).
    ("text_mean", []),
    ("linear_probe", ["--trainer.max_epochs", "15"]),
    ("alpharec_mlp", ["--trainer.max_epochs", "15", "--model.init_args.encoder.init_args.hidden_dim", "1536"]),
    ("recformer", RECFORMER_CPU),
)


def held_out_copy(data: Path, out: Path, n_users: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write the release without ``n_users`` random users to ``out``; their ratings, split 80/20 by time.

    Returns:
        (histories: the earliest 80% of each held-out user's ratings, truth: the latest 20%)
    """
    ratings = pd.read_csv(data / "ratings.csv")
    rng = np.random.default_rng(seed)
    users = rng.choice(np.sort(ratings["userId"].unique()), size=n_users, replace=False)
    out.mkdir(parents=True, exist_ok=True)
    ratings[~ratings["userId"].isin(users)].to_csv(out / "ratings.csv", index=False)
    for name in ("movies.csv", "tags.csv", "links.csv"):
        if (data / name).exists():
            shutil.copy(data / name, out / name)
    held = ratings[ratings["userId"].isin(users)].sort_values(["userId", "timestamp", "movieId"], kind="stable")
    pos = held.groupby("userId").cumcount()
    n = held.groupby("userId")["movieId"].transform("size")
    first = pos < np.ceil(0.8 * n)
    rename = {"userId": "user", "movieId": "item"}
    return (held[first].rename(columns=rename)[["user", "item", "timestamp"]],
            held[~first].rename(columns=rename)[["user", "item"]])


def cli(*args: str) -> str:
    """Run ``recsys ARGS`` in a fresh process (the real CLI) and return its stdout; fail loudly."""
    proc = subprocess.run([sys.executable, "-m", "recsys", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"recsys {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return proc.stdout


def metrics_of(top: pd.DataFrame, truth: pd.DataFrame, users: np.ndarray, catalogue: np.ndarray) -> dict:
    """ndcg@20 / recall@20 of the written lists against the held-out 20%, over a catalogue of every rated item."""
    col = {v: i for i, v in enumerate(catalogue)}
    row = {u: i for i, u in enumerate(users)}
    ranked = np.full((len(users), 20), -1, dtype=np.int64)
    for u, g in top.sort_values(["user", "rank"]).groupby("user"):
        ranked[row[u], :len(g)] = [col[i] for i in g["item"].to_numpy()[:20]]
    relevant = sp.csr_matrix((np.ones(len(truth)), ([row[u] for u in truth["user"]], [col[i] for i in truth["item"]])),
                             shape=(len(users), len(catalogue)))
    m = ranking_metrics(ranked, relevant, ks=(20,))
    return {"ndcg@20": m["ndcg@20"], "recall@20": m["recall@20"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="../shared/datasets/ml-latest-small", help="The ml-latest-small folder.")
    p.add_argument("--out", default="runs/fold_in_p1", help="Working folder: data copy, runs, lists, results.")
    p.add_argument("--users", type=int, default=50, help="Users held out of training.")
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--models", nargs="+", default=[m for m, _ in MODELS], choices=[m for m, _ in MODELS])
    a = p.parse_args()
    out = Path(a.out)
    histories, truth = held_out_copy(Path(a.data), out / "data", a.users, a.seed)
    hist_file = out / "histories.csv"
    histories.to_csv(hist_file, index=False)
    users = np.sort(histories["user"].unique())
    catalogue = np.sort(pd.read_csv(Path(a.data) / "ratings.csv", usecols=["movieId"])["movieId"].unique())
    print(f"held out {len(users)} users (seed {a.seed}): {len(histories)} history ratings given, {len(truth)} "
          f"held-out ratings to find")
    results = []
    for config, extra in MODELS:
        if config not in a.models:
            continue
        run = out / "runs" / config
        if Run(run).status != "finished":
            cli("fit", "--config", config, "--run-dir", str(run), "--overwrite", "--data.dataset", "ml-latest-small",
                "--data.path", str(out / "data"), "--data.options", "{verify: false, download: false}",
                "--trainer.enable_progress_bar", "false", *extra)
        fit_s = Run.open(run).read_json("timing.json")["fit_s"]
        top_file = out / f"top_{config}.parquet"
        t = time.perf_counter()
        said = cli("score", "--run-dir", str(run), "--out", str(top_file), "--k", "20", "--histories", str(hist_file))
        score_s = time.perf_counter() - t
        consumed = int(re.search(r"(\d+) already-consumed", said).group(1))
        dropped = re.search(r"(\d+) rows dropped", said)
        top = pd.read_parquet(top_file)
        assert set(top["user"]) == set(users), f"{config}: not every held-out user was scored"
        row = {"model": config, **metrics_of(top, truth, users, catalogue), "fit_s": fit_s, "score_s": score_s,
               "consumed": consumed, "dropped_history_rows": int(dropped.group(1)) if dropped else 0,
               "caps": " ".join(extra) or "-"}
        results.append(row)
        print(f"  {config:<8} ndcg@20 {row['ndcg@20']:.4f}  recall@20 {row['recall@20']:.4f}  (fit {fit_s:.0f} s, "
              f"score {score_s:.1f} s)", flush=True)
    pop = next((r for r in results if r["model"] == "pop"), results[0])
    lines = [f"Fold-in on P1: {len(users)} users held out of training (seed {a.seed}), earliest 80% of their ratings "
             "given as --histories, latest 20% to find", "",
             "| model | ndcg@20 | recall@20 | ndcg vs pop | already-consumed | history rows dropped | fit s | caps |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in results:
        lines.append(f"| {r['model']} | {r['ndcg@20']:.4f} | {r['recall@20']:.4f} | "
                     f"{r['ndcg@20'] / pop['ndcg@20']:.2f}x | {r['consumed']} | {r['dropped_history_rows']} | "
                     f"{r['fit_s']:.0f} | {r['caps']} |")
    table = "\n".join(lines)
    print("\n" + table)
    (out / "fold_in_p1.md").write_text(table + "\n")
    (out / "fold_in_p1.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
