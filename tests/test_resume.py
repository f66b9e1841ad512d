"""Resume: a fit killed mid-epoch and continued with ``recsys fit --resume`` ends exactly where an uninterrupted
fit of the same seed ends (full last.ckpt: weights, optimizer, loops, callbacks, RNG)."""

import json
import subprocess
import sys

import pytest
from conftest import fit_args

from recsys.cli import main

KILL = json.dumps([{"class_path": "recsys.testing.faults.KillAt", "init_args": {"epoch": 2, "batch": 1}}])


def _fit(args, timeout=300):
    return subprocess.run([sys.executable, "-m", "recsys", *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("config", ["mf_bpr.yaml", "ngcf.yaml"])
def test_killed_fit_resumes_to_identical_metrics(tmp_path, config):
    # ngcf: message dropout draws from torch's RNG, so the restored RNG state matters too.
    whole = tmp_path / "whole"
    assert _fit(fit_args(config, whole, epochs=4)).returncode == 0
    killed = tmp_path / "killed"
    proc = _fit(fit_args(config, killed, "--trainer.callbacks", KILL, epochs=4))
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert (killed / "checkpoints" / "last.ckpt").exists() and not (killed / "metrics.json").exists()
    assert main(["fit", "--resume", str(killed), "--trainer.callbacks", "[]"]) == 0
    got, want = (json.loads((d / "metrics.json").read_text()) for d in (killed, whole))
    assert got == want
    assert json.loads((killed / "valid_metrics.json").read_text()) == json.loads((whole / "valid_metrics.json")
                                                                                .read_text())
    # One continuous training log: the epochs before the kill are kept, the killed epoch is logged once.
    import pandas as pd

    logs = [pd.read_csv(d / "logs" / "metrics.csv") for d in (killed, whole)]
    for log in logs:
        assert sorted(log["epoch"].unique()) == [0, 1, 2, 3]
    curves = [log.dropna(subset=["valid/ndcg@20"]).set_index("epoch")["valid/ndcg@20"] for log in logs]
    pd.testing.assert_series_equal(*curves)


def test_resume_refuses_a_directory_without_a_checkpoint(tmp_path, capsys):
    (tmp_path / "config.yaml").write_text("model: {}\n")
    assert main(["fit", "--resume", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "last.ckpt" in err[0]


def test_refit_all_trains_on_every_interaction_for_the_best_epoch_count(tmp_path):
    run = tmp_path / "refit"
    assert main(fit_args("mf_bpr.yaml", run, "--refit-all", epochs=3)) == 0
    refit = json.loads((run / "refit.json").read_text())
    timing = json.loads((run / "timing.json").read_text())
    assert 1 <= refit["epochs"] <= 3 and timing["best_epochs"] == refit["epochs"]
    import pyarrow.parquet as pq

    split = pq.read_table(run / "data" / "split.parquet").column("split").to_numpy()
    assert refit["interactions"] == len(split) and (split == 0).all()
    assert json.loads((run / "metrics.json").read_text())  # the early-stopped model's held-out metrics
    assert main(["score", "--run-dir", str(run), "--out", str(tmp_path / "top.parquet"), "--k", "5"]) == 0
