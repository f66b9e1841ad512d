"""Experiment trackers through ``--trainer.logger``: TensorBoard and MLflow (``[tensorboard]``, ``[mlflow]`` extras).

Each test trains a tiny model with the logger selected on the command line, as a user would, and reads the logged
validation curve back with the tracker's own reader. Skipped when the tracker is not installed.
"""

import pytest
from conftest import fit_args


def test_tensorboard_logger_writes_event_files(tmp_path, one_thread):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from recsys.cli import main

    run, tb = tmp_path / "run", tmp_path / "tb"
    assert main(fit_args("mf_bpr.yaml", run, "--trainer.logger", "lightning.pytorch.loggers.TensorBoardLogger",
                         "--trainer.logger.save_dir", str(tb))) == 0
    events = sorted(tb.rglob("events.out.tfevents.*"))
    assert events, f"no TensorBoard event file under {tb}"
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    assert "valid/ndcg@20" in acc.Tags()["scalars"]
    steps = [e.step for e in acc.Scalars("valid/ndcg@20")]
    assert len(steps) == 2 and steps[0] < steps[1]  # one point per epoch, in training order
    assert (run / "metrics.json").exists()


def test_tensorboard_and_csv_loggers_together_keep_the_learning_curve(tmp_path, one_thread):
    pytest.importorskip("tensorboard")
    from recsys.cli import main

    run, tb = tmp_path / "run", tmp_path / "tb"
    loggers = (f"[{{class_path: lightning.pytorch.loggers.TensorBoardLogger, init_args: {{save_dir: {tb}}}}}, "
               f"{{class_path: lightning.pytorch.loggers.CSVLogger, init_args: {{save_dir: {run}, name: logs, "
               "version: ''}}]")
    assert main(fit_args("mf_bpr.yaml", run, "--trainer.logger", loggers)) == 0
    assert sorted(tb.rglob("events.out.tfevents.*"))
    assert (run / "logs" / "metrics.csv").exists() and (run / "learning_curve.png").exists()
    assert main(["plot", str(run), "--out", str(tmp_path / "lc.png")]) == 0


def test_mlflow_logger_with_a_local_file_store(tmp_path, monkeypatch, one_thread):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    from recsys.cli import main

    # MLflow 3 refuses its file store (kept in maintenance mode) unless opted in; a database store needs the full
    # mlflow package (SQLAlchemy, alembic), which the skinny client behind the [mlflow] extra does not bring.
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = (tmp_path / "mlruns").as_uri()
    assert main(fit_args("mf_bpr.yaml", tmp_path / "run", "--trainer.logger",
                         "lightning.pytorch.loggers.MLFlowLogger", "--trainer.logger.tracking_uri", uri,
                         "--trainer.logger.experiment_name", "recsys-test")) == 0
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("recsys-test")
    assert exp is not None
    (logged,) = client.search_runs([exp.experiment_id])
    # MLflow's metric names may not hold '@': Lightning's logger drops it (valid/ndcg@20 -> valid/ndcg20).
    name = next(k for k in logged.data.metrics if k.startswith("valid/ndcg") and k.endswith("20"))
    assert len(client.get_metric_history(logged.info.run_id, name)) == 2  # one point per epoch
    assert logged.data.params["trainer.max_epochs"] == "2"  # the resolved config is logged as parameters
