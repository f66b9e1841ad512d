"""Hyperparameter search over ``recsys fit`` options with Optuna (``recsys tune``; ``pip install 'recsys[tune]'``).

A search space is a YAML mapping from fit options (the ``--`` option without its dashes) to a distribution::

    model.init_args.optimizer.init_args.lr: {type: float, low: 1e-4, high: 1e-2, log: true}
    model.init_args.encoder.init_args.n_layers: {type: int, low: 1, high: 4}
    data.loader.num_negatives: {type: categorical, choices: [1, 4, 8]}

Every trial is one :func:`recsys.fitting.fit_run` into ``DIR/trials/NNNN`` with the study's fit options plus the
trial's values; a Lightning callback reports the monitored validation metric after every validation to the trial
and prunes it when the pruner says so. The study lives in ``DIR/study.db`` (SQLite), so rerunning the same command
continues it; ``DIR/trials.parquet`` (one row per trial) and ``DIR/best.yaml`` (the best trial's resolved config,
fit it with ``recsys fit --config DIR/best.yaml``) are rewritten after every trial.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import time
import traceback
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightning.pytorch.callbacks import Callback

from recsys.errors import MissingDependencyError, RecsysError

if TYPE_CHECKING:
    import optuna

__all__ = ["STUDY_NAME", "Param", "PruningCallback", "TuneSummary", "load_space", "tune"]

#: the one study name inside ``DIR/study.db`` (a study directory holds one study).
STUDY_NAME = "recsys-tune"
#: fit options the tuner sets itself for every trial.
_RESERVED = {"config", "run_dir", "run-dir"}
_TYPES = ("float", "int", "categorical")
_FIELDS = {"float": {"type", "low", "high", "log", "step"}, "int": {"type", "low", "high", "log", "step"},
           "categorical": {"type", "choices"}}
#: the study's user attributes that a rerun must match (what makes its trials comparable).
_FINGERPRINT = ("recsys.space", "recsys.metric", "recsys.fit_options")


class MetricMissingError(RecsysError):
    """The tuned metric is not among what the trials log or write: no trial can be scored, so the study stops."""


class _TrialFailed(Exception):
    """A trial's fit raised; Optuna records the trial as failed and the study goes on (the one-line reason)."""


def _optuna():
    """The optuna module, imported on first use (an optional dependency)."""
    try:
        import optuna
    except ImportError as e:
        raise MissingDependencyError(f"recsys tune needs optuna ({e}): pip install 'recsys[tune]'") from None
    return optuna


# ---------------------------------------------------------------------------------------------------- space
@dataclasses.dataclass(frozen=True)
class Param:
    """One searched fit option and its distribution.

    Args:
        key: the fit option without its leading dashes (``model.init_args.reg_weight``).
        type: ``float``, ``int`` or ``categorical``.
        low: the smallest value (float and int).
        high: the largest value (float and int).
        log: sample on a log scale (float and int; ``low`` must be positive).
        step: sample a grid ``low, low + step, ...`` (float and int; not with ``log``).
        choices: the values of a categorical (scalars: strings, numbers, booleans, null).
    """

    key: str
    type: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple = ()

    def suggest(self, trial: optuna.Trial):
        """The trial's value of this option (recorded in the study under :attr:`key`)."""
        if self.type == "float":
            return trial.suggest_float(self.key, self.low, self.high, log=self.log, step=self.step)
        if self.type == "int":
            return trial.suggest_int(self.key, self.low, self.high, log=self.log, step=self.step or 1)
        return trial.suggest_categorical(self.key, list(self.choices))

    def samples(self) -> list:
        """Values to check the option with before the first trial: both ends of a range, every choice."""
        return [self.low, self.high] if self.type != "categorical" else list(self.choices)

    def as_dict(self) -> dict:
        """The distribution as plain data (what the study records to refuse a rerun with another space)."""
        if self.type == "categorical":
            return {"type": self.type, "choices": list(self.choices)}
        return {"type": self.type, "low": self.low, "high": self.high, "log": self.log, "step": self.step}


def _number(value, where: str, integer: bool):
    """A YAML number (PyYAML reads ``1e-4`` as a string, so numeric strings are accepted too)."""
    if isinstance(value, bool) or value is None:
        raise RecsysError(f"{where}: expected a number, got {value!r}")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise RecsysError(f"{where}: expected a number, got {value!r}") from None
    if not math.isfinite(x):
        raise RecsysError(f"{where}: expected a finite number, got {value!r}")
    if integer:
        if x != int(x):
            raise RecsysError(f"{where}: expected an integer, got {value!r}")
        return int(x)
    return x


def _param(key, spec, source: str) -> Param:
    where = f"{source}: {key}"
    if not isinstance(spec, Mapping):
        raise RecsysError(f"{where}: expected a mapping such as {{type: float, low: 1e-4, high: 1e-2, log: true}}, "
                          f"got {spec!r}")
    kind = spec.get("type")
    if kind not in _TYPES:
        raise RecsysError(f"{where}: unknown type {kind!r} (expected one of {', '.join(_TYPES)})")
    unknown = sorted(set(spec) - _FIELDS[kind])
    if unknown:
        raise RecsysError(f"{where}: unknown field(s) {', '.join(map(str, unknown))} for type {kind} "
                          f"(expected {', '.join(sorted(_FIELDS[kind] - {'type'}))})")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise RecsysError(f"{where}: a categorical needs a non-empty list of choices, got {choices!r}")
        for c in choices:
            if c is not None and not isinstance(c, (bool, int, float, str)):
                raise RecsysError(f"{where}: choice {c!r} is not a scalar (Optuna stores strings, numbers, "
                                  "booleans and null)")
        if len({json.dumps(c) for c in choices}) != len(choices):
            raise RecsysError(f"{where}: repeated choices in {choices!r}")
        return Param(key, kind, choices=tuple(choices))
    for name in ("low", "high"):
        if name not in spec:
            raise RecsysError(f"{where}: type {kind} needs low and high")
    integer = kind == "int"
    low, high = _number(spec["low"], f"{where}.low", integer), _number(spec["high"], f"{where}.high", integer)
    if low > high:
        raise RecsysError(f"{where}: low {low} is above high {high}")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise RecsysError(f"{where}.log: expected true or false, got {log!r}")
    if log and low <= 0:
        raise RecsysError(f"{where}: a log scale needs low > 0 (got {low})")
    step = spec.get("step")
    if step is not None:
        step = _number(step, f"{where}.step", integer)
        if step <= 0:
            raise RecsysError(f"{where}.step: expected a positive step, got {step}")
        if log:
            raise RecsysError(f"{where}: step and log cannot be combined")
    return Param(key, kind, low=low, high=high, log=log, step=step)


def load_space(path: str | Path) -> dict[str, Param]:
    """Read and check a search-space YAML file: ``{fit option: {type, low, high, log, step | choices}}``.

    Args:
        path: the YAML file.

    Raises:
        RecsysError: the file is missing or malformed, a type is unknown, a range is empty, a field unknown
            (one line naming the file and the key). Whether the fit parser accepts the keys is checked by
            :func:`tune`.
    """
    import yaml

    p = Path(path)
    if not p.is_file():
        raise RecsysError(f"--space {str(p)!r}: no such file")
    try:
        spec = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise RecsysError(f"{p}: not valid YAML ({' '.join(str(e).split())})") from None
    if not isinstance(spec, dict) or not spec:
        raise RecsysError(f"{p}: expected a mapping of fit options to distributions, such as "
                          "`model.init_args.reg_weight: {type: float, low: 1e-6, high: 1e-2, log: true}`")
    space: dict[str, Param] = {}
    for raw, value in spec.items():
        if not isinstance(raw, str) or not raw.strip("-"):
            raise RecsysError(f"{p}: key {raw!r} is not a fit option name")
        key = raw.lstrip("-")
        if key in _RESERVED:
            raise RecsysError(f"{p}: {key} cannot be searched (the tuner sets --config and each trial's --run-dir)")
        if key in space:
            raise RecsysError(f"{p}: {key} is given twice")
        space[key] = _param(key, value, str(p))
    return space


def _cli_value(value) -> str:
    """A value as the fit parser reads it on the command line (YAML scalars)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    return repr(value)


def _param_argv(params: Mapping[str, Any]) -> list[str]:
    return [a for key, value in params.items() for a in (f"--{key}", _cli_value(value))]


# ---------------------------------------------------------------------------------------------------- checks
def _option_names(argv: Sequence[str]) -> set[str]:
    """The option names (no dashes, ``-`` read as ``_`` for run-dir) that a fit argv sets."""
    return {a[2:].split("=", 1)[0] for a in argv if a.startswith("--")}


def _parse_reason(error: BaseException) -> str:
    """jsonargparse's (multi-line, nested) error as its most telling line."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    for marker in ("is not accepted", "unrecognized arguments", "Expected a", "Got value", "not a valid"):
        for ln in lines:
            if marker in ln:
                return ln
    return lines[0] if lines else type(error).__name__


def _check_options(fit_argv: list[str], space: Mapping[str, Param], source: str) -> None:
    """Parse the fit options once on their own and once per sampled value of every key, before trial 1.

    Raises:
        RecsysError: the fit options do not parse, or a key (with one of its sample values) is not accepted.
    """
    from argparse import ArgumentError

    from recsys.config import build_fit_parser

    parser = build_fit_parser(exit_on_error=False)
    try:
        parser.parse_args(list(fit_argv))
    except (ArgumentError, SystemExit) as e:
        raise RecsysError(f"the recsys fit options do not parse: {_parse_reason(e)}") from None
    firsts = {}
    for key, param in space.items():
        for value in param.samples():
            try:
                parser.parse_args([*fit_argv, f"--{key}", _cli_value(value)])
            except (ArgumentError, SystemExit) as e:
                raise RecsysError(f"{source}: {key} = {value!r} is not a valid recsys fit option value: "
                                  f"{_parse_reason(e)}") from None
        firsts[key] = param.samples()[0]
    try:  # all keys together: one key may select the class whose arguments another sets
        parser.parse_args([*fit_argv, *_param_argv(firsts)])
    except (ArgumentError, SystemExit) as e:
        raise RecsysError(f"{source}: the keys do not parse together ({_parse_reason(e)})") from None


def _with_trial_defaults(fit_argv: Sequence[str], metric: str) -> list[str]:
    """The fit options with the tuner's defaults placed after the last ``--config`` (so configs cannot undo them,
    and the user's own options still can): no progress bar, early stopping on the tuned metric."""
    argv = list(fit_argv)
    at = 0
    for i, a in enumerate(argv):
        if a == "--config":
            at = i + 2
        elif a.startswith("--config="):
            at = i + 1
    defaults = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
                "--early_stopping.monitor", metric]
    return argv[:at] + defaults + argv[at:]


# ---------------------------------------------------------------------------------------------------- pruning
class PruningCallback(Callback):
    """Reports the monitored validation metric to an Optuna trial after every validation; prunes on its advice.

    The step is the 0-based epoch. Raising ``optuna.TrialPruned`` from the callback ends ``trainer.fit`` (Lightning
    re-raises it), and Optuna records the trial as pruned.

    Args:
        trial: the running trial.
        monitor: the metric in ``trainer.callback_metrics`` (``valid/ndcg@20``).
    """

    def __init__(self, trial: optuna.Trial, monitor: str) -> None:
        self.trial, self.monitor = trial, monitor

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            logged = ", ".join(sorted(trainer.callback_metrics)) or "nothing"
            raise MetricMissingError(f"--metric {self.monitor}: the trainer logged no such metric (it logged "
                                     f"{logged}); tuning needs data with a validation part")
        epoch = trainer.current_epoch
        self.trial.report(float(value), epoch)
        if self.trial.should_prune():
            reason = f"pruned after epoch {epoch + 1} at {self.monitor} {float(value):.4f}"
            self.trial.set_user_attr("reason", reason)
            raise _optuna().TrialPruned(reason)


# ---------------------------------------------------------------------------------------------------- study
@dataclasses.dataclass
class TuneSummary:
    """Where a study stands after :func:`tune`.

    Args:
        study_dir: the study directory.
        complete: completed trials.
        pruned: pruned trials.
        failed: failed trials (fit errors, and trials interrupted by a stopped tuner).
        best_number: the best completed trial's number (None when none completed).
        best_value: its validation metric.
        best_test: its test metric (the same metric name on the test split).
        best_params: its searched values.
    """

    study_dir: Path
    complete: int
    pruned: int
    failed: int
    best_number: int | None
    best_value: float | None
    best_test: float | None
    best_params: dict

    @property
    def best_config(self) -> Path:
        """``DIR/best.yaml``: the best trial's resolved config (``recsys fit --config DIR/best.yaml``)."""
        return self.study_dir / "best.yaml"


@contextlib.contextmanager
def _lock(study_dir: Path) -> Iterator[None]:
    """Hold ``DIR/.lock`` for the study's lifetime: one tuner per study, so a RUNNING trial found at start is stale."""
    import fcntl

    f = open(study_dir / ".lock", "a")  # held open for as long as the lock
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RecsysError(f"--study-dir {str(study_dir)!r}: another recsys tune is running this study") from None
        yield
    finally:
        f.close()


def _sampler(name, seed: int):
    optuna = _optuna()
    if isinstance(name, optuna.samplers.BaseSampler):
        return name
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise RecsysError(f"--sampler {name!r}: expected tpe or random")


def _pruner(name, startup: int, warmup: int):
    optuna = _optuna()
    if isinstance(name, optuna.pruners.BasePruner):
        return name
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=startup, n_warmup_steps=warmup)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise RecsysError(f"--pruner {name!r}: expected median or none")


def _first_difference(old: list, new: list) -> str:
    for i, (a, b) in enumerate(zip(old, new)):
        if a != b:
            return f"at position {i}: {a!r} then, {b!r} now"
    return f"{len(old)} options then, {len(new)} now"


def _check_fingerprint(study, fingerprint: dict, db: Path, space_source: str) -> None:
    """Refuse to continue a study with another space, metric or fit options (its trials would not compare)."""
    attrs = study.user_attrs
    if not study.trials and not attrs:
        for key, value in fingerprint.items():
            study.set_user_attr(key, value)
        return
    if not all(k in attrs for k in _FINGERPRINT):
        raise RecsysError(f"{db}: not a study recsys tune started; pass a new --study-dir")
    old_space, new_space = attrs["recsys.space"], fingerprint["recsys.space"]
    if old_space != new_space:
        keys = sorted(k for k in set(old_space) | set(new_space) if old_space.get(k) != new_space.get(k))
        raise RecsysError(f"{space_source}: the search space differs from the one {db} was started with "
                          f"({', '.join(keys)}); pass a new --study-dir, or the study's own space")
    if attrs["recsys.metric"] != fingerprint["recsys.metric"]:
        raise RecsysError(f"--metric {fingerprint['recsys.metric']}: {db} was started with --metric "
                          f"{attrs['recsys.metric']}; pass a new --study-dir")
    if attrs["recsys.fit_options"] != fingerprint["recsys.fit_options"]:
        diff = _first_difference(attrs["recsys.fit_options"], fingerprint["recsys.fit_options"])
        raise RecsysError(f"the recsys fit options differ from those {db} was started with ({diff}); pass a new "
                          "--study-dir, or the same options")


def _fail_stale(study, storage) -> int:
    """Mark trials left RUNNING by a tuner that was stopped as failed (the lock says none is running now)."""
    optuna = _optuna()
    study_id = storage.get_study_id_from_name(STUDY_NAME)
    stale = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    for t in stale:
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
        storage.set_trial_user_attr(trial_id, "reason", "interrupted: the tuner stopped during this trial")
        storage.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL)
    return len(stale)


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or "(no message)"
    line = f"{type(error).__name__}: {text}"
    return line if len(line) <= 300 else line[:297] + "..."


def _trial_epochs(trial) -> int | None:
    epochs = trial.user_attrs.get("epochs")
    if epochs is None and trial.intermediate_values:
        epochs = max(trial.intermediate_values) + 1
    return epochs


def _trials_frame(study, space: Mapping[str, Param], metric: str):
    """One row per trial: number, state, the searched values, valid and test metric, epochs, seconds, run dir."""
    import pandas as pd

    test_name = "test/" + metric.split("/", 1)[1]
    rows = []
    for t in study.get_trials(deepcopy=False):
        seconds = (t.datetime_complete - t.datetime_start).total_seconds() \
            if t.datetime_complete and t.datetime_start else None
        row = {"number": t.number, "state": t.state.name}
        row.update({f"params.{k}": t.params.get(k) for k in space})
        row.update({metric: t.value if t.state.name == "COMPLETE" else None, test_name: t.user_attrs.get("test"),
                    "epochs": _trial_epochs(t), "seconds": seconds, "run_dir": t.user_attrs.get("run_dir"),
                    "reason": t.user_attrs.get("reason")})
        rows.append(row)
    frame = pd.DataFrame(rows, columns=["number", "state", *(f"params.{k}" for k in space), metric, test_name,
                                        "epochs", "seconds", "run_dir", "reason"])
    for key, param in space.items():
        col = f"params.{key}"
        # Parquet columns hold one type: a categorical that mixes types (1, "auto") is stored as text.
        if param.type == "categorical" and len({type(c) for c in param.choices if c is not None}) > 1:
            frame[col] = frame[col].map(lambda v: None if v is None else str(v))
    for col in (metric, test_name, "seconds"):
        frame[col] = frame[col].astype("float64")
    frame["epochs"] = frame["epochs"].astype("Int64")
    return frame


def _write_results(study, space, metric: str, study_dir: Path) -> None:
    """Rewrite ``trials.parquet`` and ``best.yaml`` (both atomically)."""
    import yaml

    from recsys.io_utils import atomic_path, atomic_write_text

    frame = _trials_frame(study, space, metric)
    with atomic_path(study_dir / "trials.parquet") as tmp:
        frame.to_parquet(tmp, index=False)
    best = _best(study)
    if best is None:
        return
    config = Path(best.user_attrs.get("run_dir", "")) / "config.yaml"
    if not config.is_file():
        return
    cfg = yaml.safe_load(config.read_text())
    # A fit of best.yaml writes a new run directory, never into the trial's own.
    cfg["run_dir"] = None
    test = best.user_attrs.get("test")
    header = (f"# recsys tune: trial {best.number} of {study_dir}, {metric} {best.value:.4f}"
              + (f", test {test:.4f}" if test is not None else "")
              + f".\n# Fit it with: recsys fit --config {study_dir / 'best.yaml'}\n")
    atomic_write_text(study_dir / "best.yaml", header + yaml.safe_dump(cfg, sort_keys=False))


def _describe(params: Mapping[str, Any]) -> str:
    def short(v):
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    return ", ".join(f"{k.rsplit('.', 1)[-1]}={short(v)}" for k, v in params.items())


@contextlib.contextmanager
def _quiet_trials(first: bool) -> Iterator[None]:
    """Keep the console to one line per trial event: Lightning's per-fit notices (accelerators, 'max_epochs
    reached') are dropped, and the data report, the same for every trial, is shown for the first one only.

    Args:
        first: the first trial of this tuner (its data report is shown).
    """
    names = ["lightning.pytorch"] + ([] if first else ["recsys.data"])
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def tune(fit_argv: Sequence[str], space: str | Path, study_dir: str | Path, *, n_trials: int = 30,
         timeout: float | None = None, sampler="tpe", pruner="median", metric: str = "valid/ndcg@20",
         seed: int = 2026, prune_startup: int = 5, prune_warmup: int = 10, quiet: bool = False) -> TuneSummary:
    """Search ``space`` over ``recsys fit`` runs until the study holds ``n_trials`` completed or pruned trials.

    Args:
        fit_argv: ``recsys fit`` options passed to every trial (``--config`` paths already resolved); not
            ``--run-dir`` (each trial's is ``DIR/trials/NNNN``) and no searched key.
        space: the search-space YAML file (:func:`load_space`).
        study_dir: the study directory (``study.db``, ``trials/``, ``trials.parquet``, ``best.yaml``); an existing
            study there is continued, if it was started with the same space, metric and fit options.
        n_trials: completed plus pruned trials the study should hold; failed trials do not count, so a rerun
            tries again for them.
        timeout: start no new trial after this many seconds (the running one finishes).
        sampler: ``tpe`` (the default) or ``random``, seeded; or an ``optuna`` sampler.
        pruner: ``median`` (the default) or ``none``; or an ``optuna`` pruner.
        metric: the validation metric maximised, as logged (``valid/ndcg@20``); early stopping monitors it too.
        seed: the sampler's seed (offset by the trials already in the study, so a rerun does not redraw them).
        prune_startup: completed trials before the median pruner prunes.
        prune_warmup: epochs of every trial before the median pruner prunes it.
        quiet: print nothing.

    Raises:
        RecsysError: a bad space, option or metric (one line), a study started differently, a study already being
            run, or a study that ends with no completed trial.
        MissingDependencyError: optuna is not installed.
    """
    optuna = _optuna()
    from recsys.fitting import fit_run

    if not metric.startswith("valid/") or len(metric) == len("valid/"):
        raise RecsysError(f"--metric {metric!r}: tune on a validation metric, valid/<name>@<k> (test is reported, "
                          "never selected on)")
    if n_trials < 1:
        raise RecsysError(f"--n-trials {n_trials}: expected at least 1")
    params_space = load_space(space)
    source = str(space)
    given = _option_names(fit_argv)
    if given & {"run_dir", "run-dir"}:
        raise RecsysError("--run-dir: the tuner sets each trial's run directory (STUDY_DIR/trials/NNNN); drop it")
    clash = sorted(k for k in params_space if k in given)
    if clash:
        raise RecsysError(f"{source}: {', '.join(clash)} is both searched and given as a fit option; drop one")
    base = _with_trial_defaults(fit_argv, metric)
    _check_options(base, params_space, source)

    study_dir = Path(study_dir)
    db = study_dir / "study.db"
    if (study_dir / "trials").is_dir() and not db.exists():
        raise RecsysError(f"--study-dir {str(study_dir)!r} has trials/ but no study.db; pass a new --study-dir")
    study_dir.mkdir(parents=True, exist_ok=True)
    split, name = metric.split("/", 1)
    fingerprint = {"recsys.space": {k: p.as_dict() for k, p in params_space.items()}, "recsys.metric": metric,
                   "recsys.fit_options": list(fit_argv)}
    verbosity = optuna.logging.get_verbosity()
    # Optuna logs each failure with its traceback and each result at INFO; the tuner prints one line per trial
    # and keeps tracebacks in the trial's error.txt.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    say = (lambda text: None) if quiet else (lambda text: print(f"[recsys] {text}", flush=True))
    try:
        with _lock(study_dir):
            storage = optuna.storages.RDBStorage(f"sqlite:///{db.resolve()}")
            study = optuna.create_study(storage=storage, study_name=STUDY_NAME, direction="maximize",
                                        load_if_exists=True)
            _check_fingerprint(study, fingerprint, db, source)
            stale = _fail_stale(study, storage)
            states = optuna.trial.TrialState
            done = len(study.get_trials(deepcopy=False, states=(states.COMPLETE, states.PRUNED)))
            study.sampler = _sampler(sampler, seed + len(study.trials))
            study.pruner = _pruner(pruner, prune_startup, prune_warmup)
            remaining = n_trials - done
            say(f"study {db}: {done} trials done" + (f", {stale} interrupted ones marked failed" if stale else "")
                + (f"; running {remaining} more" if remaining > 0 else f"; --n-trials {n_trials} reached"))

            started: list[int] = []  # the trials this tuner has started

            def objective(trial) -> float:
                params = {key: p.suggest(trial) for key, p in params_space.items()}
                run_dir = study_dir / "trials" / f"{trial.number:04d}"
                trial.set_user_attr("run_dir", str(run_dir))
                say(f"trial {trial.number}: {_describe(params)}")
                argv = [*base, *_param_argv(params), "--run-dir", str(run_dir)]
                try:
                    with _quiet_trials(first=not started):
                        started.append(trial.number)
                        run = fit_run(argv, callbacks=[PruningCallback(trial, metric)], quiet=True)
                except (optuna.TrialPruned, MetricMissingError):
                    raise
                except (Exception, SystemExit) as e:
                    reason = _one_line(e)
                    trial.set_user_attr("reason", reason)
                    # The traceback beside the trial's outputs (the fit may have failed before making the directory).
                    run_dir.mkdir(parents=True, exist_ok=True)
                    (run_dir / "error.txt").write_text("".join(traceback.format_exception(e)))
                    raise _TrialFailed(reason) from e
                valid = run.metrics(split)
                if name not in valid:
                    raise MetricMissingError(f"--metric {metric}: {run_dir}/valid_metrics.json has no {name} "
                                             f"(it has {', '.join(sorted(valid)) or 'nothing'}); tuning needs data "
                                             "with a validation part")
                test = run.metrics("test").get(name)
                trial.set_user_attr("test", test)
                trial.set_user_attr("epochs", run.read_json("timing.json").get("epochs"))
                return float(valid[name])

            def after_trial(study, trial) -> None:
                _write_results(study, params_space, metric, study_dir)
                seconds = (trial.datetime_complete - trial.datetime_start).total_seconds()
                if trial.state == states.COMPLETE:
                    test = trial.user_attrs.get("test")
                    best = _summary(study, study_dir)
                    say(f"trial {trial.number}: {metric} {trial.value:.4f}"
                        + (f" (test {test:.4f})" if test is not None else "")
                        + f", {trial.user_attrs.get('epochs')} epochs, {seconds:.0f} s; best: trial "
                        f"{best.best_number} {best.best_value:.4f}")
                elif trial.state == states.PRUNED:
                    say(f"trial {trial.number}: pruned after {_trial_epochs(trial)} epochs, {seconds:.0f} s")
                else:
                    say(f"trial {trial.number}: failed after {seconds:.0f} s: {trial.user_attrs.get('reason')}")

            t0 = time.perf_counter()
            try:
                if remaining > 0:
                    study.optimize(objective, n_trials=remaining, timeout=timeout, catch=(_TrialFailed,),
                                   callbacks=[after_trial])
            except KeyboardInterrupt:
                say("interrupted: rerun the same command to continue the study")
                raise
            finally:
                _write_results(study, params_space, metric, study_dir)
            summary = _summary(study, study_dir)
            say(f"study {study_dir}: {summary.complete} complete, {summary.pruned} pruned, {summary.failed} failed "
                f"({time.perf_counter() - t0:.0f} s)")
            if summary.best_number is None:
                raise RecsysError(f"no trial of {db} completed: see the reason column of "
                                  f"{study_dir / 'trials.parquet'}")
            say(f"best: trial {summary.best_number}, {metric} {summary.best_value:.4f}"
                + (f", test {summary.best_test:.4f}" if summary.best_test is not None else "")
                + f"; {_describe(summary.best_params)}; config {summary.best_config}")
            return summary
    finally:
        optuna.logging.set_verbosity(verbosity)


def _best(study):
    """The completed trial with the highest value (the earliest of equals), or None."""
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    return max(complete, key=lambda t: (t.value, -t.number)) if complete else None


def _summary(study, study_dir: Path) -> TuneSummary:
    trials = study.get_trials(deepcopy=False)
    count = {s: sum(t.state.name == s for t in trials) for s in ("COMPLETE", "PRUNED", "FAIL")}
    best = _best(study)
    return TuneSummary(study_dir=study_dir, complete=count["COMPLETE"], pruned=count["PRUNED"], failed=count["FAIL"],
                       best_number=None if best is None else best.number,
                       best_value=None if best is None else best.value,
                       best_test=None if best is None else best.user_attrs.get("test"),
                       best_params={} if best is None else dict(best.params))
