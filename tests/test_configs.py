"""Every config in configs/ trains (one fast_dev_run step, or a full closed-form fit) on tiny synthetic data."""

import json
from pathlib import Path

import pytest
from conftest import REPO, fit_args

from recsys.cli import main

CONFIGS = sorted(p.name for p in (REPO / "configs").glob("*.yaml"))


@pytest.mark.parametrize("config", CONFIGS)
def test_config_fast_dev_run(config, tmp_path):
    run = tmp_path / Path(config).stem
    assert main(fit_args(config, run, "--trainer.fast_dev_run", "true")) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0.0 <= metrics["ndcg@20"] <= 1.0
