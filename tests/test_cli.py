"""End-to-end CLI: fit → metrics.json → evaluate → score, reproducibility, and clear errors on bad input."""

import json
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import REPO, fit_args

from recsys.cli import main
from recsys.errors import CheckpointError, DataError, RunDirError
from recsys.metrics import per_user_metrics
from recsys.runs import Run


def test_fit_writes_the_run_directory(mf_run):
    for f in ("config.yaml", "model.pt", "metrics.json", "data/user_vocab.parquet", "data/item_vocab.parquet",
              "data/split.parquet", "checkpoints/best.ckpt", "logs/metrics.csv"):
        assert (mf_run / f).exists(), f
    m = json.loads((mf_run / "metrics.json").read_text())
    assert {"recall@20", "ndcg@20", "mrr@10", "hit@10", "precision@20", "map@20"} <= set(m)
    assert all(0.0 <= v <= 1.0 for v in m.values())


def test_evaluator_agrees_with_per_user_reference(mf_run):
    """recall@20 and ndcg@20 of the evaluator equal a plain per-user computation to 1e-6."""
    from recsys.metrics.evaluate import evaluate

    run = Run.open(mf_run)
    model, data = run.recommender(), run.data()
    got = evaluate(model, data, "test")
    q = model.scorer.prepare_queries(model.encoder.user.table.weight).detach().numpy()
    items = model.encoder.item.table.weight.detach().numpy()
    scores = q @ items.T
    train_valid, test = data.csr("train+valid"), data.csr("test")
    recalls, ndcgs = [], []
    for u in range(data.n_users):
        rel = set(test.indices[test.indptr[u]:test.indptr[u + 1]].tolist())
        if not rel:
            continue
        s = scores[u].copy()
        s[train_valid.indices[train_valid.indptr[u]:train_valid.indptr[u + 1]]] = -np.inf
        top = np.argsort(-s, kind="stable")[:20]
        hits = [1.0 if i in rel else 0.0 for i in top]
        recalls.append(sum(hits) / len(rel))
        dcg = sum(h / np.log2(r + 2) for r, h in enumerate(hits))
        idcg = sum(1 / np.log2(r + 2) for r in range(min(len(rel), 20)))
        ndcgs.append(dcg / idcg)
    assert abs(got["recall@20"] - np.mean(recalls)) < 1e-6
    assert abs(got["ndcg@20"] - np.mean(ndcgs)) < 1e-6
    assert json.loads((mf_run / "metrics.json").read_text())["ndcg@20"] == pytest.approx(got["ndcg@20"], abs=1e-6)


def test_evaluate_command(mf_run, capsys):
    assert main(["evaluate", "--run-dir", str(mf_run), "--split", "valid"]) == 0
    assert "ndcg" in capsys.readouterr().out
    assert (mf_run / "eval_valid.json").exists()


def test_score_writes_external_ids_and_excludes_training_items(mf_run, tmp_path):
    out = tmp_path / "top.parquet"
    assert main(["score", "--run-dir", str(mf_run), "--k", "10", "--out", str(out)]) == 0
    t = pq.read_table(out).to_pandas()
    assert list(t.columns) == ["user", "item", "rank", "score"]
    data = Run.open(mf_run).data()
    assert len(t) == data.n_users * 10
    assert t.groupby("user")["rank"].apply(lambda r: list(r) == list(range(1, 11))).all()
    assert (t.groupby("user")["score"].diff().dropna() <= 1e-6).all()
    train = data.csr("train")
    u = data.user_vocab.encode(t["user"].to_numpy())
    i = data.item_vocab.encode(t["item"].to_numpy())
    assert np.asarray(train[u, i]).ravel().sum() == 0
    users_file = tmp_path / "users.txt"
    users_file.write_text("\n".join(str(x) for x in data.user_vocab.ids[:3]) + "\n")
    out2 = tmp_path / "few.parquet"
    assert main(["score", "--run-dir", str(mf_run), "--k", "5", "--out", str(out2), "--users",
                 str(users_file), "--keep-seen"]) == 0
    assert pq.read_table(out2).num_rows == 15


def test_reproducible_metrics(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(fit_args("mf_bpr.yaml", a, epochs=2)) == 0
    assert main(fit_args("mf_bpr.yaml", b, epochs=2)) == 0
    assert (a / "metrics.json").read_text() == (b / "metrics.json").read_text()


def test_unknown_user_in_users_file(mf_run, tmp_path):
    f = tmp_path / "users.txt"
    f.write_text("user\nnot-a-user-999\n")
    with pytest.raises(DataError, match=r"unknown user ID.*users\.txt.*column 'user'.*row 0"):
        from recsys.scoring.batch import score_run

        score_run(mf_run, tmp_path / "x.parquet", users_file=f)
    assert main(["score", "--run-dir", str(mf_run), "--out", str(tmp_path / "x.parquet"), "--users", str(f)]) == 1


def test_missing_run_dir(tmp_path, capsys):
    assert main(["score", "--run-dir", str(tmp_path / "nope"), "--out", str(tmp_path / "x.parquet")]) == 1
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(RunDirError):
        Run.open(tmp_path / "nope")


def test_corrupted_checkpoint(mf_run, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(mf_run, bad)
    data = (bad / "model.pt").read_bytes()
    (bad / "model.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated, corrupted"):
        _ = Run.open(bad).payload
    assert main(["score", "--run-dir", str(bad), "--out", str(tmp_path / "x.parquet")]) == 1


def test_bad_log_file_is_reported_with_file_column_row(tmp_path):
    f = tmp_path / "log.csv"
    f.write_text("user,item,rating\n1,2,5\n1,3,oops\n")
    args = ["fit", "--run-dir", str(tmp_path / "r"), "--data.dataset", "generic", "--data.path", str(f),
            "--data.options", "{rating: rating}", "--trainer.max_epochs", "1"]
    with pytest.raises(DataError, match=r"log\.csv.*column 'rating'.*row 1"):
        from recsys.datasets import load_dataset

        load_dataset("generic", str(f), rating="rating")
    assert main(args) == 1


def test_checkpoint_loads_with_weights_only(mf_run):
    ckpt = torch.load(mf_run / "model.pt", weights_only=True)
    assert "state_dict" in ckpt and "tables" in ckpt


def test_score_process_does_not_import_lightning(mf_run, tmp_path):
    code = ("import sys; from recsys.cli import main; "
            f"main(['score', '--run-dir', {str(mf_run)!r}, '--out', {str(tmp_path / 'o.parquet')!r}]); "
            "bad = [m for m in ('lightning', 'torch_geometric', 'transformers') if m in sys.modules]; "
            "print('HEAVY', bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True).stdout
    assert "HEAVY []" in out


def test_per_user_metrics_available(mf_run):
    from recsys.metrics.evaluate import rank_split
    from recsys.recommender import score_function

    run = Run.open(mf_run)
    model, data = run.recommender(), run.data()
    users, ranked = rank_split(score_function(model, data, "train+valid"), data, "test", 20)
    pu = per_user_metrics(ranked, data.csr("test")[users])
    assert len(pu["ndcg@20"]) == len(users)


def test_top_level_help_describes_every_verb(capsys):
    from recsys.cli import COMMANDS

    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for verb in COMMANDS:
        assert f"  {verb} " in out
    assert main(["frob"]) == 2
    assert "unknown command 'frob'" in capsys.readouterr().err


def test_lightning_lines_print_once_without_adverts(tmp_path):
    import subprocess
    import sys

    from conftest import TINY_SYNTHETIC

    proc = subprocess.run([sys.executable, "-m", "recsys.cli", "fit", "--run-dir", str(tmp_path / "run"),
                           "--data.options", TINY_SYNTHETIC, "--trainer.max_epochs", "1",
                           "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout + proc.stderr
    assert out.count("`Trainer.fit` stopped") == 1
    assert "litlogger" not in out
