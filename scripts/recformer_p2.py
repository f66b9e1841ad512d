"""Recformer vs SASRec on protocol P2 (leave-one-out by time, full ranking), with the cold-start subset.

Recformer: Li et al., "Text Is All You Need: Learning Language Representations for Sequential Recommendation",
KDD 2023. SASRec: Kang & McAuley, ICDM 2018.

Runs (unless ``--skip-fit``) four ``recsys fit`` jobs, timing each (wall and CPU seconds):

1. ``configs/recformer_pretrain.yaml`` → ``OUT/pretrain``;
2. ``configs/recformer.yaml`` initialised from 1 (stage 1, item table re-encoded each epoch) → ``OUT/stage1``;
3. the same config initialised from 2 with ``item_table: frozen`` (stage 2) → ``OUT/stage2``;
4. ``configs/sasrec.yaml`` → ``OUT/sasrec``;
5. ``configs/pop.yaml`` (popularity, train and valid items masked) → ``OUT/pop``; ``configs/text_mean.yaml`` (the
   untrained MiniLM history mean) → ``OUT/text_mean``.

Then scores every test user of the finished runs (queries from train + valid histories, train and valid items masked,
as ``recsys evaluate``) and reports ndcg@10, recall@10 and MRR (full-ranking reciprocal rank, no cut-off) overall,
on the cold-start subset (test interactions whose item occurs in neither train nor valid: only a text model can rank
it from what it has seen) and on the rest. Writes ``OUT/report.json`` and prints a table.

Usage::

    python scripts/recformer_p2.py --out runs/p2
    python scripts/recformer_p2.py --out runs/p2 --skip-fit          # report on existing runs
    python scripts/recformer_p2.py --out runs/p2 --fit-args --trainer.max_epochs 1   # extra args for every fit
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
ML_SMALL = REPO.parent / "shared" / "datasets" / "ml-latest-small"
ENC = "--model.init_args.encoder.init_args."


def fit(name: str, config: str, out: Path, data_args: list[str], extra: list[str]) -> dict:
    """One timed ``recsys fit`` in a subprocess; returns wall and CPU seconds."""
    run = out / name
    cmd = [sys.executable, "-m", "recsys.cli", "fit", "--config", str(REPO / "configs" / config), "--run-dir",
           str(run), "--overwrite", *data_args, "--trainer.enable_progress_bar", "false", *extra]
    print("[p2] " + " ".join(cmd), flush=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    with open(out / f"{name}.log", "w") as log:
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if rc:
        raise SystemExit(f"[p2] {name} failed (rc {rc}); see {out / (name + '.log')}")
    timing = {"wall_s": time.perf_counter() - t, "cpu_s": (after.ru_utime - before.ru_utime)
              + (after.ru_stime - before.ru_stime), "command": " ".join(cmd)}
    print(f"[p2] {name}: {timing['wall_s']:.0f} s wall, {timing['cpu_s']:.0f} s CPU", flush=True)
    return timing


def test_ranks(run: Path) -> tuple[np.ndarray, np.ndarray, object]:
    """Rank (1 = top) of every test item among all items for its user, train and valid items masked.

    Any recommender (an embedding model or a baseline) is scored through the same score function as
    ``recsys evaluate``.

    Shapes:
        -> users [U], ranks [U] (one test item per user under leave-one-out), data
    """
    import torch

    from recsys.recommender import score_function
    from recsys.runs import Run

    r = Run.open(run)
    data = r.data()
    model = r.recommender(data)
    test = data.csr("test")
    users = np.flatnonzero(np.diff(test.indptr) > 0)
    fn = score_function(model, data, up_to="train+valid")
    with torch.no_grad():
        scores = torch.cat([fn(torch.from_numpy(c)) for c in np.array_split(users, max(1, len(users) // 128))])
    scores = scores.double().numpy()
    seen = data.csr("train+valid")[users].toarray().astype(bool)
    scores[seen] = -np.inf
    target = test.indices[test.indptr[users]]  # leave-one-out: exactly one test item per user
    own = scores[np.arange(len(users)), target][:, None]
    ranks = 1 + (scores > own).sum(axis=1)
    return users, ranks, data


def metrics(ranks: np.ndarray) -> dict:
    """ndcg@10, recall@10 and full-ranking MRR for one relevant item per user."""
    if len(ranks) == 0:
        return {"n": 0}
    hit = ranks <= 10
    return {"n": int(len(ranks)), "ndcg@10": float(np.mean(np.where(hit, 1 / np.log2(ranks + 1), 0.0))),
            "recall@10": float(hit.mean()), "mrr": float(np.mean(1.0 / ranks))}


def report(out: Path, runs: dict[str, Path], timings: dict) -> dict:
    result = {}
    from recsys.runs import Run

    for name, run in runs.items():
        if Run(run).status == "configured":
            print(f"[p2] {name}: no finished run at {run}, skipped")
            continue
        users, ranks, data = test_ranks(run)
        seen_items = np.unique(data.items[data.labels <= 1])
        target = data.csr("test").indices[data.csr("test").indptr[users]]
        cold = ~np.isin(target, seen_items)
        res = {"overall": metrics(ranks), "cold": metrics(ranks[cold]), "warm": metrics(ranks[~cold]),
               "evaluator": Run(run).metrics()}
        cfg = Run(run).config_text()
        res["timing"] = timings.get(name) or Run(run).read_json("timing.json")
        res["config_lines"] = [ln.strip() for ln in cfg.splitlines()
                               if any(k in ln for k in ("num_layers:", "max_items:", "max_token_num:", "dim:",
                                                        "max_len:", "attention_window:", "batch_size:", "lr:",
                                                        "max_epochs:", "max_attr_length:"))]
        result[name] = res
    (out / "report.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{'run':<14}{'subset':<9}{'n':>5}{'ndcg@10':>10}{'recall@10':>11}{'mrr':>9}")
    for name, res in result.items():
        for subset in ("overall", "cold", "warm"):
            m = res[subset]
            if m["n"]:
                print(f"{name:<14}{subset:<9}{m['n']:>5}{m['ndcg@10']:>10.4f}{m['recall@10']:>11.4f}{m['mrr']:>9.4f}")
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/p2")
    p.add_argument("--data", default=str(ML_SMALL))
    p.add_argument("--skip-fit", action="store_true", help="Only report on the runs already in --out.")
    p.add_argument("--only", nargs="+", default=["pretrain", "stage1", "stage2", "sasrec", "pop", "text_mean"],
                   help="Which fits to run (the others must exist for the report).")
    p.add_argument("--fit-args", nargs=argparse.REMAINDER, default=[], help="Extra arguments for every fit.")
    a = p.parse_args()
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data_args = ["--data.dataset", "ml-latest-small", "--data.path", a.data, "--data.split.method", "loo"]
    timings = json.loads((out / "timings.json").read_text()) if (out / "timings.json").exists() else {}
    jobs = {
        "pretrain": ("recformer_pretrain.yaml", []),
        "stage1": ("recformer.yaml", [ENC + "init_from", str(out / "pretrain")]),
        "stage2": ("recformer.yaml", [ENC + "init_from", str(out / "stage1"),
                                      ENC + "item_table", "recsys.encoders.FrozenTable"]),
        "sasrec": ("sasrec.yaml", []),
        "pop": ("pop.yaml", []),
        "text_mean": ("text_mean.yaml", []),
    }
    if not a.skip_fit:
        for name in a.only:
            config, extra = jobs[name]
            timings[name] = fit(name, config, out, data_args, extra + a.fit_args)
            (out / "timings.json").write_text(json.dumps(timings, indent=2) + "\n")
    rec = [n for n in ("pretrain", "stage1", "stage2") if n in timings]
    if rec:
        print(f"[p2] Recformer pre-training + fine-tuning: {sum(timings[n]['wall_s'] for n in rec):.0f} s wall, "
              f"{sum(timings[n]['cpu_s'] for n in rec):.0f} s CPU ({', '.join(rec)})")
    report(out, {"recformer": out / "stage2", "stage1": out / "stage1", "pretrain": out / "pretrain",
                 "sasrec": out / "sasrec", "pop (masked)": out / "pop", "text_mean": out / "text_mean"}, timings)


if __name__ == "__main__":
    main()
