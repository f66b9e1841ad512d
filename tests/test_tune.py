"""``recsys tune`` on tiny synthetic data: trials, the trials table, best.yaml, resuming, pruning, failures, checks."""

import shutil
import sys

import pandas as pd
import pytest
import yaml
from conftest import TINY_SYNTHETIC

from recsys.cli import main
from recsys.errors import MissingDependencyError, RecsysError

optuna = pytest.importorskip("optuna")

SPACE = """\
model.init_args.optimizer.init_args.lr: {type: float, low: 1e-3, high: 1e-2, log: true}
model.init_args.reg_weight: {type: float, low: 1e-6, high: 1e-2, log: true}
model.init_args.encoder.init_args.n_layers: {type: int, low: 1, high: 2}
data.loader.num_negatives: {type: categorical, choices: [1, 4]}
"""
LR, LAYERS = "model.init_args.optimizer.init_args.lr", "model.init_args.encoder.init_args.n_layers"
FIT = ["--config", "lightgcn", "--data.dataset", "synthetic", "--data.path", "null", "--data.options", TINY_SYNTHETIC,
       "--trainer.max_epochs", "3"]


def tune_args(study, space, *extra: str, n_trials: int = 3) -> list[str]:
    return ["tune", "--space", str(space), "--study-dir", str(study), "--n-trials", str(n_trials),
            "--prune-startup", "1", "--prune-warmup", "0", *FIT, *extra]


def write_space(path, text: str = SPACE):
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A finished 3-trial study (median pruner from the second trial on)."""
    root = tmp_path_factory.mktemp("tune")
    space = write_space(root / "space.yml")
    assert main(tune_args(root / "study", space)) == 0
    return root / "study", space


def trials(study_dir) -> pd.DataFrame:
    return pd.read_parquet(study_dir / "trials.parquet")


def test_study_writes_one_row_per_trial_and_a_fittable_best_config(study, tmp_path):
    study_dir, _ = study
    frame = trials(study_dir)
    assert list(frame["number"]) == [0, 1, 2]
    assert set(frame["state"]) <= {"COMPLETE", "PRUNED"}
    done = frame[frame["state"] == "COMPLETE"]
    assert len(done) >= 1  # the first trial has nothing to be compared with, so it completes
    assert done["valid/ndcg@20"].between(0, 1).all() and done["test/ndcg@20"].between(0, 1).all()
    assert (frame["epochs"] >= 1).all() and (frame["seconds"] > 0).all()
    assert frame[f"params.{LR}"].between(1e-3, 1e-2).all() and set(frame[f"params.{LAYERS}"]) <= {1, 2}
    for run_dir in frame["run_dir"]:
        assert (study_dir / "trials").samefile(type(study_dir)(run_dir).parent)

    best = done.loc[done["valid/ndcg@20"].idxmax()]
    cfg = yaml.safe_load((study_dir / "best.yaml").read_text())
    assert cfg["run_dir"] is None
    assert cfg["model"]["init_args"]["optimizer"]["init_args"]["lr"] == pytest.approx(best[f"params.{LR}"])
    assert cfg["model"]["init_args"]["encoder"]["init_args"]["n_layers"] == best[f"params.{LAYERS}"]

    refit = tmp_path / "refit"
    assert main(["fit", "--config", str(study_dir / "best.yaml"), "--run-dir", str(refit),
                 "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false"]) == 0
    assert (refit / "metrics.json").is_file()


def test_rerun_continues_to_n_trials_and_fails_interrupted_trials(study, tmp_path):
    study_dir, space = study
    copy = tmp_path / "study"
    shutil.copytree(study_dir, copy)
    # A trial left RUNNING, as by a tuner killed mid-trial.
    optuna.load_study(study_name="recsys-tune", storage=f"sqlite:///{copy / 'study.db'}").ask()
    assert main(tune_args(copy, space, n_trials=4)) == 0
    frame = trials(copy)
    assert list(frame["number"]) == [0, 1, 2, 3, 4]
    assert frame.loc[3, "state"] == "FAIL" and frame.loc[3, "reason"].startswith("interrupted")
    assert frame.loc[4, "state"] in ("COMPLETE", "PRUNED")
    assert (frame.loc[:2, "state"] == trials(study_dir)["state"]).all()


def test_rerun_with_another_space_is_refused(study, tmp_path, capsys):
    study_dir, _ = study
    other = write_space(tmp_path / "other.yml", SPACE.replace("high: 2}", "high: 3}"))
    assert main(tune_args(study_dir, other)) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "other.yml" in err and "differs" in err and LAYERS in err


def test_a_pruner_that_always_prunes_prunes_every_trial_after_its_first_epoch(tmp_path):
    from recsys.packaged_configs import resolve_config
    from recsys.tuning import tune

    fit = ["--config", resolve_config("lightgcn"), *FIT[2:]]
    always = optuna.pruners.ThresholdPruner(lower=1.01)  # ndcg never reaches it
    with pytest.raises(RecsysError, match="no trial of .* completed"):
        tune(fit, write_space(tmp_path / "space.yml"), tmp_path / "study", n_trials=2, pruner=always, quiet=True)
    frame = trials(tmp_path / "study")
    assert list(frame["state"]) == ["PRUNED", "PRUNED"]
    assert list(frame["epochs"]) == [1, 1]
    assert frame["reason"].str.startswith("pruned after epoch 1").all()
    assert frame["valid/ndcg@20"].isna().all() and not (tmp_path / "study" / "best.yaml").exists()


def test_a_failing_trial_is_recorded_with_its_reason_and_the_study_goes_on(tmp_path, capsys):
    study_dir = tmp_path / "study"
    args = tune_args(study_dir, write_space(tmp_path / "space.yml"), "--data.dataset", "generic",
                     "--data.path", str(tmp_path / "missing.csv"), "--data.options", "{}", n_trials=2)
    assert main(args) == 1  # no trial completed
    frame = trials(study_dir)
    assert list(frame["state"]) == ["FAIL", "FAIL"]
    assert frame["reason"].str.contains("file not found").all()
    assert "Traceback" in (study_dir / "trials" / "0000" / "error.txt").read_text()
    assert "no trial of" in capsys.readouterr().err


@pytest.mark.parametrize(("space", "message"), [
    ("model.init_args.reg_weight: {type: normal, low: 0, high: 1}", "unknown type 'normal'"),
    ("model.init_args.reg_weight: {type: float, low: 1e-2, high: 1e-6}", "low 0.01 is above high 1e-06"),
    ("model.init_args.reg_weight: {type: float, low: 0, high: 1, log: true}", "a log scale needs low > 0"),
    ("model.init_args.reg_weight: {type: float, lo: 0, high: 1}", "unknown field(s) lo"),
    ("model.init_args.encoder.init_args.n_layerz: {type: int, low: 1, high: 2}", "'n_layerz' is not accepted"),
    ("data.loader.num_negatives: {type: categorical, choices: [1, 2.5]}", "num_negatives = 2.5"),
    ("trainer.max_epochs: {type: int, low: 1, high: 2}", "both searched and given"),
])
def test_a_bad_space_is_refused_in_one_line_before_any_trial(tmp_path, capsys, space, message):
    path = write_space(tmp_path / "bad.yml", space + "\n")
    assert main(tune_args(tmp_path / "study", path)) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith("recsys tune: error: ") and "bad.yml" in line and message in line
    assert not (tmp_path / "study" / "study.db").exists()


def test_without_optuna_the_error_says_what_to_install(tmp_path, monkeypatch):
    from recsys.tuning import tune

    monkeypatch.setitem(sys.modules, "optuna", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'recsys\[tune\]'"):
        tune(FIT, write_space(tmp_path / "space.yml"), tmp_path / "study")


def test_the_packaged_p1_space_resolves_by_name_and_parses_against_lightgcn():
    from recsys.cli.tune import _resolve_space
    from recsys.packaged_configs import resolve_config
    from recsys.tuning import _check_options, load_space

    path = _resolve_space("lightgcn_p1")
    space = load_space(path)
    assert {LR, LAYERS, "model.init_args.reg_weight", "data.loader.num_negatives"} == set(space)
    _check_options(["--config", resolve_config("lightgcn")], space, path)  # raises on a key fit does not accept
