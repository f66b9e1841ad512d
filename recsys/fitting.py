"""Fitting a run: the one path from a fit configuration to a finished run directory (CLI, Python API, tuning).

:func:`fit_run` parses ``recsys fit`` options, prepares the data (or takes a dataset object), trains through
Lightning (early stopping on validation, or a fixed number of epochs without one), saves the model, tests it and
writes the run's result files. It also resumes an interrupted run from its full ``checkpoints/last.ckpt`` and refits
on every interaction after early stopping (``--refit-all``).
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from recsys.errors import RecsysError, RunDirError

if TYPE_CHECKING:
    from recsys.data.prepared import PreparedData
    from recsys.datasets.base import RawDataset
    from recsys.runs import Run

__all__ = ["all_train", "fit_run", "flat_hparams", "resume_argv"]

log = logging.getLogger("recsys")

LAST = "last.ckpt"


def _say(text: str, quiet: bool) -> None:
    if not quiet:
        print(f"[recsys] {text}", flush=True)


def resume_argv(run_dir: str | Path, argv: Sequence[str] = ()) -> list[str]:
    """The fit options that continue an interrupted run: its own ``config.yaml``, its directory, then ``argv``.

    Raises:
        RunDirError: the directory has no ``config.yaml`` or no full ``checkpoints/last.ckpt`` to resume from.
    """
    d = Path(run_dir)
    if not (d / "config.yaml").is_file():
        raise RunDirError(f"--resume {str(d)!r}: no config.yaml there (not a run directory)")
    if not (d / "checkpoints" / LAST).is_file():
        raise RunDirError(f"--resume {str(d)!r}: no checkpoints/{LAST} (the run stopped before its first epoch "
                          "ended, or it was fitted without Lightning); fit it again")
    if not (d / "data" / "split.parquet").is_file():
        raise RunDirError(f"--resume {str(d)!r}: no data/split.parquet (the run stopped before its data were saved)")
    return ["--config", str(d / "config.yaml"), *argv, "--run-dir", str(d)]


def flat_hparams(cfg: dict, prefix: str = "") -> dict[str, object]:
    """A nested configuration as one level of dotted keys with scalar values (what loggers show as hparams)."""
    out: dict[str, object] = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_hparams(value, name + "."))
        elif isinstance(value, (list, tuple)):
            out[name] = str(list(value))
        elif value is None or isinstance(value, (bool, int, float, str)):
            out[name] = value
        else:
            out[name] = str(value)
    return out


def all_train(data: PreparedData) -> PreparedData:
    """The same interactions with every one labelled train (the refit of ``--refit-all``)."""
    import numpy as np

    note = f"{data.split_note}; refit on every interaction" if data.split_note else "refit on every interaction"
    return dataclasses.replace(data, labels=np.zeros_like(data.labels), split_note=note, _csr={})


def fit_run(argv: Sequence[str], *, dataset: RawDataset | None = None, callbacks: Sequence = (),
            resume: bool = False, refit_all: bool = False, quiet: bool = False) -> Run:
    """Fit one run from ``recsys fit`` options and return it (finished: model, metrics, logs, pictures).

    Args:
        argv: ``recsys fit`` options (``--config`` paths already resolved; see :mod:`recsys.packaged_configs`).
        dataset: a dataset object to fit on instead of the configured ``data.dataset`` (the Python API); the
            run records its name, and its prepared data are saved in the run as always.
        callbacks: extra Lightning callbacks (the tuner's pruning callback).
        resume: continue the run in ``--run-dir`` from its ``checkpoints/last.ckpt`` (its saved data are reused).
        refit_all: after early stopping, train a fresh model on every interaction for the best epoch count and save
            that one (``refit.json`` says so; the metrics files keep the early-stopped model's held-out metrics).
        quiet: print nothing (the Python API's default is to print; the tuner's trials do not).

    Raises:
        RecsysError: a user mistake (bad option values are reported by the parser).
    """
    from recsys.config import build_fit_parser

    parser = build_fit_parser()
    cfg = parser.parse_args(list(argv))
    if dataset is not None:
        cfg.data.dataset, cfg.data.path = dataset.name, None
    run_dir = Path(cfg.run_dir or f"runs/{time.strftime('%Y%m%d-%H%M%S')}-{_config_name(cfg)}")
    cfg.run_dir = str(run_dir)

    import lightning as L

    from recsys.runs import Run

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    # Under DDP Lightning re-runs this command once per extra rank; only rank 0 writes the run directory.
    rank0 = _launch_rank() == 0
    config_text = parser.dump(cfg, skip_none=False)
    init = parser.instantiate(cfg)
    dm, model = init.data, init.model
    if resume:
        dm.data = Run(run_dir).data()  # the interrupted run's own split, whatever its data source was
    elif dataset is not None:
        dm.use_dataset(dataset)
    # The data first: a dataset that fails to load or prepare leaves no half-made run directory behind.
    data = dm.prepare()
    run = Run.create(run_dir, config_text) if rank0 else Run(run_dir)
    if rank0 and not resume:
        run.save_data(data)
    _say(data.summary(), quiet)
    _hand_over_gallery(model, data)

    t0 = time.perf_counter()
    stats: dict = {"epochs": None, "train_epoch_s": None}
    ckpt = run.checkpoints_dir / LAST if resume else None
    if resume:
        _say(f"resuming {run_dir} from checkpoints/{LAST}", quiet)
    model.fit(data, trainer=lambda module: stats.update(
        _fit_lightning(init, cfg, module, dm, run, callbacks, ckpt, quiet)))
    if not rank0:
        return run
    model.eval()
    fit_s = time.perf_counter() - t0

    from recsys.metrics.evaluate import evaluate

    t1 = time.perf_counter()
    per_user = run.artifact("per_user_test.parquet") if data.has_split("test") else None
    test = evaluate(model, data, "test", per_user_out=per_user)
    eval_s = time.perf_counter() - t1
    valid = evaluate(model, data, "valid")
    run.write_json("metrics.json", test)
    run.write_json("valid_metrics.json", valid)
    if refit_all:
        model, data, refit = _refit_all(parser, cfg, data, stats, run, quiet)
        fit_s = time.perf_counter() - t0
        run.write_json("refit.json", refit)
    if rank0:
        run.save_data(data)
    run.save_model(model, data)
    run.write_json("timing.json", {"fit_s": fit_s, "test_eval_s": eval_s, **stats, "peak_rss_mib": _peak_rss_mib()})
    _plot_curves(run)
    _say(f"fit {fit_s:.1f} s, test evaluation {eval_s:.2f} s; run directory {run_dir}", quiet)
    if not quiet:
        from recsys.metrics.report import format_metrics

        if test:
            print(("test metrics (of the early-stopped model, before the refit):\n" if refit_all
                   else "test metrics:\n") + format_metrics(test), flush=True)
        else:
            print("[recsys] no test interactions: metrics.json is empty", flush=True)
    return run


def _refit_all(parser, cfg, data: PreparedData, stats: dict, run: Run, quiet: bool):
    """Train a fresh model on every interaction for the early-stopped run's best epoch count.

    Returns:
        ``(model, all-train data, refit.json contents)``.
    """
    import lightning as L

    from recsys.baselines.base import Baseline

    best = stats.get("best_epochs")
    init = parser.instantiate(cfg)
    dm, model = init.data, init.model
    merged = all_train(data)
    dm.data = merged
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    if isinstance(model, Baseline):
        epochs = None
        model.fit(merged)
    else:
        if best is None:
            raise RecsysError("--refit-all needs a validation part to pick the epoch count (this run has none: "
                              "drop --refit-all, or set --data.split.valid_from_train 0.1)")
        epochs = int(best)
        _say(f"refit on all {len(merged.labels)} interactions for {epochs} epochs (the best epoch count of the "
             "early-stopped fit); no validation. metrics.json keeps the early-stopped model's held-out metrics; "
             "model.pt is the refit model", quiet)
        import lightning.pytorch as pl

        targs = dict(vars(init.trainer))
        targs.update(max_epochs=epochs, min_epochs=epochs, limit_val_batches=0, logger=False,
                     enable_checkpointing=False, callbacks=[], default_root_dir=str(run.path))
        targs.pop("max_time", None)
        model.fit(merged, trainer=lambda module: pl.Trainer(**targs).fit(module, datamodule=dm))
    model.eval()
    return model, merged, {"epochs": epochs, "interactions": int(len(merged.labels)),
                           "note": "model.pt was refit on every interaction (train, valid and test) for the best "
                                   "epoch count of the early-stopped fit; metrics.json and valid_metrics.json are "
                                   "the early-stopped model's held-out metrics"}


def _fit_lightning(init, cfg, model, dm, run, extra_callbacks=(), ckpt_path=None, quiet=False) -> dict:
    """Train a ``RecModel`` with Lightning (early stopping, best checkpoint restored); the model-specific part of fit.

    Returns:
        ``{"epochs", "best_epochs", "train_epoch_s"}`` for ``timing.json`` (``best_epochs``: epochs trained up to the
        restored best checkpoint; None without validation).
    """
    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    data = dm.prepare()
    targs = dict(vars(init.trainer))
    callbacks = list(targs.get("callbacks") or []) + list(extra_callbacks)
    # A full checkpoint (weights, optimizer, loops, callbacks, RNG) after every epoch: `recsys fit --resume`.
    last = ModelCheckpoint(dirpath=run.checkpoints_dir, filename="last", monitor=None, save_top_k=1,
                           save_weights_only=False, enable_version_counter=False)
    best = None
    if data.has_split("valid"):
        monitor = cfg.early_stopping.monitor
        best = ModelCheckpoint(dirpath=run.checkpoints_dir, filename="best", monitor=monitor, mode="max",
                               save_top_k=1, save_weights_only=True, enable_version_counter=False)
        callbacks += [best, last, EarlyStopping(monitor=monitor, mode="max", patience=cfg.early_stopping.patience)]
    else:
        # A train/test benchmark (the papers' protocol): a fixed number of epochs, the last one kept, and the test
        # split ranked every ``check_val_every_n_epoch`` epochs as a learning curve only.
        callbacks.append(last)
        every = targs.get("check_val_every_n_epoch") or 1
        if data.has_split("test"):
            _say(f"no validation part: {targs.get('max_epochs')} epochs without early stopping; test metrics every "
                 f"{every} epochs are logged as test_monitor/* (test-set monitoring, not used for model selection; "
                 "--data.split.valid_from_train 0.1 carves a validation part)", quiet)
        else:
            _say(f"no validation or test part: {targs.get('max_epochs')} epochs, no evaluation", quiet)
            targs["limit_val_batches"] = 0
    targs["callbacks"] = callbacks
    csv_log = CSVLogger(save_dir=str(run.path), name="logs", version="")
    given = targs.get("logger")
    if given in (None, True):
        targs["logger"] = csv_log
    elif given is not False:
        # A configured logger (TensorBoard, MLflow, ...) gets everything; the run's own CSV log is kept beside it,
        # because learning_curve.png, `recsys plot` and resumption read logs/metrics.csv.
        given = list(given) if isinstance(given, (list, tuple)) else [given]
        if not any(isinstance(g, CSVLogger) for g in given):
            given.append(csv_log)
        targs["logger"] = given
    targs.setdefault("default_root_dir", str(run.path))
    kept = _log_rows_before(run, ckpt_path) if ckpt_path else None
    trainer = L.Trainer(**targs)
    for logger in trainer.loggers:
        logger.log_hyperparams({k: v for k, v in flat_hparams(cfg.as_dict()).items() if k != "config"})
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path, weights_only=True if ckpt_path else None)
    if kept:
        _prepend_log_rows(run, kept)
    stats = {"epochs": trainer.current_epoch, "best_epochs": None, "train_epoch_s": model.epoch_times or None}
    if trainer.world_size > 1:
        import torch.distributed as dist

        # The checkpoint path is known on rank 0 only; the other ranks are done once training ends.
        if dist.is_initialized():
            dist.barrier()
        if trainer.global_rank != 0:
            return stats
        dist.destroy_process_group()
    if best is not None and best.best_model_path:
        stats["best_epochs"] = _epochs_of(best.best_model_path)
        model.load_state_dict(run.lightning_state(best.best_model_path))
    elif last.last_model_path or (run.checkpoints_dir / LAST).exists():
        pass  # the model already holds the last epoch's weights
    model.eval()
    return stats


def _log_rows_before(run, checkpoint) -> list[dict] | None:
    """The CSV log's rows up to a checkpoint's epoch (Lightning's CSVLogger deletes the file when it starts)."""
    import csv

    path = run.path / "logs" / "metrics.csv"
    done = _epochs_of(checkpoint)
    if not path.is_file() or done is None:
        return None
    with path.open(newline="") as f:
        # Rows of the epoch the process died in were logged after the checkpoint: they are trained again.
        return [row for row in csv.DictReader(f) if row.get("epoch", "") != "" and int(row["epoch"]) < done]


def _prepend_log_rows(run, rows: list[dict]) -> None:
    """Put the interrupted fit's log rows back in front of the resumed fit's (one continuous ``metrics.csv``)."""
    import csv
    import io

    from recsys.io_utils import atomic_write_text

    path = run.path / "logs" / "metrics.csv"
    new: list[dict] = []
    if path.is_file():
        with path.open(newline="") as f:
            new = list(csv.DictReader(f))
    keys = sorted({k for row in rows + new for k in row})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows + new)
    atomic_write_text(path, buf.getvalue())


def _epochs_of(checkpoint: str) -> int | None:
    """Epochs trained when a Lightning checkpoint was written (its ``epoch`` is 0-based)."""
    import torch

    try:
        return int(torch.load(checkpoint, map_location="cpu", weights_only=True)["epoch"]) + 1
    except Exception:  # an unreadable checkpoint is reported when its weights are loaded next
        return None


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
