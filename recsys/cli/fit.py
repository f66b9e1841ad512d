"""``recsys fit``: train a model from a YAML config into a run directory."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from recsys.cli._common import _launch_rank, _peak_rss_mib, format_metrics


def _with_config_paths(argv: list[str]) -> list[str]:
    """``--config NAME`` resolved to the packaged config's path; the default config when none is given."""
    from recsys.packaged_configs import DEFAULT_CONFIG, resolve_config

    out, i, seen = [], 0, False
    while i < len(argv):
        a = argv[i]
        if a == "--config" and i + 1 < len(argv):
            out += [a, resolve_config(argv[i + 1])]
            i, seen = i + 2, True
            continue
        if a.startswith("--config="):
            out.append("--config=" + resolve_config(a.split("=", 1)[1]))
            seen = True
        else:
            out.append(a)
        i += 1
    return out if seen or "-h" in argv or "--help" in argv else ["--config", resolve_config(DEFAULT_CONFIG), *out]


def cmd_fit(argv: list[str]) -> int:
    argv = _with_config_paths(argv)
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

