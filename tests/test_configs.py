"""Every config under configs/ (configs/paper/ included) trains (one fast_dev_run step, or a full closed-form fit) on
tiny synthetic data."""

import json
from pathlib import Path

import pytest
from conftest import REPO, fit_args

from recsys.cli import main

CONFIGS = sorted(str(p.relative_to(REPO / "configs")) for p in (REPO / "configs").rglob("*.yaml"))


@pytest.mark.parametrize("config", CONFIGS)
def test_config_fast_dev_run(config, tmp_path):
    run = tmp_path / Path(config).stem
    assert main(fit_args(config, run, "--trainer.fast_dev_run", "true")) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0.0 <= metrics["ndcg@20"] <= 1.0
