"""``recsys score --exclude`` and ``--unknown-users``: what leaves a list, the consumed-items check, unknown IDs."""

import numpy as np
import pyarrow.parquet as pq
import pytest

from recsys.cli import main
from recsys.data.splits import TRAIN
from recsys.errors import DataError
from recsys.runs import Run
from recsys.scoring.batch import run_scoring, score_run


def _pairs(run, top):
    """(user row, item row) of every written row, and the run's data."""
    data = Run.open(run).data()
    return data.user_vocab.encode(top["user"].to_numpy()), data.item_vocab.encode(top["item"].to_numpy()), data


def _known(data, train_only=False):
    mask = data.labels == TRAIN if train_only else np.ones(len(data.users), dtype=bool)
    return set(zip(data.users[mask].tolist(), data.items[mask].tolist()))


def test_default_excludes_every_known_interaction_and_reports_zero_consumed(mf_run, tmp_path):
    report = run_scoring(mf_run, tmp_path / "top.parquet", k=40)
    top = pq.read_table(tmp_path / "top.parquet").to_pandas()
    u, i, data = _pairs(mf_run, top)
    assert not set(zip(u.tolist(), i.tolist())) & _known(data)
    assert report.exclude == "all" and report.consumed == 0 and report.checked == len(top) == report.rows
    assert report.users == data.n_users


def test_exclude_train_leaves_held_out_items_and_counts_them(mf_run, tmp_path):
    report = run_scoring(mf_run, tmp_path / "top.parquet", k=60, exclude="train")
    top = pq.read_table(tmp_path / "top.parquet").to_pandas()
    u, i, data = _pairs(mf_run, top)
    written = set(zip(u.tolist(), i.tolist()))
    assert not written & _known(data, train_only=True)
    held_out = written & (_known(data) - _known(data, train_only=True))
    # The check counts exactly the valid/test items the lists contain (60 of 80 items: some must be there).
    assert report.consumed == len(held_out) > 0


def test_exclude_none_and_the_deprecated_keep_seen_alias(mf_run, tmp_path):
    a, b = tmp_path / "none.parquet", tmp_path / "keep.parquet"
    report = run_scoring(mf_run, a, k=80, exclude="none")
    assert score_run(mf_run, b, k=80, keep_seen=True) == report.rows
    assert pq.read_table(a).equals(pq.read_table(b))
    data = Run.open(mf_run).data()
    assert report.consumed == len(_known(data)) and report.rows == data.n_users * 80
    with pytest.raises(ValueError, match="contradicts exclude='train'"):
        score_run(mf_run, b, k=5, exclude="train", keep_seen=True)


def test_cli_prints_the_consumed_count_and_keep_seen_is_deprecated(mf_run, tmp_path, capsys):
    out = tmp_path / "top.parquet"
    assert main(["score", "--run-dir", str(mf_run), "--out", str(out), "--k", "20"]) == 0
    assert "[recsys] 0 already-consumed items in the output (--exclude all;" in capsys.readouterr().out
    assert main(["score", "--run-dir", str(mf_run), "--out", str(out), "--k", "20", "--keep-seen"]) == 0
    captured = capsys.readouterr()
    assert "--keep-seen is deprecated" in captured.err and "(--exclude none;" in captured.out
    with pytest.raises(SystemExit):
        main(["score", "--run-dir", str(mf_run), "--out", str(out), "--keep-seen", "--exclude", "train"])


def _users_file(tmp_path, ids):
    f = tmp_path / "users.txt"
    f.write_text("user\n" + "\n".join(str(x) for x in ids) + "\n")
    return f


def test_unknown_users_error_names_the_file_the_count_and_the_first_ids(mf_run, tmp_path):
    known = Run.open(mf_run).vocab("user").ids
    f = _users_file(tmp_path, [known[0], 10**9, "nobody", known[1], 10**9 + 1])
    with pytest.raises(DataError, match=r"unknown user IDs: 3 of 5 .*first: '1000000000', 'nobody', '1000000001'.*"
                                        r"users\.txt.*column 'user'.*row 1"):
        score_run(mf_run, tmp_path / "x.parquet", users_file=f)
    assert main(["score", "--run-dir", str(mf_run), "--out", str(tmp_path / "x.parquet"), "--users", str(f)]) == 1


def test_unknown_users_skip_reports_the_count(mf_run, tmp_path, capsys):
    known = Run.open(mf_run).vocab("user").ids
    f = _users_file(tmp_path, [known[0], 10**9, "nobody", known[1]])
    out = tmp_path / "x.parquet"
    assert main(["score", "--run-dir", str(mf_run), "--out", str(out), "--users", str(f), "--k", "4",
                 "--unknown-users", "skip"]) == 0
    assert "--unknown-users skip: 2 unknown user IDs skipped" in capsys.readouterr().out
    assert list(dict.fromkeys(pq.read_table(out).column("user").to_pylist())) == [known[0], known[1]]


def test_unknown_users_popular_get_the_training_popularity_list_in_request_order(mf_run, tmp_path):
    run = Run.open(mf_run)
    known = run.vocab("user").ids
    order = [10**9, known[2], 10**9 + 5, known[0]]
    report = run_scoring(mf_run, tmp_path / "x.parquet", users_file=_users_file(tmp_path, order), k=6,
                         unknown_users="popular")
    top = pq.read_table(tmp_path / "x.parquet").to_pandas()
    assert report.unknown_popular == 2 and report.consumed == 0
    assert top["user"].dtype == np.int64  # the run's user ID type, for the new users too
    assert list(dict.fromkeys(top["user"])) == order
    counts = np.bincount(run.train_pairs()[1], minlength=len(run.vocab("item")))
    want = run.vocab("item").decode(np.argsort(-counts, kind="stable")[:6])
    for u in (10**9, 10**9 + 5):
        got = top[top["user"] == u].sort_values("rank")
        np.testing.assert_array_equal(got["item"].to_numpy(), want)
        np.testing.assert_array_equal(got["score"].to_numpy(), counts[np.argsort(-counts, kind="stable")[:6]])
    # The trained users' lists are the ones a plain run writes.
    plain = pq.read_table(tmp_path / "x.parquet").to_pandas()
    run_scoring(mf_run, tmp_path / "plain.parquet", users_file=_users_file(tmp_path, [known[2]]), k=6)
    ref = pq.read_table(tmp_path / "plain.parquet").to_pandas()
    np.testing.assert_array_equal(plain[plain["user"] == known[2]]["item"].to_numpy(), ref["item"].to_numpy())


def test_unknown_users_popular_refuses_an_id_that_cannot_be_written(mf_run, tmp_path):
    f = _users_file(tmp_path, [10**9, "nobody"])
    with pytest.raises(DataError, match=r"user ID 'nobody' is not of the run's user ID type.*row 1"):
        score_run(mf_run, tmp_path / "x.parquet", users_file=f, unknown_users="popular")


def test_popular_rows_in_shards_match_the_single_file(mf_run, tmp_path):
    known = Run.open(mf_run).vocab("user").ids
    f = _users_file(tmp_path, [known[0], 10**9, *known[1:9], 10**9 + 1, known[9]])
    single = tmp_path / "all.parquet"
    # One user per GEMM (BLAS sums a row alike whatever the batch), so every chunk boundary meets a popular row.
    score_run(mf_run, single, k=5, users_file=f, unknown_users="popular", chunk_size=1)
    score_run(mf_run, tmp_path / "sh", k=5, users_file=f, unknown_users="popular", shard_users=4, chunk_size=1)
    import pyarrow as pa

    parts = [pq.read_table(p) for p in sorted((tmp_path / "sh").glob("part-*.parquet"))]
    assert pa.concat_tables(parts).equals(pq.read_table(single))


def test_predict_path_excludes_and_falls_back_like_the_plain_path(mf_run, tmp_path):
    from recsys.scoring.predict import predict_report

    known = Run.open(mf_run).vocab("user").ids
    f = _users_file(tmp_path, [known[0], 10**9, *known[1:5]])
    trainer = {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False, "enable_model_summary": False}
    report = predict_report(mf_run, tmp_path / "pred", k=7, users_file=f, unknown_users="popular", shard_users=3,
                            trainer=trainer)
    score_run(mf_run, tmp_path / "ref", k=7, users_file=f, unknown_users="popular", shard_users=3)
    for p in sorted((tmp_path / "ref").glob("part-*.parquet")):
        assert (tmp_path / "pred" / p.name).read_bytes() == p.read_bytes()
    assert report.consumed == 0 and report.unknown_popular == 1
