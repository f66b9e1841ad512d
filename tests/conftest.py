"""Shared test configuration: offline Hugging Face, paths to the shared real data, small fit helpers."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
ML_SMALL = REPO.parent / "shared" / "datasets" / "ml-latest-small"

TINY_SYNTHETIC = "{n_users: 150, n_items: 80, n_interactions: 3000}"


@pytest.fixture
def one_thread():
    """Tiny tensors: on a shared CPU, waking a second OpenMP thread costs more than the work it would share."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def ml_small() -> Path:
    if not (ML_SMALL / "ratings.csv").exists():
        pytest.skip("../shared/datasets/ml-latest-small is not available")
    return ML_SMALL


def fit_args(config: str, run_dir, *extra: str, epochs: int = 2) -> list[str]:
    """Arguments for a quick `recsys fit` on tiny synthetic data."""
    return ["fit", "--config", str(REPO / "configs" / config), "--run-dir", str(run_dir),
            "--data.dataset", "synthetic", "--data.path", "null", "--data.options", TINY_SYNTHETIC,
            "--trainer.max_epochs", str(epochs), "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false", *extra]


@pytest.fixture(scope="session")
def mf_run(tmp_path_factory):
    """One small trained MF run shared by the CLI, scoring and export tests."""
    from recsys.cli import main

    run = tmp_path_factory.mktemp("mf") / "run"
    assert main(fit_args("mf_bpr.yaml", run, epochs=3)) == 0
    return run


def write_new_items(run, path, n: int = 2):
    """``n`` items unseen in training, described like the run's trained ones, written as a CSV side table.

    IDs take the catalogue's type; list attributes become ``a|b`` strings, as in a CSV. Returns the table written.
    """
    import numpy as np
    import pandas as pd

    trained = pd.read_parquet(Path(run) / "data" / "items.parquet")
    new = trained.head(n).copy()
    new["item"] = [f"new-{i}" if trained["item"].dtype == object else 10**9 + i for i in range(n)]
    for col in new.columns:
        if col != "item" and isinstance(new[col].iloc[0], (list, np.ndarray)):
            new[col] = ["|".join(map(str, v)) for v in new[col]]
    new.to_csv(path, index=False)
    return new
