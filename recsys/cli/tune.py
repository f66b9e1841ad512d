"""``recsys tune``: a hyperparameter search over ``recsys fit`` options with Optuna (see :mod:`recsys.tuning`)."""

from __future__ import annotations

import argparse

from recsys.cli._common import OneLineParser

_DESCRIPTION = """\
Search fit options with Optuna: every trial is one `recsys fit` into STUDY_DIR/trials/NNNN, pruned per epoch on the
validation metric. The study lives in STUDY_DIR/study.db: rerunning the same command continues it up to --n-trials
completed or pruned trials. STUDY_DIR/trials.parquet has one row per trial; STUDY_DIR/best.yaml is the best trial's
config (recsys fit --config STUDY_DIR/best.yaml). Every option not listed here is a `recsys fit` option (see
`recsys fit --help`), passed to every trial: --config NAME, --data.dataset ..., --trainer.max_epochs 120, ...
The search space is YAML, one fit option per key:
  model.init_args.optimizer.init_args.lr: {type: float, low: 1e-4, high: 1e-2, log: true}
  model.init_args.encoder.init_args.n_layers: {type: int, low: 1, high: 4}
  data.loader.num_negatives: {type: categorical, choices: [1, 4, 8]}
Needs optuna: pip install 'recsys[tune]'."""


def _parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="recsys tune", description=_DESCRIPTION, allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--space", required=True,
                   help="Search-space YAML file (fit option: distribution), or a packaged space's name "
                        "(lightgcn_p1: recsys/configs/tune/lightgcn_p1.space.yml).")
    p.add_argument("--study-dir", required=True, help="Study directory (created, or continued when it exists).")
    p.add_argument("--n-trials", type=int, default=30, help="Completed plus pruned trials to reach (default 30).")
    p.add_argument("--timeout", type=float, default=None,
                   help="Seconds after which no new trial starts (the running one finishes).")
    p.add_argument("--sampler", choices=("tpe", "random"), default="tpe", help="Sampler, seeded (default tpe).")
    p.add_argument("--sampler-seed", type=int, default=2026, help="The sampler's seed (default 2026).")
    p.add_argument("--pruner", choices=("median", "none"), default="median",
                   help="Per-epoch pruner on the validation metric (default median).")
    p.add_argument("--prune-startup", type=int, default=5,
                   help="Completed trials before the median pruner prunes (default 5).")
    p.add_argument("--prune-warmup", type=int, default=10,
                   help="Epochs of each trial before the median pruner may prune it (default 10).")
    p.add_argument("--metric", default="valid/ndcg@20",
                   help="Validation metric maximised and monitored by early stopping (default valid/ndcg@20).")
    return p


def _resolve_space(value: str) -> str:
    """A ``--space`` value as a file: an existing file, else a packaged space by name (``lightgcn_p1`` is
    ``recsys/configs/tune/lightgcn_p1.space.yml``); anything else is left for :func:`recsys.tuning.load_space` to
    refuse."""
    from pathlib import Path

    from recsys.packaged_configs import config_dir

    if Path(value).is_file():
        return value
    name = value.removeprefix("tune/").removesuffix(".yml").removesuffix(".space")
    packaged = config_dir() / "tune" / f"{name}.space.yml"
    return str(packaged) if packaged.is_file() else value


def cmd_tune(argv: list[str]) -> int:
    if "-h" in argv or "--help" in argv:
        _parser().print_help()
        return 0
    args, fit_argv = _parser().parse_known_args(argv)
    from recsys.cli.fit import _with_config_paths
    from recsys.tuning import tune

    tune(_with_config_paths(fit_argv), _resolve_space(args.space), args.study_dir, n_trials=args.n_trials,
         timeout=args.timeout, sampler=args.sampler, pruner=args.pruner, metric=args.metric, seed=args.sampler_seed,
         prune_startup=args.prune_startup, prune_warmup=args.prune_warmup)
    return 0
