"""Zero-shot transfer: text models trained on the synthetic generator, scored on ml-latest-small untrained there.

Each source model is fitted on the project's synthetic data (``recsys fit --data.dataset synthetic``), then moved
to P1 (ml-latest-small, per-user random 80/10/10, seed 2026) with ``recsys fit --transfer-from SOURCE
--trainer.max_epochs 0``: the target's items are embedded from their own text and its users from their training
histories, through the source's learned mapping; nothing is trained on MovieLens. References on the same P1 test:
popularity and the untrained "text history mean" (:class:`recsys.baselines.TextHistoryMean`: MiniLM vectors, users
= mean of their history, cosine), plus the same text models trained on P1 itself (in-domain).

The within-MovieLens transfer by release year is the cold-item protocol with a column rule::

    python scripts/cold_start.py --out runs/cold_year --cold 'year>=2000' --split temporal

Usage::

    OMP_NUM_THREADS=1 python scripts/zero_shot.py --out runs/zero_shot
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

#: text models: config -> fit options shared by the source, zero-shot and in-domain fits (CPU epoch caps).
TEXT = {
    "linear_probe": ["--trainer.max_epochs", "40"],
    "alpharec_mlp": ["--trainer.max_epochs", "15", ENC + "hidden_dim", "1536"],
}


def fit(run: Path, config: str, args: list[str]) -> dict:
    """One ``recsys fit`` (skipped when finished); returns the run's test metrics."""
    if not (run / "timing.json").exists():
        cmd = [sys.executable, "-m", "recsys", "fit", "--config", config, "--run-dir", str(run), "--overwrite",
               "--trainer.enable_progress_bar", "false", *args]
        print("[zero-shot] " + " ".join(cmd), flush=True)
        with open(str(run) + ".log", "w") as log:
            if subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO):
                raise SystemExit(f"[zero-shot] {run.name} failed; see {run}.log")
    return json.loads((run / "metrics.json").read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/zero_shot")
    p.add_argument("--data", default=str(ML_SMALL))
    p.add_argument("--in-domain", action="store_true", help="Also train the text models on P1 (the upper bound).")
    a = p.parse_args()
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    target = ["--data.dataset", "ml-latest-small", "--data.path", a.data, "--data.split.method", "random"]
    source = ["--data.dataset", "synthetic", "--data.path", "null"]
    rows = [("pop", "-", fit(out / "pop", "pop", target)),
            ("text_mean (untrained)", "-", fit(out / "text_mean", "text_mean", target))]
    for config, caps in TEXT.items():
        src = out / f"{config}_synthetic"
        fit(src, config, source + caps)
        rows.append((config, "synthetic, zero-shot",
                     fit(out / f"{config}_zero_shot", config, target + caps + ["--transfer-from", str(src),
                                                                               "--trainer.max_epochs", "0"])))
        if a.in_domain:
            rows.append((config, "P1 (in-domain)", fit(out / f"{config}_p1", config, target + caps)))
    pop = rows[0][2]["ndcg@20"]
    lines = ["Zero-shot transfer synthetic → ml-latest-small (P1 test, full ranking; nothing trained on MovieLens "
             "for the zero-shot rows)", "",
             "| model | trained on | ndcg@20 | recall@20 | vs pop |", "|---|---|---:|---:|---:|"]
    for name, where, m in rows:
        lines.append(f"| {name} | {where} | {m['ndcg@20']:.4f} | {m['recall@20']:.4f} | {m['ndcg@20'] / pop:.2f}x |")
    table = "\n".join(lines)
    print("\n" + table)
    (out / "zero_shot.md").write_text(table + "\n")
    (out / "zero_shot.json").write_text(json.dumps([{"model": n, "trained_on": w, **m} for n, w, m in rows],
                                                   indent=2) + "\n")


if __name__ == "__main__":
    main()
