"""Smoke tests of benchmark scripts: they import and parse their arguments (no data, no training)."""

import importlib.util
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_gowalla_parser_defaults():
    b = _load("bench_gowalla")
    a = b.build_parser().parse_args([])
    assert a.steps == 30 and a.models == list(b.MODELS) and a.peers == ["recbole", "official"]
    a = b.build_parser().parse_args(["--steps", "5", "--models", "lightgcn", "--peers", "--profile"])
    assert a.steps == 5 and a.models == ["lightgcn"] and a.peers == [] and a.profile
    with pytest.raises(SystemExit):
        b.build_parser().parse_args(["--models", "nope"])


def test_bench_gowalla_fit_argv_parses():
    b = _load("bench_gowalla")
    from recsys.config import build_fit_parser

    parser = build_fit_parser(exit_on_error=False)
    for model in b.MODELS:
        argv = b.ours_argv(model, Path("/nonexistent"), 7, 0.1, "Pairs")
        cfg = parser.parse_args(argv)
        assert cfg.data.loader.batch_size == b.BATCH and cfg.data.loader.num_negatives == 1
        assert cfg.trainer.limit_train_batches == 7 and cfg.trainer.max_epochs == 1
    assert math.ceil(810128 / b.BATCH) == 396
