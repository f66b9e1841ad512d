"""Zero-shot transfer (``recsys fit --transfer-from RUN``): a text model trained on one dataset scores another.

Known answers: the transferred run holds exactly the source's learned weights and its own data; ID models and
mismatched architectures are refused in one line before anything is written.
"""

import json

import pytest
import torch
from conftest import REPO
from test_text import make_tiny_bert

from recsys.cli import main
from recsys.runs import Run

pytestmark = pytest.mark.usefixtures("one_thread")

TEXT = "--model.init_args.encoder.init_args."


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    root = tmp_path_factory.mktemp("transfer_lm")
    return str(make_tiny_bert(root / "model")), str(root / "cache")


def args(config, run, lm, options, *extra, epochs=2):
    return ["fit", "--config", str(REPO / "configs" / config), "--run-dir", str(run), "--data.dataset", "synthetic",
            "--data.path", "null", "--data.options", options, "--trainer.max_epochs", str(epochs),
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            TEXT + "lm_path", lm[0], TEXT + "cache_dir", lm[1], "--data.loader.batch_size", "512",
            "--data.loader.num_negatives", "16", *extra]


SOURCE = "{n_users: 150, n_items: 80, n_interactions: 3000, seed: 1}"
TARGET = "{n_users: 120, n_items: 60, n_interactions: 2400, seed: 2}"


@pytest.mark.parametrize("config", ["alpharec_mlp.yaml", "linear_probe.yaml"])
def test_zero_shot_transfer_carries_the_learned_weights(config, lm, tmp_path, capsys):
    src, dst = tmp_path / "src", tmp_path / "dst"
    assert main(args(config, src, lm, SOURCE)) == 0
    assert main(args(config, dst, lm, TARGET, "--transfer-from", str(src), epochs=0)) == 0
    assert "no training on this data" in capsys.readouterr().out
    moved = json.loads((dst / "transfer.json").read_text())
    assert moved["loaded"] >= 1 and moved["source"] == str(src.resolve())
    a, b = Run.open(src).payload.state_dict, Run.open(dst).payload.state_dict
    learned = [k for k in a if k.startswith("encoder.mapping")]
    assert learned and all(torch.equal(a[k], b[k]) for k in learned)
    d = Run.open(dst).data()
    assert (d.n_users, d.n_items) == (120, 60)
    m = json.loads((dst / "metrics.json").read_text())
    assert 0.0 <= m["ndcg@20"] <= 1.0
    assert json.loads((dst / "timing.json").read_text())["epochs"] == 0


def test_transfer_then_fine_tune_starts_from_the_source(lm, tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    assert main(args("linear_probe.yaml", src, lm, SOURCE)) == 0
    assert main(args("linear_probe.yaml", dst, lm, TARGET, "--transfer-from", str(src), epochs=1)) == 0
    assert json.loads((dst / "timing.json").read_text())["epochs"] == 1


def test_id_models_and_other_architectures_are_refused(lm, tmp_path, capsys):
    src = tmp_path / "src"
    assert main(args("linear_probe.yaml", src, lm, SOURCE)) == 0
    capsys.readouterr()
    mf = ["fit", "--config", str(REPO / "configs" / "mf_bpr.yaml"), "--run-dir", str(tmp_path / "mf"),
          "--data.dataset", "synthetic", "--data.path", "null", "--data.options", TARGET,
          "--trainer.max_epochs", "0", "--transfer-from", str(src)]
    assert main(mf) == 2
    err = capsys.readouterr().err.strip()
    assert "MatrixFactorization has parameters sized by its training data" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "mf").exists()
    wide = args("linear_probe.yaml", tmp_path / "wide", lm, TARGET, "--transfer-from", str(src), TEXT + "dim", "16",
                epochs=0)
    assert main(wide) == 1
    err = capsys.readouterr().err.strip()
    assert "holds encoder.mapping.weight as" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "wide").exists()
