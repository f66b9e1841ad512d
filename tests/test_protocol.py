"""The papers' train/test protocol: a shipped split used by default, runs without a validation part, carved
validation sets, empty splits, and the official user-uniform sampler."""

import json

import numpy as np
import pytest
from conftest import REPO, TINY_SYNTHETIC

from recsys.cli import main
from recsys.data.datamodule import Loader, UserUniformBatches
from recsys.data.prepared import SplitSpec, prepare
from recsys.data.splits import TRAIN, VALID, carve_valid
from recsys.datasets import load_dataset


@pytest.fixture(scope="module")
def benchmark_dir(tmp_path_factory):
    """A tiny NGCF/LightGCN-format split: 40 users, 60 items, two test items each, no valid.txt."""
    rng = np.random.default_rng(0)
    d = tmp_path_factory.mktemp("bench")
    train, test = [], []
    for u in range(40):
        items = rng.choice(60, size=int(rng.integers(6, 14)), replace=False)
        train.append(f"{u} " + " ".join(map(str, items[2:])))
        test.append(f"{u} " + " ".join(map(str, items[:2])))
    (d / "train.txt").write_text("\n".join(train) + "\n")
    (d / "test.txt").write_text("\n".join(test) + "\n")
    return d


def test_shipped_split_is_the_default(benchmark_dir):
    data = prepare(load_dataset("benchmark-txt", benchmark_dir))
    sizes = data.split_sizes()
    assert sizes["valid"] == 0 and sizes["test"] == 80
    assert "split: the dataset's own" in data.summary()
    resplit = prepare(load_dataset("benchmark-txt", benchmark_dir), split=SplitSpec(method="random"))
    assert resplit.split_sizes()["valid"] > 0
    assert "the dataset's own split ignored" in resplit.summary()


def test_valid_from_train_carves_per_user(benchmark_dir):
    spec = SplitSpec(valid_from_train=0.2, seed=7)
    a = prepare(load_dataset("benchmark-txt", benchmark_dir), split=spec)
    b = prepare(load_dataset("benchmark-txt", benchmark_dir), split=spec)
    np.testing.assert_array_equal(a.labels, b.labels)
    base = prepare(load_dataset("benchmark-txt", benchmark_dir))
    # Test is untouched; validation comes out of train only, and every user keeps training items.
    np.testing.assert_array_equal(a.labels == 2, base.labels == 2)
    assert ((a.labels == VALID) <= (base.labels == TRAIN)).all()
    per_user_train = np.bincount(a.users[a.labels == TRAIN], minlength=a.n_users)
    per_user_base = np.bincount(base.users[base.labels == TRAIN], minlength=a.n_users)
    assert (per_user_train >= 1).all()
    np.testing.assert_array_equal(np.bincount(a.users[a.labels == VALID], minlength=a.n_users),
                                  np.floor(0.2 * per_user_base).astype(int)
                                  + ((0.2 * per_user_base < 1) & (per_user_base > 1)))
    assert "validation carved from train" in a.summary()


def test_carve_valid_refuses_a_split_with_valid():
    labels = np.array([TRAIN, VALID, TRAIN], dtype=np.int8)
    with pytest.raises(ValueError, match="without a validation part"):
        carve_valid(labels, np.zeros(3, dtype=np.int64), 0.1)
    with pytest.raises(ValueError, match=r"valid_from_train must be in \(0, 1\)"):
        carve_valid(labels, np.zeros(3, dtype=np.int64), 1.5)


def _fit(run, config, *extra):
    return main(["fit", "--config", str(REPO / "configs" / config), "--run-dir", str(run),
                 "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false", *extra])


def test_train_test_benchmark_runs_to_the_end(benchmark_dir, tmp_path, capsys):
    run = tmp_path / "lgn"
    assert _fit(run, "paper/lightgcn_gowalla.yaml", "--data.path", str(benchmark_dir), "--trainer.max_epochs", "4",
                "--trainer.check_val_every_n_epoch", "2") == 0
    assert "test-set monitoring" in capsys.readouterr().out
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0.0 <= metrics["recall@20"] <= 1.0
    assert json.loads((run / "valid_metrics.json").read_text()) == {}
    for f in ("model.pt", "timing.json", "per_user_test.parquet", "learning_curve.png", "checkpoints/last.ckpt"):
        assert (run / f).exists(), f
    log = (run / "logs" / "metrics.csv").read_text().splitlines()
    header = log[0].split(",")
    assert "test_monitor/recall@20" in header and not any(h.startswith("valid/") for h in header)
    col = header.index("test_monitor/recall@20")
    epochs = [int(r.split(",")[0]) for r in log[1:] if r.split(",")[col]]
    assert epochs == [1, 3]  # every second epoch, 0-based
    assert json.loads((run / "timing.json").read_text())["epochs"] == 4


def test_valid_from_train_early_stops(benchmark_dir, tmp_path):
    run = tmp_path / "carved"
    assert _fit(run, "paper/mf_bpr_gowalla.yaml", "--data.path", str(benchmark_dir), "--trainer.max_epochs", "2",
                "--trainer.check_val_every_n_epoch", "1", "--data.split.valid_from_train", "0.2",
                "--early_stopping.monitor", "valid/ndcg@20") == 0
    assert "ndcg@20" in json.loads((run / "valid_metrics.json").read_text())
    assert (run / "checkpoints" / "best.ckpt").exists()


def test_refit_on_all_data_does_not_crash(tmp_path, capsys):
    run = tmp_path / "all"
    assert main(["fit", "--config", str(REPO / "configs" / "mf_bpr.yaml"), "--run-dir", str(run),
                 "--data.dataset", "synthetic", "--data.options", TINY_SYNTHETIC, "--data.split.ratios", "[1, 0, 0]",
                 "--trainer.max_epochs", "2", "--trainer.enable_progress_bar", "false",
                 "--trainer.enable_model_summary", "false"]) == 0
    assert "no test interactions" in capsys.readouterr().out
    assert json.loads((run / "metrics.json").read_text()) == {}
    assert (run / "model.pt").exists()


def test_user_uniform_sampler(benchmark_dir):
    data = prepare(load_dataset("benchmark-txt", benchmark_dir))
    ds = UserUniformBatches(data, Loader(batch_size=64, num_negatives=2), seed=3)
    assert len(ds) == -(-data.train.nnz // 64)
    batches = [ds[b] for b in range(len(ds))]
    users = np.concatenate([b.users.numpy() for b in batches])
    items = np.concatenate([b.items.numpy() for b in batches])
    assert len(users) == data.train.nnz  # one epoch = as many examples as training interactions
    train = data.train.toarray().astype(bool)
    assert train[users, items[:, 0]].all()  # positives are the user's training items
    assert not train[users[:, None], items[:, 1:]].any()  # negatives are not
    # Users are drawn uniformly, not in proportion to their activity.
    many = np.concatenate([UserUniformBatches(data, Loader(batch_size=4096), seed=s)[0].users.numpy()
                           for s in range(100)])
    counts = np.bincount(many, minlength=data.n_users)
    assert counts.std() / counts.mean() < 0.1  # multinomial noise is ~0.04 here; activity-weighted is ~0.25
    again = UserUniformBatches(data, Loader(batch_size=64, num_negatives=2), seed=3)[0]
    np.testing.assert_array_equal(again.items.numpy(), batches[0].items.numpy())


def test_evaluate_an_empty_split(benchmark_dir, tmp_path, capsys):
    run = tmp_path / "mf"
    assert _fit(run, "paper/mf_bpr_gowalla.yaml", "--data.path", str(benchmark_dir), "--trainer.max_epochs", "1") == 0
    capsys.readouterr()
    assert main(["evaluate", "--run-dir", str(run), "--split", "valid"]) == 0
    assert "no valid interactions" in capsys.readouterr().out
