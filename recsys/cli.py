"""The ``recsys`` command: ``fit``, ``evaluate``, ``score``, ``data``.

Imports are lazy: ``score`` and ``export`` from a run's stored tables never import jsonargparse, Lightning,
torch-geometric or transformers, so a scoring job starts in about the time it takes to import torch. Commands that
rebuild the model (``evaluate``, ``score`` of a model without tables or with ``--new-items``) re-validate the run's
config with the fit parser first (see :mod:`recsys.runs`), which imports Lightning.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

METRIC_ORDER = ("recall", "precision", "ndcg", "mrr", "hit", "map")


class _NoAdverts(logging.Filter):
    """Drops Lightning's suggestions to install third-party services (not messages about the run)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in str(record.msg)


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s", stream=sys.stderr)
    # Lightning's import gives the "lightning" logger its own console handler and lets its records reach the root
    # handler too, so every Lightning line printed twice: stop them at Lightning's handler.
    logging.getLogger("lightning").propagate = False
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_NoAdverts())


def format_metrics(metrics: dict[str, float]) -> str:
    """A small text table: one row per metric, one column per cut-off."""
    ks = sorted({int(k.split("@")[1]) for k in metrics if "@" in k})
    names = [m for m in METRIC_ORDER if any(k.startswith(m + "@") for k in metrics)]
    lines = ["metric     " + "".join(f"{'@' + str(k):>10}" for k in ks)]
    for m in names:
        lines.append(f"{m:<11}" + "".join(f"{metrics.get(f'{m}@{k}', float('nan')):>10.4f}" for k in ks))
    return "\n".join(lines)


def _write_json(path: Path, obj) -> None:
    """An ``--out`` JSON file outside any run directory (results inside a run go through ``Run.write_json``)."""
    from recsys.io_utils import atomic_write_text

    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


# ---------------------------------------------------------------------------------------------------- fit
def _default_config() -> str | None:
    cfg = Path(__file__).resolve().parents[1] / "configs" / "mf_bpr.yaml"
    return str(cfg) if cfg.exists() else None


def cmd_fit(argv: list[str]) -> int:
    if not any(a == "--config" or a.startswith("--config=") for a in argv) and _default_config():
        argv = ["--config", _default_config(), *argv]
    from recsys.config import build_fit_parser

    parser = build_fit_parser()
    cfg = parser.parse_args(argv)
    run_dir = Path(cfg.run_dir or f"runs/{time.strftime('%Y%m%d-%H%M%S')}-{_config_name(cfg)}")
    cfg.run_dir = str(run_dir)

    import lightning as L

    from recsys.runs import Run

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    # Under DDP Lightning re-runs this command once per extra rank; only rank 0 writes the run directory.
    rank0 = _launch_rank() == 0
    run = Run.create(run_dir, parser.dump(cfg, skip_none=False)) if rank0 else Run(run_dir)
    init = parser.instantiate(cfg)
    dm, model = init.data, init.model
    data = dm.prepare()
    if rank0:
        run.save_data(data)
        print(f"[recsys] {data.summary()}", flush=True)
    _hand_over_gallery(model, data)

    t0 = time.perf_counter()
    stats: dict = {"epochs": None, "train_epoch_s": None}
    model.fit(data, trainer=lambda module: stats.update(_fit_lightning(init, cfg, module, dm, run)))
    if not rank0:
        return 0
    model.eval()
    fit_s = time.perf_counter() - t0
    run.save_model(model, data)

    from recsys.metrics.evaluate import evaluate

    t1 = time.perf_counter()
    per_user = run.artifact("per_user_test.parquet") if data.has_split("test") else None
    test = evaluate(model, data, "test", per_user_out=per_user)
    eval_s = time.perf_counter() - t1
    valid = evaluate(model, data, "valid")
    run.write_json("metrics.json", test)
    run.write_json("valid_metrics.json", valid)
    run.write_json("timing.json", {"fit_s": fit_s, "test_eval_s": eval_s, **stats, "peak_rss_mib": _peak_rss_mib()})
    _plot_curves(run)
    print(f"[recsys] fit {fit_s:.1f} s, test evaluation {eval_s:.2f} s; run directory {run_dir}")
    if test:
        print("test metrics:\n" + format_metrics(test), flush=True)
    else:
        print("[recsys] no test interactions: metrics.json is empty", flush=True)
    return 0


def _plot_curves(run) -> None:
    """``learning_curve.png`` from the run's CSV log, when the run has one."""
    log_csv = run.path / "logs" / "metrics.csv"
    if not log_csv.exists():
        return
    from recsys.plots import plot_learning_curve

    try:
        plot_learning_curve(log_csv, run.path / "learning_curve.png")
    except ImportError as e:
        print(f"[recsys] no learning_curve.png ({e})", file=sys.stderr)


def _hand_over_gallery(model, data) -> None:
    """Give an encoder that trains against an old run's item table (BT²) that table, before Lightning binds it."""
    from recsys.capabilities import UsesGallery
    from recsys.runs import Run

    part = model.capability(UsesGallery)
    if part is not None and part.gallery_run() is not None:
        part.set_gallery(Run.open(part.gallery_run()).item_table_for(data.item_vocab))


def _launch_rank() -> int:
    import os

    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))


def _peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _config_name(cfg) -> str:
    configs = cfg.get("config") or []
    if configs:
        return Path(str(configs[-1])).stem
    return cfg.model.class_path.rsplit(".", 1)[-1].lower()


def _fit_lightning(init, cfg, model, dm, run) -> dict:
    """Train a ``RecModel`` with Lightning (early stopping, best checkpoint restored); the model-specific part of fit.

    Returns:
        ``{"epochs": ..., "train_epoch_s": [...]}`` for ``timing.json``.
    """
    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    data = dm.prepare()
    targs = dict(vars(init.trainer))
    callbacks = list(targs.get("callbacks") or [])
    if data.has_split("valid"):
        monitor = cfg.early_stopping.monitor
        ckpt = ModelCheckpoint(dirpath=run.checkpoints_dir, filename="best", monitor=monitor, mode="max",
                               save_top_k=1, save_weights_only=True, enable_version_counter=False)
        callbacks += [ckpt, EarlyStopping(monitor=monitor, mode="max", patience=cfg.early_stopping.patience)]
    else:
        # A train/test benchmark (the papers' protocol): a fixed number of epochs, the last one kept, and the test
        # split ranked every ``check_val_every_n_epoch`` epochs as a learning curve only.
        ckpt = ModelCheckpoint(dirpath=run.checkpoints_dir, filename="last", monitor=None, save_top_k=1,
                               save_weights_only=True, enable_version_counter=False)
        callbacks.append(ckpt)
        every = targs.get("check_val_every_n_epoch") or 1
        if data.has_split("test"):
            print(f"[recsys] no validation part: {targs.get('max_epochs')} epochs without early stopping; test "
                  f"metrics every {every} epochs are logged as test_monitor/* (test-set monitoring, not used for "
                  "model selection; --data.split.valid_from_train 0.1 carves a validation part)", flush=True)
        else:
            print(f"[recsys] no validation or test part: {targs.get('max_epochs')} epochs, no evaluation",
                  flush=True)
            targs["limit_val_batches"] = 0
    targs["callbacks"] = callbacks
    if targs.get("logger") in (None, True):
        targs["logger"] = CSVLogger(save_dir=str(run.path), name="logs", version="")
    targs.setdefault("default_root_dir", str(run.path))
    trainer = L.Trainer(**targs)
    trainer.fit(model, datamodule=dm)
    stats = {"epochs": trainer.current_epoch, "train_epoch_s": model.epoch_times or None}
    if trainer.world_size > 1:
        import torch.distributed as dist

        # The checkpoint path is known on rank 0 only; the other ranks are done once training ends.
        if dist.is_initialized():
            dist.barrier()
        if trainer.global_rank != 0:
            return stats
        dist.destroy_process_group()
    if ckpt.best_model_path:
        model.load_state_dict(run.lightning_state(ckpt.best_model_path))
    model.eval()
    return stats


# ---------------------------------------------------------------------------------------------------- serving
INDEX_HELP = ("Item index to rank through, KIND[:OPTION=VALUE,...] (default exact): exact (brute force); "
              "prefix:dim=32 (a Matryoshka prefix; prefix:dim=32,coarse=8,shortlist=200 shortlists at 8 dims, "
              "re-ranks at 32); hamming:shortlist=200 (sign-bit shortlist, float re-rank; hamming:codes_only=true "
              "ranks by the codes alone); lowrank:rank=8 (a low-rank model truncated); quantized "
              "(latent-quantization codes); seismic:n_postings=2000,query_cut=10 (inverted index, SESA); "
              "faiss:hnsw,m=32 (flat, ivf or hnsw; pip install faiss-cpu).")


def _index_spec(text: str):
    """``--index`` values as a typed :class:`recsys.scoring.index.IndexSpec`; a bad spec is argparse's one line."""
    from recsys.scoring.index import parse_index_spec

    try:
        return parse_index_spec(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _add_serving_args(p) -> None:
    """Options shared by ``evaluate`` and ``score``: the item index, and an old run's item table (a gallery)."""
    g = p.add_argument_group("serving (item indexes, compatible galleries)")
    g.add_argument("--index", type=_index_spec, default="exact", metavar="SPEC", help=INDEX_HELP)
    g.add_argument("--gallery", default=None, metavar="RUN",
                   help="Run directory of an old model: score this run's queries against its item table.")


def _is_exact(spec) -> bool:
    from recsys.scoring.index import ExactSpec

    return isinstance(spec, ExactSpec)


# ---------------------------------------------------------------------------------------------------- evaluate
def cmd_evaluate(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="recsys evaluate", description="Full-ranking metrics of a finished run.")
    p.add_argument("--run-dir", "--run_dir", dest="run_dir", required=True)
    p.add_argument("--split", choices=["valid", "test"], default="test")
    p.add_argument("--ks", type=int, nargs="+", default=[10, 20])
    p.add_argument("--out", default=None,
                   help="JSON output (default RUN/eval_<split>.json, RUN/eval_<split>_<index>[_gallery].json with "
                        "--index or --gallery).")
    _add_serving_args(p)
    a = p.parse_args(argv)
    from recsys.metrics.evaluate import beyond_accuracy, evaluate
    from recsys.runs import Run

    run = Run.open(a.run_dir)
    data = run.data()
    model = run.recommender(data)
    gallery = None
    if a.gallery:
        gallery = Run.open(a.gallery).item_table_for(data.item_vocab)
    if not _is_exact(a.index) or gallery is not None:
        # A non-default index or gallery is reported on its own (no beyond-accuracy pass), so defaults stay
        # comparable.
        m = evaluate(model, data, a.split, tuple(a.ks), index=a.index, gallery=gallery)
        print(f"{a.split} metrics (index {a.index}{', gallery ' + a.gallery if a.gallery else ''}):\n"
              + format_metrics(m))
        tag = "_".join(([] if _is_exact(a.index) else [a.index.tag()]) + (["gallery"] if a.gallery else []))
        _write_result(run, a.out, f"eval_{a.split}_{tag}.json", m)
        return 0
    t = time.perf_counter()
    m = evaluate(model, data, a.split, tuple(a.ks))
    if not m:
        print(f"[recsys] the run's data has no {a.split} interactions: nothing to evaluate")
        return 0
    print(f"{a.split} metrics ({time.perf_counter() - t:.2f} s):\n" + format_metrics(m))
    extra = beyond_accuracy(model, data, a.split, tuple(a.ks))
    print("beyond accuracy: " + ", ".join(f"{k} {v:.4g}" for k, v in extra.items()))
    _write_result(run, a.out, f"eval_{a.split}.json", {**m, **extra})
    return 0


def _write_result(run, out: str | None, name: str, obj) -> None:
    if out:
        _write_json(Path(out), obj)
    else:
        run.write_json(name, obj)


# ---------------------------------------------------------------------------------------------------- score
def cmd_score(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="recsys score", description="Top-k recommendations for users, as Parquet.",
        epilog="Any --trainer.* option (e.g. --trainer.strategy ddp --trainer.devices 2 --trainer.accelerator gpu "
               "--trainer.num_nodes N) scores with Lightning's trainer.predict instead: OUT becomes a directory of "
               "shards (--shard-users, default 50000), written by the rank that scored each.")
    p.add_argument("--run-dir", "--run_dir", dest="run_dir", required=True)
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--out", required=True, help="Output Parquet file.")
    p.add_argument("--users", default=None, help="File of external user IDs (one per line, or a 'user' column).")
    p.add_argument("--keep-seen", action="store_true", help="Do not exclude the users' training items.")
    p.add_argument("--chunk-size", type=int, default=None, help="Users per GEMM chunk (default: 256 MiB budget).")
    p.add_argument("--shard-users", type=int, default=None,
                   help="Write OUT as a directory of Parquet shards of this many users, resumable.")
    p.add_argument("--num-shards", type=int, default=1, help="Workers sharing the job (external schedulers).")
    p.add_argument("--shard-index", type=int, default=0, help="This worker's index in 0..num-shards-1.")
    p.add_argument("--precision", choices=["auto", "32", "bf16"], default="auto",
                   help="Score dtype: bf16 shortlists in bf16 and re-ranks in float32; auto = bf16 on CUDA with "
                        "bf16 support, float32 on CPU.")
    _add_serving_args(p)
    p.add_argument("--explain", action="store_true",
                   help="Add an 'explanation' column: each score's top-3 concepts and their shares (SESA models).")
    p.add_argument("--new-items", default=None,
                   help="Side table (CSV/Parquet: an 'item' column plus the training item attributes) of items "
                        "unseen in training, embedded from their text and ranked with the catalogue (text models; "
                        "with --index, kinds over plain tables: exact, prefix, hamming, seismic, faiss).")
    a, rest = p.parse_known_args(argv)
    if rest:
        if a.new_items:
            p.error("--new-items is not supported with --trainer.* options")
        return _score_lightning(p, a, rest)
    from recsys.scoring.batch import score_run

    t = time.perf_counter()
    n = score_run(a.run_dir, a.out, k=a.k, users_file=a.users, keep_seen=a.keep_seen, chunk_size=a.chunk_size,
                  shard_users=a.shard_users, num_shards=a.num_shards, shard_index=a.shard_index, index=a.index,
                  gallery=a.gallery, explain=a.explain, precision=a.precision, new_items=a.new_items)
    how = "" if _is_exact(a.index) else f" (index {a.index})"
    print(f"[recsys] wrote {n} rows to {a.out}{how} in {time.perf_counter() - t:.2f} s")
    return 0


def _score_lightning(p, a, rest: list[str]) -> int:
    """``recsys score`` with ``--trainer.*`` options: Lightning's predict loop (DDP etc.), one shard per step."""
    if not rest[0].startswith("--trainer."):
        p.error(f"unrecognized arguments: {' '.join(rest)}")
    if a.num_shards != 1 or not _is_exact(a.index) or a.gallery or a.explain:
        p.error("--trainer.* scoring supports neither --num-shards (the ranks split the shards) nor a non-exact "
                "--index, --gallery or --explain")
    import lightning as L
    from jsonargparse import ArgumentParser

    tp = ArgumentParser(prog="recsys score", default_env=False)
    tp.add_class_arguments(L.Trainer, "trainer", instantiate=False)
    targs = dict(vars(tp.instantiate(tp.parse_args(rest)).trainer))
    from recsys.scoring.predict import predict_run, read_manifest

    t = time.perf_counter()
    n = predict_run(a.run_dir, a.out, k=a.k, users_file=a.users, keep_seen=a.keep_seen, chunk_size=a.chunk_size,
                    shard_users=a.shard_users, precision=a.precision, trainer=targs)
    if _launch_rank() == 0:
        m = read_manifest(a.out)
        print(f"[recsys] wrote {n} rows on rank 0 to {a.out} in {time.perf_counter() - t:.2f} s; manifest: "
              f"{m['rows']} rows in {len(m['shards'])}/{m['n_shards']} shards, complete={m['complete']}")
    return 0


# ---------------------------------------------------------------------------------------------------- export
def cmd_export(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="recsys export",
                                description="Write user and item embeddings (Parquet, external IDs) for ANN serving.")
    p.add_argument("--run-dir", "--run_dir", dest="run_dir", required=True)
    p.add_argument("--out", required=True, help="Output directory.")
    a = p.parse_args(argv)
    from recsys.scoring.export import export_run

    info = export_run(a.run_dir, a.out)
    print(f"[recsys] exported {info['n_users']} users and {info['n_items']} items (dim {info['dim']}) to {a.out}")
    return 0


# ---------------------------------------------------------------------------------------------------- data
def cmd_data(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="recsys data", description="Load a dataset and print what it contains.")
    p.add_argument("--dataset", default="synthetic")
    p.add_argument("--path", default=None)
    a = p.parse_args(argv)
    from recsys.data.prepared import prepare
    from recsys.datasets import load_dataset

    raw = load_dataset(a.dataset, a.path)
    print(prepare(raw).summary())
    if raw.items is not None:
        print(f"item side table: {len(raw.items)} rows, columns {list(raw.items.columns)}")
    if raw.users is not None:
        print(f"user side table: {len(raw.users)} rows, columns {list(raw.users.columns)}")
    return 0


COMMANDS = {"fit": cmd_fit, "evaluate": cmd_evaluate, "score": cmd_score, "export": cmd_export, "data": cmd_data}
VERBS = {
    "fit": "train a model from a YAML config into a run directory (model, metrics, logs, learning curve)",
    "evaluate": "full-ranking metrics of a finished run on its valid or test split",
    "score": "top-k recommendations of a finished run for its users, written as Parquet",
    "export": "user and item embeddings of a finished run, as Parquet with external IDs",
    "data": "load a dataset and print what it holds (sizes, split, side tables)",
}


def _usage() -> str:
    lines = ["usage: recsys COMMAND [options]   (recsys COMMAND --help for its options)", "", "commands:"]
    lines += [f"  {verb:<10}{text}" for verb, text in VERBS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] not in COMMANDS:
        print(f"recsys: unknown command {argv[0]!r}\n{_usage()}", file=sys.stderr)
        return 2
    _setup_logging()
    from recsys.errors import RecsysError

    try:
        return COMMANDS[argv[0]](argv[1:])
    except RecsysError as e:
        print(f"recsys {argv[0]}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
