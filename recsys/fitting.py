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

from recsys.errors import CheckpointError, RecsysError, RunDirError, UsageError

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
        RunDirError: the directory has no ``config.yaml`` or no full ``checkpoints/last.ckpt`` to resume from, or
            holds a finished run.
        CheckpointError: ``checkpoints/last.ckpt`` cannot be read.
    """
    d = Path(run_dir)
    if not d.is_dir():
        what = "is not a directory" if d.exists() else "does not exist"
        raise RunDirError(f"--resume {str(d)!r} {what} (pass the directory of an interrupted `recsys fit`)")
    if not (d / "config.yaml").is_file():
        raise RunDirError(f"--resume {str(d)!r}: no config.yaml there (not a run directory)")
    if not (d / "checkpoints" / LAST).is_file():
        raise RunDirError(f"--resume {str(d)!r}: no checkpoints/{LAST} (the run stopped before its first epoch "
                          "ended, or it was fitted without Lightning); fit it again")
    if not (d / "data" / "split.parquet").is_file():
        raise RunDirError(f"--resume {str(d)!r}: no data/split.parquet (the run stopped before its data were saved)")
    if (d / "timing.json").is_file():
        raise RunDirError(f"--resume {str(d)!r}: the run is finished (timing.json); --resume continues an "
                          "interrupted fit (fit it again with --overwrite, or into another directory)")
    _check_checkpoint(d / "checkpoints" / LAST)
    return ["--config", str(d / "config.yaml"), *argv, "--run-dir", str(d)]


def _check_checkpoint(path: Path) -> None:
    """Read a full Lightning checkpoint once (as Lightning will, ``weights_only``) before anything is rebuilt.

    Raises:
        CheckpointError: it is truncated, corrupted or not a Lightning checkpoint of a recsys fit.
    """
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for damaged files
        text = " ".join(str(e).split())[:200]
        raise CheckpointError(f"cannot resume from {str(path)!r}: it is truncated, corrupted or not a checkpoint "
                              f"({type(e).__name__}: {text}); fit again with --overwrite") from None
    if not isinstance(ckpt, dict) or not {"state_dict", "epoch", "loops"} <= set(ckpt):
        raise CheckpointError(f"cannot resume from {str(path)!r}: not a full Lightning checkpoint (no state_dict, "
                              "epoch and loop state); fit again with --overwrite")


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
            resume: bool = False, refit_all: bool = False, quiet: bool = False, overwrite: bool = False) -> Run:
    """Fit one run from ``recsys fit`` options and return it (finished: model, metrics, logs, pictures).

    Every option is checked, the model and the Trainer are built and the data are prepared before the run directory
    is touched: a mistake leaves no directory behind and an existing run byte-identical.

    Args:
        argv: ``recsys fit`` options (``--config`` paths already resolved; see :mod:`recsys.packaged_configs`).
        dataset: a dataset object to fit on instead of the configured ``data.dataset`` (the Python API); the
            run records its name, and its prepared data are saved in the run as always.
        callbacks: extra Lightning callbacks (the tuner's pruning callback).
        resume: continue the run in ``--run-dir`` from its ``checkpoints/last.ckpt`` (its saved data are reused).
        refit_all: after early stopping, train a fresh model on every interaction for the best epoch count and save
            that one (``refit.json`` says so; the metrics files keep the early-stopped model's held-out metrics).
        quiet: print nothing (the Python API's default is to print; the tuner's trials do not).
        overwrite: replace a run already in ``--run-dir``. The old run is moved aside once the new data are
            prepared, deleted when the new fit finishes, and put back when it fails.

    Raises:
        UsageError: an option out of range, or a ``--run-dir`` that is a file, a directory that is not a run, or a
            run (without ``overwrite`` or ``resume``).
        RecsysError: another user mistake (bad option values are reported by the parser).
    """
    from recsys.config import build_fit_parser, check_fit_options, instantiate

    if resume and overwrite:
        raise UsageError("--overwrite replaces a run and --resume continues one: pass one of them")
    parser = build_fit_parser()
    cfg = parser.parse_args(list(argv))
    check_fit_options(cfg)
    if dataset is not None:
        cfg.data.dataset, cfg.data.path = dataset.name, None
    if cfg.run_dir is not None and not str(cfg.run_dir).strip():
        raise UsageError("--run-dir is empty: give a directory, or leave it out for runs/<time>-<config>")
    explicit = cfg.run_dir is not None
    run_dir = Path(cfg.run_dir or f"runs/{time.strftime('%Y%m%d-%H%M%S')}-{_config_name(cfg)}")
    # Under DDP Lightning re-runs this command once per extra rank; only rank 0 writes the run directory.
    rank0 = _launch_rank() == 0
    if rank0 and not resume and explicit:
        _check_run_dir(run_dir, overwrite)  # a default name is made unique when it is claimed

    import lightning as L

    from recsys.runs import Run

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    init = instantiate(parser, cfg)
    dm, model = init.data, init.model
    _check_model_setup(model, dm, init.trainer)
    if cfg.transfer_from and not resume:
        from recsys.transfer import check_transfer

        check_transfer(model, cfg.transfer_from)
    if resume:
        dm.data = Run(run_dir).data()  # the interrupted run's own split, whatever its data source was
    elif dataset is not None:
        dm.use_dataset(dataset)
    # The data first: a dataset that fails to load or prepare leaves no half-made run directory behind.
    data = dm.prepare()
    _check_epochs(cfg, data)
    claim = None
    if rank0 and not resume:
        run_dir, claim = _claim_run_dir(run_dir, explicit, overwrite)
    cfg.run_dir = str(run_dir)
    config_text = parser.dump(cfg, skip_none=False)
    try:
        run = _fit_into(run_dir, config_text, parser, cfg, init, data, callbacks, resume, refit_all, quiet, rank0)
    except BaseException:
        if claim is not None:
            claim.abandon(run_dir)
        raise
    if claim is not None:
        claim.finish()
    return run


def _fit_into(run_dir: Path, config_text: str, parser, cfg, init, data: PreparedData, callbacks: Sequence,
              resume: bool, refit_all: bool, quiet: bool, rank0: bool) -> Run:
    """Train, save, test and write the result files of a run whose directory is claimed (:func:`fit_run`)."""
    from recsys.runs import Run

    dm, model = init.data, init.model
    if rank0 and (not resume or _config_changed(run_dir, config_text)):
        run = Run.create(run_dir, config_text)
    else:
        # A resumed run keeps its own config.yaml, byte for byte (and so the hash model.pt will record).
        run = Run(run_dir)
    if rank0 and not resume:
        run.save_data(data)
    _say(data.summary(), quiet)
    _hand_over_gallery(model, data)

    t0 = time.perf_counter()
    stats: dict = {"epochs": None, "train_epoch_s": None}
    ckpt = run.checkpoints_dir / LAST if resume else None
    if resume:
        _say(f"resuming {run_dir} from checkpoints/{LAST}", quiet)
    elif cfg.transfer_from:
        from recsys.transfer import transfer_weights

        moved = transfer_weights(model, data, cfg.transfer_from)
        if rank0:
            run.write_json("transfer.json", moved)
        _say(f"transferred {moved['loaded']} tensors from {cfg.transfer_from} (rebuilt from this data: "
             f"{len(moved['rebuilt'])}, ignored: {len(moved['ignored'])})", quiet)
    from recsys.model import RecModel

    if isinstance(model, RecModel) and cfg.trainer.get("max_epochs") == 0 and not resume:
        # Zero-shot: the model is evaluated as bound (and transferred), with no training on this data.
        model.bind(data)
        stats = {"epochs": 0, "best_epochs": None, "train_epoch_s": None}
        _say("--trainer.max_epochs 0: no training on this data", quiet)
    else:
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
    cold = {}
    if data.cold_items is not None:
        from recsys.metrics.cold import cold_item_metrics

        cold = cold_item_metrics(model, data)
        run.write_json("cold_metrics.json", cold)
    if refit_all:
        model, data, refit = _refit_all(parser, cfg, data, stats, run, quiet)
        fit_s = time.perf_counter() - t0
        run.write_json("refit.json", refit)
        run.save_data(data)  # the refit model is bound to the all-train data (saved before training otherwise)
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
        if cold:
            print(_cold_line(cold), flush=True)
    return run


def _cold_line(cold: dict) -> str:
    """One line of the cold-item protocol's headline metrics against the random ranking."""
    return (f"cold items ({cold['cold_items']} held out, {cold['users']} users): recall@20 {cold['recall@20']:.4f}, "
            f"ndcg@20 {cold['ndcg@20']:.4f} (random {cold['random_ndcg@20']:.4f}, "
            f"{cold['ndcg@20_vs_random']:.1f}x); cold_metrics.json")


#: entries that only a run directory has: ``--overwrite`` deletes a directory only when it holds ``config.yaml`` and
#: one of these (a user's own folder with a config.yaml of theirs is never taken for a run).
_RUN_MARKERS = ("model.pt", "checkpoints", "data", "logs", "timing.json", "metrics.json")


def _check_run_dir(run_dir: Path, overwrite: bool) -> None:
    """Refuse a ``--run-dir`` that a fit must not write into, before anything is built.

    A new path or an empty directory is used; a directory holding a run is replaced only with ``overwrite``; a
    file, or a directory that holds other things, is never written into.

    Raises:
        UsageError: the path is a file (or another non-directory), a non-empty directory that is not a run, or a run
            (without ``overwrite``), or it is the working directory or one above it.
    """
    import os

    where = str(run_dir)
    if run_dir.is_symlink() and not run_dir.exists():
        raise UsageError(f"--run-dir {where!r} is a dangling symbolic link: give a new directory")
    if not run_dir.exists():
        parent = next((p for p in run_dir.absolute().parents if p.exists()), None)
        if parent is not None and not parent.is_dir():
            raise UsageError(f"--run-dir {where!r}: {str(parent)!r} is not a directory")
        if parent is not None and not os.access(parent, os.W_OK | os.X_OK):
            raise UsageError(f"--run-dir {where!r}: cannot create it, {str(parent)!r} is not writable")
        return
    if not run_dir.is_dir():
        raise UsageError(f"--run-dir {where!r} is not a directory (a file or a device): give a new or empty "
                         "directory")
    entries = sorted(p.name for p in run_dir.iterdir())
    if not entries:
        return
    if not (run_dir / "config.yaml").is_file():
        shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise UsageError(f"--run-dir {where!r} exists and is not a run directory (it holds {shown} and no "
                         "config.yaml): give a new or empty directory")
    if not overwrite:
        raise UsageError(f"--run-dir {where!r} already holds a run: pass --overwrite to replace it (once the new data "
                         f"are prepared), --resume {where} to continue it, or give another directory")
    if run_dir.is_symlink():
        raise UsageError(f"--run-dir {where!r} is a symbolic link: --overwrite replaces a directory, so give the one "
                         f"it points to ({str(run_dir.resolve())!r})")
    cwd = Path.cwd().resolve()
    if run_dir.resolve() in (cwd, *cwd.parents, Path.home().resolve()):
        raise UsageError(f"--run-dir {where!r} is the working directory, one above it or the home directory: "
                         "--overwrite would delete it; give the run's own directory")
    if not any((run_dir / m).exists() for m in _RUN_MARKERS):
        raise UsageError(f"--run-dir {where!r} has a config.yaml but nothing else a run holds "
                         f"({', '.join(_RUN_MARKERS)}): --overwrite replaces runs only; give a new or empty directory")


def _claim_run_dir(run_dir: Path, explicit: bool, overwrite: bool) -> tuple[Path, _Claim]:
    """Make the run directory, once the data are prepared; returns it and what to undo should the fit fail.

    A default name (no ``--run-dir``) gets a ``-2``, ``-3``, ... suffix when a fit started in the same second took
    it: the directory is made with ``exist_ok=False``, so two fits never share one. A ``--run-dir`` is checked
    again (another process may have made it while the data were prepared); a run in it (``overwrite``) is moved
    aside to a hidden sibling, deleted when the new fit finishes.

    Raises:
        UsageError: see :func:`_check_run_dir`.
    """
    if not explicit:
        for n in range(1, 10_000):
            candidate = run_dir if n == 1 else run_dir.with_name(f"{run_dir.name}-{n}")
            try:
                candidate.mkdir(parents=True, exist_ok=False)
            except FileExistsError:
                if not candidate.exists():  # a parent such as runs/ is a file
                    raise RunDirError(f"run directory {str(candidate)!r} cannot be made: a parent is not a "
                                      "directory (pass --run-dir)") from None
                continue
            except OSError as e:
                raise RunDirError(f"run directory {str(candidate)!r} cannot be made: {e.strerror or e}") from None
            return candidate, _Claim(created=True)
        raise RunDirError(f"no free run directory name next to {str(run_dir)!r}: pass --run-dir")
    _check_run_dir(run_dir, overwrite)
    if run_dir.is_dir() and not (run_dir / "config.yaml").is_file():
        return run_dir, _Claim(created=False)  # an empty directory made by the user
    claim = _Claim(created=True)
    if run_dir.is_dir():
        import os

        claim.aside = run_dir.with_name(f".{run_dir.name}.replaced-{os.getpid()}")
        run_dir.rename(claim.aside)
    try:
        run_dir.mkdir(parents=True, exist_ok=False)
    except BaseException as e:
        if claim.aside is not None and not run_dir.exists():
            claim.aside.rename(run_dir)
        if isinstance(e, FileExistsError):
            raise UsageError(f"--run-dir {str(run_dir)!r} was made by another process while the data were "
                             "prepared: give another directory") from None
        if isinstance(e, OSError):
            raise RunDirError(f"--run-dir {str(run_dir)!r} cannot be made: {e.strerror or e}") from None
        raise
    return run_dir, claim


@dataclasses.dataclass
class _Claim:
    """How :func:`fit_run` came by its run directory, to undo it after a failure (:meth:`abandon`).

    Args:
        created: the directory was made by this fit (else it was an empty directory already).
        aside: where the run it replaces (``--overwrite``) was moved, or None.
    """

    created: bool
    aside: Path | None = None

    def abandon(self, run_dir: Path) -> None:
        """After a failed fit: put an overwritten run back, or remove a new run that cannot be resumed.

        A new run with a full ``checkpoints/last.ckpt`` is kept (``recsys fit --resume`` continues it); one without
        holds only the configuration and the data of a fit that never finished an epoch.
        """
        import shutil

        if self.aside is not None:
            shutil.rmtree(run_dir, ignore_errors=True)
            if self.aside.exists() and not run_dir.exists():
                self.aside.rename(run_dir)
            return
        if not run_dir.is_dir() or (run_dir / "checkpoints" / LAST).exists():
            return
        if self.created:
            shutil.rmtree(run_dir, ignore_errors=True)
            return
        for entry in run_dir.iterdir():  # the user's own (empty) directory stays, empty again
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)

    def finish(self) -> None:
        """After a finished fit: delete the run it replaced."""
        if self.aside is not None:
            import shutil

            shutil.rmtree(self.aside, ignore_errors=True)


def _config_changed(run_dir: Path, config_text: str) -> bool:
    """Whether a resumed run's options differ from its ``config.yaml`` (options given after ``--resume``)."""
    path = run_dir / "config.yaml"
    return not path.is_file() or path.read_text() != config_text


def _check_model_setup(model, dm, trainer_options) -> None:
    """Build-time checks that need the instantiated parts but no data: the model against the loader, the Trainer.

    Raises:
        UsageError: the model refuses the loader or its optimizer (:meth:`recsys.model.RecModel.check_setup`), or
            Lightning refuses the Trainer options (an accelerator, device count, precision or strategy).
    """
    from recsys.model import RecModel

    if isinstance(model, RecModel):
        model.check_setup(dm.loader)
        _check_trainer(trainer_options)


def _check_trainer(trainer_options) -> None:
    """Build a Trainer from the options once, without logger, callbacks or checkpoints, to see Lightning accept them.

    Raises:
        UsageError: Lightning's refusal, in one line.
    """
    import lightning.pytorch as pl
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    targs = dict(vars(trainer_options))
    targs.update(logger=False, callbacks=None, enable_checkpointing=False, enable_progress_bar=False,
                 enable_model_summary=False)
    quiet = logging.getLogger("lightning.pytorch")
    level = quiet.level
    quiet.setLevel(logging.WARNING)  # its "GPU available" lines are printed once, by the real Trainer
    try:
        pl.Trainer(**targs)
    except (ValueError, TypeError, MisconfigurationException) as e:
        raise UsageError(f"--trainer options are refused by Lightning: {' '.join(str(e).split())[:300]}") from None
    finally:
        quiet.setLevel(level)


def _check_epochs(cfg, data: PreparedData) -> None:
    """Refuse ``--trainer.max_epochs -1`` (no limit) when nothing would end the fit: no time or step limit, and no
    validation part to stop early on.

    Raises:
        UsageError: the fit would never end.
    """
    trainer = cfg.trainer
    if trainer.get("max_epochs") != -1 or trainer.get("max_time") or (trainer.get("max_steps") or -1) > 0:
        return
    if not data.has_split("valid"):
        raise UsageError("--trainer.max_epochs -1 (no limit) needs --trainer.max_time, --trainer.max_steps or a "
                         "validation part to stop early on, and this data has no validation part")


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
    # Without validation the model already holds the last epoch's weights.
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
