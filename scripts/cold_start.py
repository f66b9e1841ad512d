"""Cold-item protocol: hold out a share of items entirely, train without them, rank the full catalogue for them.

Protocol:

1. Prepare the dataset with its default split, then pick ``--cold-frac`` of the items at random (seeded): every
   interaction with them is held out. The rest (warm train / valid / test) is unchanged.
2. Text models (AlphaRec, the linear probe) train on the *warm* data only: a catalogue without the cold items, so
   they are never seen, not even as sampled negatives. Then a fresh encoder is bound to the *full* catalogue (cold
   items have side-table text and no train interaction) and given the trained weights: cold items are embedded
   from their text alone (zero-shot).
   AlphaRec's edgeless items keep only their mapped text vector (``cold_neighbors=0``, the paper's propagation);
   ``cold_neighbors=k`` also evaluates the same weights with the graph part borrowed from the k warm items
   nearest in LM space (see ``recsys.encoders.AlphaRec``).
3. MF-BPR trains on the full catalogue (an ID model must know its rows): cold rows never get a positive, only
   sampled-negative updates, so it cannot rank them.
4. For every user with a held-out cold interaction, all items except the user's warm train and valid items are
   ranked; the relevant items are the user's cold items. Metrics come from ``recsys.metrics.ranking_metrics``.
   The random baseline is exact, not sampled: a uniform random ranking of ``n_c`` candidates with ``r`` relevant
   items has E[recall@k] = k / n_c and E[ndcg@k] = (r / n_c) Σ_{i≤k} 1/log2(i+1) / IDCG@k (popularity-free).

Example (P1)::

    python scripts/cold_start.py --dataset ml-latest-small --path /work/shared/datasets/ml-latest-small \\
        --models alpharec_mlp linear_probe mf_bpr --fast-cosine --out cold_start.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

# name -> (config file, trains on the warm catalogue and is re-bound to the full one)
MODELS = {
    "alpharec_mlp": ("alpharec_mlp.yaml", True),
    "alpharec": ("alpharec.yaml", True),
    "linear_probe": ("linear_probe.yaml", True),
    "mf_bpr": ("mf_bpr.yaml", False),
}


def split_cold(data, frac: float, seed: int):
    """The full-catalogue data (cold interactions all in test) and the warm-only data (cold items removed).

    Returns:
        (full, warm, cold item rows of ``full``, warm item rows of ``full`` in ``warm``'s row order)
    """
    from recsys.data.prepared import PreparedData
    from recsys.data.splits import TEST
    from recsys.data.vocab import Vocabulary

    rng = np.random.default_rng(seed)
    n = data.n_items
    cold = np.sort(rng.choice(n, size=max(1, int(round(frac * n))), replace=False))
    is_cold = np.zeros(n, dtype=bool)
    is_cold[cold] = True
    hit = is_cold[data.items]
    labels = np.where(hit, TEST, data.labels).astype(data.labels.dtype)
    full = PreparedData(data.user_vocab, data.item_vocab, data.users, data.items, labels, data.timestamps,
                        item_table=data.item_table, user_table=data.user_table, name=f"{data.name}-cold")
    warm_rows = np.flatnonzero(~is_cold)
    remap = np.full(n, -1, dtype=np.int64)
    remap[warm_rows] = np.arange(len(warm_rows))
    keep = ~hit
    table = data.item_table.iloc[warm_rows].reset_index(drop=True) if data.item_table is not None else None
    warm = PreparedData(data.user_vocab, Vocabulary(data.item_vocab.ids[warm_rows], "item"), data.users[keep],
                        remap[data.items[keep]], data.labels[keep],
                        data.timestamps[keep] if data.timestamps is not None else None,
                        item_table=table, user_table=data.user_table, name=f"{data.name}-warm")
    return full, warm, cold, warm_rows


class FixedData:
    """A stand-in for ``RecDataModule`` that serves an already prepared ``PreparedData``."""

    @staticmethod
    def make(data, loader, seed: int):
        from recsys.data.datamodule import RecDataModule

        class _DM(RecDataModule):
            def prepare(self):
                return self.data

        dm = _DM(loader=loader)
        dm.data, dm.seed = data, seed
        return dm


def build(config: str, overrides: dict):
    """Model and loader options from a config file (the same objects ``recsys fit`` builds)."""
    import yaml

    from recsys.data.datamodule import Loader

    cfg = yaml.safe_load((REPO / "configs" / config).read_text())
    model_spec = cfg["model"]
    enc_args = model_spec["init_args"]["encoder"].setdefault("init_args", {})
    for k, v in overrides.get("encoder", {}).items():
        enc_args[k] = v
    if "lr" in overrides:
        model_spec["init_args"]["optimizer"]["init_args"]["lr"] = overrides["lr"]
    scorer = model_spec["init_args"].get("scorer") or {}
    if overrides.get("fast_cosine") and scorer.get("class_path", "").endswith("CosineScorer"):
        # The same loss, cheaper: unit-length encoder outputs, dot scores, τ moved into the softmax loss.
        tau = (scorer.get("init_args") or {}).get("temperature", 1.0)
        enc_args["normalize_output"] = True
        model_spec["init_args"]["scorer"] = {"class_path": "recsys.scorers.DotScorer"}
        model_spec["init_args"]["loss"] = {"class_path": "recsys.losses.SoftmaxLoss", "init_args": {"temperature": tau}}
    loader = Loader(**{**cfg.get("data", {}).get("loader", {}), **overrides.get("loader", {})})
    trainer = {**cfg.get("trainer", {}), **overrides.get("trainer", {})}
    patience = overrides.get("patience", cfg.get("early_stopping", {}).get("patience", 10))
    return model_spec, loader, trainer, patience


def train(model_spec, data, loader, trainer_args: dict, patience: int, seed: int, workdir: Path,
          reuse: bool = False):
    """Fit a RecModel on ``data`` with early stopping on valid ndcg@20; returns the model with its best weights."""
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    from recsys.config import build_component
    from recsys.model import RecModel

    L.seed_everything(seed, workers=True, verbose=False)
    best = workdir / "best.ckpt"
    # Validated and built as `recsys fit` builds it (the optimizer spec becomes a ``params -> Optimizer`` factory).
    model = build_component(model_spec, RecModel, "the model spec")
    if reuse and best.exists():  # re-evaluate a finished run (e.g. other cold-item options) without training
        model.bind(data)
        model.load_state_dict(torch.load(best, map_location="cpu", weights_only=True)["state_dict"])
        return model.eval(), None
    best.unlink(missing_ok=True)
    dm = FixedData.make(data, loader, seed)
    ckpt = ModelCheckpoint(dirpath=workdir, filename="best", monitor="valid/ndcg@20", mode="max", save_top_k=1,
                           save_weights_only=True, enable_version_counter=False)
    stop = EarlyStopping(monitor="valid/ndcg@20", mode="max", patience=patience)
    t = L.Trainer(**trainer_args, callbacks=[ckpt, stop], logger=False, enable_progress_bar=False,
                  enable_model_summary=False, default_root_dir=str(workdir))
    t.fit(model, datamodule=dm)
    if ckpt.best_model_path:
        model.load_state_dict(torch.load(ckpt.best_model_path, map_location="cpu", weights_only=True)["state_dict"])
    model.eval()
    return model, t.current_epoch


def rebind(model_spec, trained, full, encoder_args: dict | None = None):
    """A fresh encoder bound to the full catalogue carrying the trained weights (no catalogue-sized parameters).

    ``encoder_args`` change inference-only options (e.g. AlphaRec's ``cold_neighbors``).
    """
    import copy

    from recsys.config import build_component
    from recsys.encoders.base import TwoSidedEncoder
    from recsys.recommender import EmbeddingRecommender

    spec = copy.deepcopy(model_spec["init_args"]["encoder"])
    spec.setdefault("init_args", {}).update(encoder_args or {})
    enc = build_component(spec, TwoSidedEncoder, "the encoder spec")
    enc.bind(full)
    enc.load_state_dict(trained.encoder.state_dict(), strict=True)
    return EmbeddingRecommender(enc, trained.scorer).eval()


def rank_metrics(model, full, users, relevant, ks=(10, 20)) -> dict[str, float]:
    """Rank all items but each user's warm train+valid items; metrics against ``relevant`` rows of ``users``."""
    from recsys.metrics.ranking import ranking_metrics
    from recsys.recommender import score_function
    from recsys.scoring.topk import topk

    fn = score_function(model, full, up_to="train+valid")
    ranked, _ = topk(fn, users, full.n_items, max(ks), exclude=full.csr("train+valid"))
    return ranking_metrics(ranked, relevant[users], ks)


def random_expectation(full, users, relevant, ks=(10, 20)) -> dict[str, float]:
    """Exact expected recall@k / ndcg@k of a uniformly random ranking of each user's candidates."""
    n_cand = full.n_items - np.diff(full.csr("train+valid").indptr)[users]
    r = np.diff(relevant.indptr)[users]
    out = {}
    for k in ks:
        disc = 1.0 / np.log2(np.arange(2, k + 2))
        dcg = (r / n_cand) * disc.sum()
        idcg = np.cumsum(disc)[np.minimum(r, k) - 1]
        out[f"recall@{k}"] = float(np.mean(np.minimum(k, n_cand) / n_cand))
        out[f"ndcg@{k}"] = float(np.mean(dcg / idcg))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="synthetic")
    p.add_argument("--path", default=None)
    p.add_argument("--options", default=None, help="dataset options as JSON (e.g. synthetic sizes)")
    p.add_argument("--cold-frac", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--models", nargs="+", default=["alpharec_mlp", "mf_bpr"], choices=sorted(MODELS))
    p.add_argument("--max-epochs", type=int, default=None, help="override every config's max_epochs")
    p.add_argument("--patience", type=int, default=None)
    p.add_argument("--lm-path", default=None, help="LM directory for the text models (default MiniLM)")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--encoder-args", default=None, help="JSON of extra init_args for the text models' encoders")
    p.add_argument("--fast-cosine", action="store_true",
                   help="train cosine models as normalize_output + DotScorer + SoftmaxLoss(τ): the same loss, cheaper")
    p.add_argument("--cold-neighbors", type=int, nargs="+", default=[0, 10],
                   help="AlphaRec cold_neighbors values to evaluate (the same trained weights; 0 = the paper)")
    p.add_argument("--reuse", action="store_true", help="load WORKDIR/<model>/best.ckpt instead of training")
    p.add_argument("--workdir", default="runs/cold_start")
    p.add_argument("--out", default=None, help="JSON file for the results")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s", stream=sys.stderr)
    for noisy in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    from recsys.data.prepared import prepare
    from recsys.datasets import load_dataset

    data = prepare(load_dataset(a.dataset, a.path, **(json.loads(a.options) if a.options else {})))
    full, warm, cold, _ = split_cold(data, a.cold_frac, a.seed)
    test = full.csr("test")
    is_cold = np.zeros(full.n_items, dtype=bool)
    is_cold[cold] = True
    rel_cold = test.multiply(is_cold[None, :]).tocsr()
    rel_cold.eliminate_zeros()
    rel_warm = test.multiply(~is_cold[None, :]).tocsr()
    rel_warm.eliminate_zeros()
    users_cold = np.flatnonzero(np.diff(rel_cold.indptr) > 0)
    users_warm = np.flatnonzero(np.diff(rel_warm.indptr) > 0)
    results = {"dataset": data.name, "n_items": full.n_items, "n_cold_items": int(len(cold)),
               "cold_interactions": int(rel_cold.nnz), "cold_users": int(len(users_cold)),
               "warm_test_interactions": int(rel_warm.nnz), "seed": a.seed, "models": {}}
    results["models"]["random"] = {"cold": random_expectation(full, users_cold, rel_cold),
                                   "warm": random_expectation(full, users_warm, rel_warm)}
    print(f"[cold_start] {full.summary()}; {len(cold)} cold items with {rel_cold.nnz} held-out interactions "
          f"({len(users_cold)} users)", flush=True)

    for name in a.models:
        config, text_model = MODELS[name]
        over = {"trainer": {}, "encoder": {}}
        if a.max_epochs is not None:
            over["trainer"]["max_epochs"] = a.max_epochs
        if a.patience is not None:
            over["patience"] = a.patience
        if text_model:
            over["encoder"].update({k: v for k, v in (("lm_path", a.lm_path), ("cache_dir", a.cache_dir)) if v})
            over["encoder"].update(json.loads(a.encoder_args) if a.encoder_args else {})
            over["fast_cosine"] = a.fast_cosine
        spec, loader, targs, patience = build(config, over)
        t0 = time.perf_counter()
        trained, epochs = train(spec, warm if text_model else full, loader, targs, patience, a.seed,
                                Path(a.workdir) / name, a.reuse)
        fit_s = time.perf_counter() - t0
        variants = {name: {}}
        if text_model and spec["init_args"]["encoder"]["class_path"].endswith("AlphaRec"):
            variants = {name if k == 0 else f"{name}+knn{k}": {"cold_neighbors": k} for k in a.cold_neighbors}
        for label, enc_args in variants.items():
            model = rebind(spec, trained, full, enc_args) if text_model else trained
            res = {"cold": rank_metrics(model, full, users_cold, rel_cold),
                   "warm": rank_metrics(model, full, users_warm, rel_warm),
                   "fit_s": round(fit_s, 1) if epochs is not None else None, "epochs": epochs,
                   "trained_on": "warm catalogue, re-bound to full" if text_model else "full catalogue",
                   "encoder_args": enc_args}
            results["models"][label] = res
            print(f"[cold_start] {label}: cold recall@20 {res['cold']['recall@20']:.4f} ndcg@20 "
                  f"{res['cold']['ndcg@20']:.4f}; warm recall@20 {res['warm']['recall@20']:.4f} ndcg@20 "
                  f"{res['warm']['ndcg@20']:.4f} (fit {fit_s:.0f} s, {epochs} epochs)", flush=True)

    print("\nmodel                  cold R@20  cold N@20  warm R@20  warm N@20")
    for name, r in results["models"].items():
        print(f"{name:<22} {r['cold']['recall@20']:>9.4f}  {r['cold']['ndcg@20']:>9.4f}  "
              f"{r['warm']['recall@20']:>9.4f}  {r['warm']['ndcg@20']:>9.4f}")
    if a.out:
        Path(a.out).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
