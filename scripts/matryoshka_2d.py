"""2D Matryoshka AlphaRec: test ndcg@20 at every (LM layers, dims) point, and LM encoding time per layer count.

Li et al., "2D Matryoshka Sentence Embeddings", 2024 (arXiv 2402.14776). Trains ``configs/alpharec_2d.yaml`` once
through ``recsys fit`` (a subprocess, as ``scripts/cold_start.py`` does; skipped when the run is finished), then
serves the one fitted model from every LM depth ``l`` (``serve_layer``) at every prefix ``{d/8, d/4, d/2, d}``
(``PrefixSpec``, the ``--index prefix:dim=D`` of ``recsys evaluate``), through the same evaluator as
``recsys evaluate``. One point is also checked end to end through the CLI (``recsys fit --transfer-from RUN
--trainer.max_epochs 0 --model.init_args.encoder.init_args.serve_layer L`` then ``recsys evaluate --index
prefix:dim=D``) and must agree.

Encoding time: the item texts of ``--time-items`` catalogue items (all when 0), encoded without the cache by the
truncated LM (its first ``l`` layers only, :class:`recsys.text.lm.LMEncoder` ``layer=l``; model loading excluded),
then scaled to the whole catalogue.

Usage (P1)::

    OMP_NUM_THREADS=1 .venv/bin/python scripts/matryoshka_2d.py --run runs/alpharec2d --out runs/alpharec2d_table
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ML_SMALL = REPO.parent / "shared" / "datasets" / "ml-latest-small"
ENC = "--model.init_args.encoder.init_args."


def run_cli(args: list[str], log: Path) -> None:
    """One ``recsys`` command in a subprocess, its output in ``log``."""
    cmd = [sys.executable, "-m", "recsys", *args]
    print("[2d] " + " ".join(cmd), flush=True)
    with open(log, "w") as f:
        rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO)
    if rc:
        raise SystemExit(f"[2d] failed (rc {rc}); see {log}")


def grid(run: Path, dims: list[int] | None) -> tuple[list[dict], int, int]:
    """Test ndcg@20 / recall@20 of the fitted run at every (layer, prefix dim) point."""
    from recsys.encoders.matryoshka2d import layered_encoder
    from recsys.losses import default_prefix_dims
    from recsys.metrics.evaluate import evaluate
    from recsys.runs import Run
    from recsys.scoring.index import PrefixSpec

    r = Run.open(run)
    data = r.data()
    model = r.recommender(data)
    enc = layered_encoder(model.encoder)
    d = model.encoder.out_dim
    rows = []
    for layer in range(1, enc.depth() + 1):
        enc.set_serve_layer(layer)
        for dim in dims or default_prefix_dims(d):
            t0 = time.perf_counter()
            m = evaluate(model, data, "test", (20,), index=None if dim >= d else PrefixSpec(dim=dim))
            rows.append({"layers": layer, "dims": dim, "ndcg@20": m["ndcg@20"], "recall@20": m["recall@20"],
                         "eval_s": time.perf_counter() - t0})
            print(f"[2d] layers {layer} dims {dim}: ndcg@20 {m['ndcg@20']:.4f}", flush=True)
    return rows, enc.depth(), d


def encode_times(run: Path, n_items: int, seed: int = 0) -> tuple[list[dict], int, int]:
    """Seconds to LM-encode item texts with the first ``l`` layers, for every ``l``, without the cache."""
    import numpy as np

    from recsys.encoders.matryoshka2d import layered_encoder
    from recsys.runs import Run
    from recsys.text.lm import LMEncoder

    r = Run.open(run)
    data = r.data()
    model = r.recommender(data)
    text = layered_encoder(model.encoder).text
    texts = text.texts(data.item_table)
    total = len(texts)
    if n_items and n_items < total:
        pick = np.random.default_rng(seed).choice(total, n_items, replace=False)
        texts = [texts[i] for i in sorted(pick)]
    out = []
    depth = text.depth()
    for layer in range(1, depth + 1):
        lm = LMEncoder(text.lm_path, text.pooling, text.normalize, text.max_length, text.lm_batch_size,
                       use_cache=False, progress=False, layer=layer)
        lm._load()  # model loading is not encoding time
        t0 = time.perf_counter()
        lm.encode(texts)
        s = time.perf_counter() - t0
        out.append({"layers": layer, "encode_s": s, "texts": len(texts), "catalogue_s": s * total / len(texts)})
        print(f"[2d] encode with {layer} layers: {s:.1f} s for {len(texts)} texts", flush=True)
    return out, total, depth


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", default="runs/alpharec2d", help="The fitted run (trained here when unfinished).")
    p.add_argument("--out", default="runs/alpharec2d_table", help="Folder for matryoshka_2d.md / .json.")
    p.add_argument("--data", default=str(ML_SMALL))
    p.add_argument("--config", default="configs/alpharec_2d.yaml")
    p.add_argument("--time-items", type=int, default=2000, help="Items timed per layer count (0: the catalogue).")
    p.add_argument("--check", default="3,32", help="LAYER,DIM checked through the CLI ('' skips it).")
    p.add_argument("--no-timing", action="store_true", help="Skip the encoding-time measurement.")
    p.add_argument("--label", default="AlphaRec-MLP 2D Matryoshka", help="What the table's caption calls the run.")
    p.add_argument("--fit-args", nargs=argparse.REMAINDER, default=[], help="Extra options for the fit.")
    a = p.parse_args()
    run, out = Path(a.run).resolve(), Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data_args = ["--data.dataset", "ml-latest-small", "--data.path", a.data]
    fit_cmd = ["fit", "--config", a.config, *data_args, "--run-dir", str(run), "--trainer.enable_progress_bar",
               "false", *a.fit_args]
    t0 = time.perf_counter()
    if not (run / "timing.json").exists():
        run_cli([*fit_cmd, "--overwrite"], Path(str(run) + ".log"))
    fit_wall = time.perf_counter() - t0
    rows, depth, d = grid(run, None)
    check = None
    if a.check:
        layer, dim = (int(x) for x in a.check.split(","))
        served = run.parent / f"{run.name}_l{layer}"
        run_cli(["fit", "--config", a.config, *data_args, "--run-dir", str(served), "--overwrite",
                 "--transfer-from", str(run), "--trainer.max_epochs", "0", ENC + "serve_layer", str(layer),
                 "--trainer.enable_progress_bar", "false"], Path(str(served) + ".log"))
        result = out / f"eval_l{layer}_d{dim}.json"
        run_cli(["evaluate", "--run-dir", str(served), "--index", f"prefix:dim={dim}", "--ks", "20", "--out",
                 str(result)], out / f"eval_l{layer}_d{dim}.log")
        cli = json.loads(result.read_text())["ndcg@20"]
        grid_value = next(r["ndcg@20"] for r in rows if r["layers"] == layer and r["dims"] == dim)
        check = {"layers": layer, "dims": dim, "cli_ndcg@20": cli, "grid_ndcg@20": grid_value,
                 "agree": abs(cli - grid_value) < 1e-6}
        print(f"[2d] CLI check at ({layer}, {dim}): {cli:.6f} vs {grid_value:.6f}", flush=True)
    times, n_items = ([{"layers": r["layers"]} for r in rows if r["dims"] == rows[0]["dims"]], 0) if a.no_timing \
        else encode_times(run, a.time_items)[:2]
    timing = json.loads((run / "timing.json").read_text())
    dims = sorted({r["dims"] for r in rows})
    by = {(r["layers"], r["dims"]): r for r in rows}
    full = times[-1].get("encode_s")
    lines = [f"{a.label} on P1 (ml-latest-small; test split, full ranking); one fit "
             f"({timing.get('epochs')} epochs, {timing.get('fit_s', 0):.0f} s fit); LM all-MiniLM-L6-v2 "
             f"({depth} layers), CF dim {d}.", "",
             "| LM layers | " + " | ".join(f"ndcg@20, d={m}" for m in dims)
             + " | encode s (catalogue) | × full |",
             "|---:|" + "---:|" * len(dims) + "---:|---:|"]
    for t in times:
        layer = t["layers"]
        speed = (f" | {t['catalogue_s']:.1f} | {t['encode_s'] / full:.2f} |" if full else " | - | - |")
        lines.append(f"| {layer} | " + " | ".join(f"{by[(layer, m)]['ndcg@20']:.4f}" for m in dims) + speed)
    timed = (f"Encoding: {times[0]['texts']} of {n_items} item texts timed per layer count without the cache "
             "(truncated LM, one thread, model loading excluded), scaled to the catalogue.") if full else \
        "Encoding: not measured."
    lines += ["", timed]
    if check:
        lines.append(f"CLI check (transfer-from with serve_layer {check['layers']}, then `recsys evaluate --index "
                     f"prefix:dim={check['dims']}`): {check['cli_ndcg@20']:.4f} vs the grid's "
                     f"{check['grid_ndcg@20']:.4f} ({'agree' if check['agree'] else 'DISAGREE'}).")
    lines.append("Fit: `recsys " + " ".join(fit_cmd) + "`")
    table = "\n".join(lines)
    print("\n" + table)
    (out / "matryoshka_2d.md").write_text(table + "\n")
    (out / "matryoshka_2d.json").write_text(json.dumps({"grid": rows, "encode": times, "check": check,
                                                        "fit": timing, "fit_wall_s": fit_wall}, indent=2) + "\n")


if __name__ == "__main__":
    main()
