"""Study of the factorization wrappers on P1: quality vs dim, vs rank, vs bytes per item, and cross-model retrieval.

Reads finished runs (train them with the commands in the header of each config; the defaults below are the run
directories of issue 8's sweep) and evaluates each on the test split:

* Matryoshka: the nested model at every prefix ``d/8..d``, against MF trained natively at each size, and
  coarse-to-fine retrieval (shortlist at ``d/8``, re-rank at ``d``);
* low-rank: one trained model truncated to several ranks (parameters, bytes per item, ndcg@20);
* binary codes: float, Hamming-only and Hamming shortlist + float re-rank;
* latent quantization: ndcg@20 and bytes per item per codebook size;
* BT² compatibility: old→old, new→new and new→old.

Writes ``study.md`` and ``study.json`` plus ``quality_vs_dim.png`` and ``quality_vs_bytes.png`` to ``--out``::

    .venv/bin/python scripts/study_factorization.py --runs runs/f8 --full runs/p1_mf --out runs/f8/study
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from recsys.metrics.evaluate import evaluate
from recsys.runs import Run
from recsys.scoring.index import HammingSpec, PrefixSpec

METRIC = "ndcg@20"


def ndcg(model, data, **kw) -> float:
    return evaluate(model, data, "test", (10, 20), **kw)[METRIC]


def load(path: Path):
    """The fitted model and data of a finished run, or (None, None) when the run is not there."""
    if Run(path).status == "configured":  # no model.pt (yet)
        return None, None
    run = Run.open(path)
    return run.recommender(), run.data()


def matryoshka(runs: Path, full: Path, rows: list, res: dict, name: str = "mrl128", native: str = "native",
               label: str = "MF") -> None:
    model, data = load(runs / name)
    if model is None:
        return
    d = model.encoder.out_dim
    natives = {d: full, **{m: runs / f"{native}{m}" for m in (d // 8, d // 4, d // 2)}}
    res["matryoshka"] = {"prefix": {}, "native": {}}
    for m in (d // 8, d // 4, d // 2, d):
        res["matryoshka"]["prefix"][m] = ndcg(model, data, index=PrefixSpec(dim=m))
        nat, ndata = load(natives[m])
        if nat is not None:
            res["matryoshka"]["native"][m] = ndcg(nat, ndata)
        rows.append((f"Matryoshka {label}", f"prefix {m}", 4 * m, res["matryoshka"]["prefix"][m]))
        if m in res["matryoshka"]["native"]:
            rows.append((f"{label} (native)", f"dim {m}", 4 * m, res["matryoshka"]["native"][m]))
    c2f = ndcg(model, data, index=PrefixSpec(coarse=d // 8, shortlist=200))
    res["matryoshka"]["coarse_to_fine"] = {"coarse_dim": d // 8, "shortlist": 200, METRIC: c2f}
    rows.append((f"Matryoshka {label}", f"coarse {d // 8} → fine {d}, shortlist 200", 4 * d, c2f))
    p, q = res["matryoshka"]["prefix"], d // 4
    res["matryoshka"]["acceptance"] = {
        "ratio_d4_to_d": p[q] / p[d],
        "d4_within_5pct": p[q] >= 0.95 * p[d],
        "d4_beats_native_d4": q in res["matryoshka"]["native"] and p[q] > res["matryoshka"]["native"][q]}


def lowrank(runs: Path, rows: list, res: dict) -> None:
    model, data = load(runs / "lowrank")
    if model is None:
        return
    enc = model.encoder
    n_rows = data.n_users + data.n_items
    res["lowrank"] = {}
    for r in sorted({1, 2, 4, 8, 16, 32, enc.max_rank}):
        enc.set_rank(r)
        score = ndcg(model, data)
        res["lowrank"][r] = {"params": enc.parameter_count(r, n_rows), "bytes_per_item": enc.bytes_per_item(),
                             METRIC: score}
        rows.append(("Low-rank MF (one model, truncated)", f"rank {r}", enc.bytes_per_item(), score))
    enc.set_rank(None)


def binary(runs: Path, rows: list, res: dict) -> None:
    model, data = load(runs / "binary")
    if model is None:
        return
    d = model.encoder.out_dim
    res["binary"] = {"float": ndcg(model, data), "hamming_only": ndcg(model, data, index=HammingSpec(codes_only=True)),
                     "bytes_per_item_float": 4 * d, "bytes_per_item_codes": d / 8}
    for m in (100, 200, 500):
        res["binary"][f"hamming_shortlist_{m}_rerank"] = ndcg(model, data, index=HammingSpec(shortlist=m))
    rows.append(("Binary MF", "float (re-ranker)", 4 * d, res["binary"]["float"]))
    rows.append(("Binary MF", f"{d}-bit codes, Hamming only", d / 8, res["binary"]["hamming_only"]))
    rows.append(("Binary MF", "Hamming shortlist 200 + float re-rank", d / 8,
                 res["binary"]["hamming_shortlist_200_rerank"]))


def quantized(runs: Path, rows: list, res: dict) -> None:
    res["quantized"] = {}
    for levels in (2, 4, 16):
        model, data = load(runs / f"quant{levels}")
        if model is None:
            continue
        b = model.encoder.bytes_per_item()
        res["quantized"][levels] = {"bytes_per_item": b, METRIC: ndcg(model, data)}
        rows.append(("Quantized MF (items)", f"{levels} levels/dim", b, res["quantized"][levels][METRIC]))


def compatible(runs: Path, rows: list, res: dict, name: str = "compat", old_name: str = "native64") -> None:
    old, data = load(runs / old_name)
    new, ndata = load(runs / name)
    if old is None or new is None:
        return
    # The old run's stored item table is the gallery (the same split: same dataset and seed, same item rows).
    gallery = Run.open(runs / old_name).item_table_for(ndata.item_vocab)
    res["compatibility"] = {"old_to_old": ndcg(old, data), "new_to_new": ndcg(new, ndata),
                            "new_to_old": ndcg(new, ndata, gallery=gallery)}
    c = res["compatibility"]
    c["new_to_old_ge_old_to_old"] = c["new_to_old"] >= c["old_to_old"]
    for k in ("old_to_old", "new_to_new", "new_to_old"):
        rows.append(("BT² compatibility", k.replace("_to_", "→"), None, c[k]))


def plots(res: dict, out: Path) -> None:
    """``quality_vs_dim.png`` (Matryoshka prefixes against native MF) and ``quality_vs_bytes.png`` (every module)."""
    from recsys.plots import plot_tradeoff

    if "matryoshka" in res:
        p, n = res["matryoshka"]["prefix"], res["matryoshka"]["native"]
        plot_tradeoff({"P1: quality vs dim": {"Matryoshka (one model, prefixes)": list(p.items()),
                                               "trained natively at each dim": list(n.items())}},
                      out / "quality_vs_dim.png", xlabel="embedding dimensions", ylabel=METRIC, log_base=2,
                      panel_size=(5, 3.5), legend_fontsize=8)
    series = {}
    if "matryoshka" in res:
        series["Matryoshka prefixes (float32)"] = [(4 * m, v) for m, v in res["matryoshka"]["prefix"].items()]
        series["MF native (float32)"] = [(4 * m, v) for m, v in res["matryoshka"]["native"].items()]
    if "lowrank" in res:
        series["Low-rank, truncated"] = [(v["bytes_per_item"], v[METRIC]) for v in res["lowrank"].values()]
    if "quantized" in res:
        series["Latent quantization"] = [(v["bytes_per_item"], v[METRIC]) for v in res["quantized"].values()]
    if "binary" in res:
        b = res["binary"]
        series["Binary codes: Hamming only"] = [(b["bytes_per_item_codes"], b["hamming_only"])]
        series["Binary codes: shortlist 200 + float"] = [(b["bytes_per_item_codes"],
                                                          b["hamming_shortlist_200_rerank"])]
    plot_tradeoff({"P1: quality vs bytes per item": series}, out / "quality_vs_bytes.png",
                  xlabel="bytes per item (stored code or vector)", ylabel=METRIC, log_base=2, panel_size=(6, 4),
                  legend_fontsize=7)


def markdown(rows: list, res: dict) -> str:
    lines = ["# Factorization study on P1 (ml-latest-small, random 80/10/10 per user, seed 2026; test split)", "",
             f"| module | setting | bytes/item | {METRIC} |", "|---|---|---:|---:|"]
    for mod, setting, b, v in rows:
        lines.append(f"| {mod} | {setting} | {'' if b is None else f'{b:g}'} | {v:.4f} |")
    lines += ["", "Bytes per item: float32 vectors 4·D; low-rank 4·rank (the shared basis is not per item); binary "
              "D/8 (the Hamming + re-rank row also keeps the float table to re-rank the shortlist); quantized "
              "D·⌈log2 L⌉/8 (the D×L codebook is shared). The native MF at full d is the `--full` run, which may use "
              "another training recipe than the sweep (see the closing note of issue 8)."]
    if "lowrank" in res:
        lines += ["", "## Low-rank: one trained model truncated", "", f"| rank | parameters | bytes/item | {METRIC} |",
                  "|---:|---:|---:|---:|"]
        lines += [f"| {r} | {v['params']:,} | {v['bytes_per_item']:g} | {v[METRIC]:.4f} |"
                  for r, v in res["lowrank"].items()]
    if "matryoshka" in res:
        a = res["matryoshka"]["acceptance"]
        lines += ["", f"Matryoshka: ndcg@20 at d/4 / at d = {a['ratio_d4_to_d']:.3f} (within 5%: "
                  f"{a['d4_within_5pct']}); beats native d/4: {a['d4_beats_native_d4']}"]
    if "compatibility" in res:
        c = res["compatibility"]
        lines += ["", f"Compatibility: new→old {c['new_to_old']:.4f} vs old→old {c['old_to_old']:.4f} "
                  f"(≥: {c['new_to_old_ge_old_to_old']}); new→new {c['new_to_new']:.4f}"]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="runs/f8", help="Directory holding mrl128, native{16,32,64}, lowrank, ...")
    ap.add_argument("--full", default="runs/p1_mf", help="MF-BPR at full d (the configs/mf_bpr.yaml run).")
    ap.add_argument("--out", default="runs/f8/study")
    ap.add_argument("--mrl", default="mrl128", help="Run (under --runs) of the Matryoshka model.")
    ap.add_argument("--compat", default="compat", help="Run of the backward-compatible new model.")
    ap.add_argument("--old", default="native64", help="Run of the old model it is compatible with.")
    ap.add_argument("--native", default="native", help="Prefix of the runs trained natively at each dim.")
    ap.add_argument("--label", default="MF", help="Name of the Matryoshka model's family in the table.")
    ap.add_argument("--only", nargs="+", default=None,
                    choices=["matryoshka", "lowrank", "binary", "quantized", "compatibility"])
    a = ap.parse_args()
    torch.set_num_threads(1)
    runs, out = Path(a.runs), Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list = []
    res: dict = {}
    steps = {"matryoshka": lambda: matryoshka(runs, Path(a.full), rows, res, a.mrl, a.native, a.label),
             "lowrank": lambda: lowrank(runs, rows, res), "binary": lambda: binary(runs, rows, res),
             "quantized": lambda: quantized(runs, rows, res),
             "compatibility": lambda: compatible(runs, rows, res, a.compat, a.old)}
    for name, step in steps.items():
        if a.only is None or name in a.only:
            step()
    plots(res, out)
    (out / "study.json").write_text(json.dumps(res, indent=2, default=str) + "\n")
    md = markdown(rows, res)
    (out / "study.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
