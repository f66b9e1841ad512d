"""Hostile input for scoring, exporting and evaluating (issue 19): every case is one clear line or a correct result.

Each case runs the command in-process through :func:`recsys.testing.hostile.cli_case`, which asserts the exit
status, the single error line (no traceback) and that the run directory and any earlier output are byte-identical
afterwards. One tiny MF run is fitted per module; a case that damages a run works on its own copy.
"""

from __future__ import annotations

import fcntl
import json
import os
import pickle
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from conftest import fit_args

from recsys.testing.hostile import Snapshot, cli_case, run_cli

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """The module's trained MF run (150 users, 80 items, dimension 128); never modified by a case."""
    from recsys.cli import main

    path = tmp_path_factory.mktemp("hostile") / "run"
    assert main(fit_args("mf_bpr.yaml", path, epochs=1)) == 0
    return path


@pytest.fixture(scope="module")
def good_out(run, tmp_path_factory) -> Path:
    """A good single-file output that a refused command must leave as it is."""
    out = tmp_path_factory.mktemp("good") / "top.parquet"
    assert run_cli(["score", "--run-dir", run, "--k", "5", "--out", out]).status == 0
    return out


def _copy(run: Path, tmp_path: Path, name: str = "run") -> Path:
    dest = tmp_path / name
    shutil.copytree(run, dest)
    return dest


def _tamper(run: Path, edit) -> None:
    """Rewrite ``model.pt`` with ``edit(raw_dict)`` applied; its recorded config hash stays valid."""
    path = run / "model.pt"
    raw = torch.load(path, weights_only=True)
    edit(raw)
    torch.save(raw, path)


def _score(run, out, *extra):
    return ["score", "--run-dir", run, "--k", "5", "--out", out, *extra]


# ------------------------------------------------------------------------------------------ finding 5: options
BAD_OPTIONS = [  # finding 5: nonsense values refused at parse time, exit 2, naming the option
    (["--k", "0"], r"--k: expected an integer >= 1, got 0"),
    (["--k", "-3"], r"--k: expected an integer >= 1, got -3"),
    (["--k", "ten"], r"--k: expected an integer >= 1, got 'ten'"),
    (["--chunk-size", "-5"], r"--chunk-size: expected an integer >= 1"),
    (["--chunk-size", "0"], r"--chunk-size: expected an integer >= 1"),
    (["--shard-users", "0"], r"--shard-users: expected an integer >= 1"),
    (["--shard-users", "-20"], r"--shard-users: expected an integer >= 1"),
    (["--num-shards", "0"], r"--num-shards: expected an integer >= 1"),
    (["--shard-index", "-1"], r"--shard-index: expected an integer >= 0"),
    (["--num-shards", "2", "--shard-index", "2"], r"--shard-index: must be in 0\.\.1 \(--num-shards 2\), got 2"),
    (["--num-shards", "3", "--shard-index", "7"], r"--shard-index: must be in 0\.\.2"),
    (["--exclude", "everything"], r"--exclude: invalid choice"),
    (["--precision", "16"], r"--precision: invalid choice"),
    (["--unknown-users", "ignore"], r"--unknown-users: invalid choice"),
    (["--index", "nosuch:dim=3"], r"--index"),
]


@pytest.mark.parametrize("extra, message", BAD_OPTIONS, ids=[" ".join(a) for a, _ in BAD_OPTIONS])
def test_score_option_values_are_refused_at_parse_time(run, good_out, extra, message):
    # finding 5: `--k 0` used to replace a good output with an empty file, exit 0.
    args = ["score", "--run-dir", run, "--out", good_out, *(["--k", "5"] if "--k" not in extra else []), *extra]
    cli_case(args, 2, message, unchanged=[run, good_out])


@pytest.mark.parametrize("ks, message", [(["-5"], r"--ks: expected an integer >= 1, got -5"),
                                         (["0"], r"--ks: expected an integer >= 1, got 0"),
                                         (["10", "x"], r"--ks: expected an integer >= 1, got 'x'")])
def test_evaluate_ks_are_refused_at_parse_time(run, ks, message):
    # finding 5
    cli_case(["evaluate", "--run-dir", run, "--ks", *ks], 2, message, unchanged=[run])


def test_score_k_beyond_the_catalogue_is_clamped_with_a_note(run, tmp_path):
    # finding 5: decided and documented: lists are catalogue-long and the command says so (no 10**9-wide buffers).
    out = tmp_path / "top.parquet"
    res = cli_case(["score", "--run-dir", run, "--k", str(10**9), "--out", out], 0, unchanged=[run])
    assert "more than the catalogue's 80 items" in res.out
    top = pq.read_table(out).to_pandas()
    assert top.groupby("user").size().max() <= 80 and top["rank"].max() <= 80


# ------------------------------------------------------------------------------------------ finding 4: outputs
def _out_cases(run: Path, tmp: Path) -> dict[str, tuple[list, str]]:
    """Output targets that must be refused before any work: (extra args, message regex)."""
    fifo = tmp / "fifo"
    os.mkfifo(fifo)
    (tmp / "devnull").symlink_to("/dev/null")
    (tmp / "devfull").symlink_to("/dev/full")
    (tmp / "to_model").symlink_to(run / "model.pt")
    (tmp / "dir").mkdir()
    (tmp / "file").write_text("x")
    (tmp / "users.txt").write_text("1\n2\n")
    inside = r"inside the run directory"
    return {
        "model.pt": (["--out", run / "model.pt"], inside),
        "config.yaml": (["--out", run / "config.yaml"], inside),
        "data split": (["--out", run / "data" / "split.parquet"], inside),
        "new name in run": (["--out", run / "top.parquet"], inside),
        "run dir sharded": (["--out", run, "--shard-users", "50"], inside),
        "run subdir sharded": (["--out", run / "data", "--shard-users", "50"], inside),
        "symlink into run": (["--out", tmp / "to_model"], inside),
        "fifo": (["--out", fifo], r"is a FIFO"),
        "fifo sharded": (["--out", fifo, "--shard-users", "50"], r"is a FIFO"),
        "symlink to /dev/null": (["--out", tmp / "devnull"], r"-> /dev/null\) is a character device"),
        "symlink to /dev/full": (["--out", tmp / "devfull"], r"-> /dev/full\) is a character device"),
        "directory": (["--out", tmp / "dir"], r"is a directory: give a regular file or a new name"),
        "file for shards": (["--out", tmp / "file", "--shard-users", "50"], r"is a regular file: this output is a "
                                                                            r"directory"),
        "parent is a file": (["--out", tmp / "file" / "top.parquet"], r"file is not a directory"),
        "the users file": (["--out", tmp / "users.txt", "--users", tmp / "users.txt"], r"is the --users input"),
    }


OUT_CASES = ["model.pt", "config.yaml", "data split", "new name in run", "run dir sharded", "run subdir sharded",
             "symlink into run", "fifo", "fifo sharded", "symlink to /dev/null", "symlink to /dev/full", "directory",
             "file for shards", "parent is a file", "the users file"]


@pytest.mark.parametrize("case", OUT_CASES)
def test_score_refuses_outputs_that_are_not_a_regular_file_or_new_name(run, tmp_path, case):
    # finding 4: `--out RUN/model.pt` replaced the model; `--out /dev/full` as root replaced the device node.
    extra, message = _out_cases(run, tmp_path)[case]
    cli_case(["score", "--run-dir", run, "--k", "5", *extra], 2, message, unchanged=[run, tmp_path])
    for link in ("devnull", "devfull", "to_model"):
        assert (tmp_path / link).is_symlink()
    assert (tmp_path / "fifo").is_fifo()


def test_score_through_a_symlink_replaces_its_target_and_keeps_the_link(run, tmp_path):
    # finding 4: symlinks are resolved and checked; a link to a regular file is written through.
    target = tmp_path / "real.parquet"
    target.write_bytes(b"old")
    (tmp_path / "link.parquet").symlink_to(target)
    cli_case(_score(run, tmp_path / "link.parquet"), 0, unchanged=[run])
    assert (tmp_path / "link.parquet").is_symlink() and pq.read_table(target).num_rows == 750


@pytest.mark.parametrize("case", ["run dir", "run data dir", "a file", "fifo", "symlink to /dev/null"])
def test_export_refuses_outputs_that_are_not_a_directory_or_new_name(run, tmp_path, case):
    # finding 4 (export): the same checks, for a directory output.
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    (tmp_path / "devnull").symlink_to("/dev/null")
    (tmp_path / "a.txt").write_text("x")
    out, message = {"run dir": (run, "inside the run directory"), "run data dir": (run / "data", "inside the run"),
                    "a file": (tmp_path / "a.txt", "is a regular file: this output is a directory"),
                    "fifo": (fifo, "is a FIFO"), "symlink to /dev/null": (tmp_path / "devnull", "character device")
                    }[case]
    cli_case(["export", "--run-dir", run, "--out", out], 2, message, unchanged=[run, tmp_path])


@pytest.mark.parametrize("case", ["metrics.json", "model.pt", "fifo", "directory", "symlink to /dev/null"])
def test_evaluate_refuses_outputs_before_rebuilding_the_model(run, tmp_path, case):
    # finding 4 (evaluate --out)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    (tmp_path / "devnull").symlink_to("/dev/null")
    out, message = {"metrics.json": (run / "metrics.json", "inside the run directory"),
                    "model.pt": (run / "model.pt", "inside the run directory"), "fifo": (fifo, "is a FIFO"),
                    "directory": (tmp_path, "is a directory"), "symlink to /dev/null": (tmp_path / "devnull",
                                                                                        "character device")}[case]
    cli_case(["evaluate", "--run-dir", run, "--out", out], 2, message, unchanged=[run, tmp_path])


def test_evaluate_may_name_its_own_result_file_inside_the_run(run, tmp_path):
    # finding 4: evaluate writes eval_*.json into runs itself, so that name stays allowed (nothing else changes).
    mine = _copy(run, tmp_path)
    before = Snapshot(mine)
    cli_case(["evaluate", "--run-dir", mine, "--out", mine / "eval_custom.json"], 0)
    assert before.changed() == [str(mine / "eval_custom.json")]
    assert "ndcg@10" in json.loads((mine / "eval_custom.json").read_text())


# ------------------------------------------------------------------------------------------ finding 8: model.pt
def _rows(n):
    return lambda raw: raw["tables"].__setitem__("queries", raw["tables"]["queries"][:n])


def _extra_row(raw):
    q = raw["tables"]["queries"]
    raw["tables"]["queries"] = torch.cat([q, q[:1]])


def _item_dim(raw):
    raw["tables"]["items"] = raw["tables"]["items"][:, :64].contiguous()


def _both_dim(raw):
    raw["tables"]["queries"] = raw["tables"]["queries"][:, :64].contiguous()


def _nan(raw):
    raw["tables"]["queries"][3, 5] = float("nan")


def _flat(raw):
    raw["tables"]["items"] = raw["tables"]["items"].reshape(-1)


def _int_table(raw):
    raw["tables"]["items"] = raw["tables"]["items"].long()


def _scorer(**kv):
    return lambda raw: raw["scorer"].update(kv)


def _concepts(raw):
    raw["concepts"] = ["genre"] * 3


TAMPERED = {  # finding 8: tables of another run, or metadata no recsys writes
    "149 user rows": (_rows(149), r"queries table has 149 rows but the run has 150 users"),
    "151 user rows": (_extra_row, r"queries table has 151 rows but the run has 150 users"),
    "60 user rows": (_rows(60), r"queries table has 60 rows"),
    "item dim 64": (_item_dim, r"queries have dimension 128 but the items 64"),
    "query dim 64": (_both_dim, r"queries have dimension 64 but the items 128"),
    "nan": (_nan, r"queries table holds NaN or infinite values"),
    "1-D items": (_flat, r"items table must be a 2-D float tensor"),
    "integer items": (_int_table, r"items table must be a 2-D float tensor"),
    "metric l2": (_scorer(metric="l2"), r"unknown scorer metric 'l2'"),
    "temperature -1": (_scorer(temperature=-1.0), r"temperature must be a positive number, got -1.0"),
    "temperature text": (_scorer(temperature="hot"), r"temperature must be a positive number, got 'hot'"),
    "normalize text": (_scorer(normalize="yes"), r"'normalize' must be true or false"),
    "concepts": (_concepts, r"3 concept names for tables of dimension 128"),
}


@pytest.mark.parametrize("case", list(TAMPERED))
def test_score_refuses_model_tables_that_do_not_fit_the_run(run, good_out, tmp_path, case):
    # finding 8: tables from another run were scored silently (or an IndexError traceback).
    edit, message = TAMPERED[case]
    mine = _copy(run, tmp_path)
    _tamper(mine, edit)
    cli_case(["score", "--run-dir", mine, "--k", "5", "--out", good_out], 1, r"model\.pt.*" + message,
             unchanged=[mine, good_out])


@pytest.mark.parametrize("verb", ["export", "evaluate"])
def test_export_and_evaluate_refuse_mismatched_tables(run, tmp_path, verb):
    # finding 8 (export, evaluate)
    mine = _copy(run, tmp_path)
    _tamper(mine, _rows(149))
    args = [verb, "--run-dir", mine] + (["--out", tmp_path / "emb"] if verb == "export" else [])
    cli_case(args, 1, r"model\.pt.*149 rows but the run has 150 users", unchanged=[mine])
    assert not (tmp_path / "emb").exists()


# ------------------------------------------------------------------------------------------ corrupted runs
def _truncate(run):
    p = run / "model.pt"
    p.write_bytes(p.read_bytes()[:1000])


def _empty_model(run):
    (run / "model.pt").write_bytes(b"")


def _model_is_dir(run):
    (run / "model.pt").unlink()
    (run / "model.pt").mkdir()


def _no_vocab(run):
    (run / "data" / "user_vocab.parquet").unlink()


def _vocab_not_parquet(run):
    (run / "data" / "user_vocab.parquet").write_text("user\n1\n2\n")


def _split_not_parquet(run):
    (run / "data" / "split.parquet").write_bytes(b"PAR1" + b"\0" * 50)


def _edited_config(run):
    (run / "config.yaml").write_text((run / "config.yaml").read_text() + "\n# edited\n")


def _run_is_file(run):
    shutil.rmtree(run)
    run.write_text("not a run\n")


def _no_run(run):
    shutil.rmtree(run)


CORRUPT = {  # damaged run directories: one line naming the file, for each command that reads it
    "truncated model.pt": (_truncate, r"cannot read checkpoint .*model\.pt.*truncated, corrupted"),
    "empty model.pt": (_empty_model, r"cannot read checkpoint .*model\.pt"),
    "model.pt is a directory": (_model_is_dir, r"model\.pt' of the run is not a regular file"),
    "missing user vocab": (_no_vocab, r"has no 'data/user_vocab\.parquet'"),
    "user vocab not parquet": (_vocab_not_parquet, r"data file cannot be read.*user_vocab\.parquet"),
    "config edited": (_edited_config, r"config\.yaml of run .* was changed after fit"),
    "run dir is a file": (_run_is_file, r"run directory .* is not a directory"),
    "run dir missing": (_no_run, r"run directory .* does not exist"),
}


@pytest.mark.parametrize("verb", ["score", "evaluate", "export"])
@pytest.mark.parametrize("case", list(CORRUPT))
def test_corrupted_run_directories_give_one_line(run, good_out, tmp_path, case, verb):
    damage, message = CORRUPT[case]
    mine = _copy(run, tmp_path)
    damage(mine)
    args = {"score": ["score", "--run-dir", mine, "--k", "5", "--out", good_out],
            "evaluate": ["evaluate", "--run-dir", mine],
            "export": ["export", "--run-dir", mine, "--out", tmp_path / "emb"]}[verb]
    cli_case(args, 1, message, unchanged=[mine, good_out])


@pytest.mark.parametrize("verb", ["score", "evaluate"])
def test_a_split_that_is_not_parquet_is_named(run, good_out, tmp_path, verb):
    mine = _copy(run, tmp_path)
    _split_not_parquet(mine)
    args = ["score", "--run-dir", mine, "--k", "5", "--out", good_out] if verb == "score" else \
        ["evaluate", "--run-dir", mine]
    cli_case(args, 1, r"data file cannot be read.*split\.parquet", unchanged=[mine, good_out])


# ------------------------------------------------------------------------------------------ finding 10: pickles
class _Evil:
    """A pickle that would run a command when loaded without weights_only."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("verb", ["score", "evaluate", "export"])
@pytest.mark.parametrize("kind", ["zip", "plain pickle"])
def test_a_malicious_model_pt_is_refused_without_running_it(run, good_out, tmp_path, kind, verb):
    # finding 10: the message must not quote torch's advice to load with weights_only=False.
    mine = _copy(run, tmp_path)
    marker = tmp_path / "PWNED"
    if kind == "zip":
        torch.save({"state_dict": {}, "x": _Evil(marker)}, mine / "model.pt")
    else:
        (mine / "model.pt").write_bytes(pickle.dumps(_Evil(marker)))
    args = {"score": ["score", "--run-dir", mine, "--k", "5", "--out", good_out],
            "evaluate": ["evaluate", "--run-dir", mine],
            "export": ["export", "--run-dir", mine, "--out", tmp_path / "emb"]}[verb]
    res = cli_case(args, 1, r"refusing to load .*model\.pt.*Python objects other than tensors.*nothing in it was "
                            r"run", unchanged=[mine, good_out])
    assert "weights_only" not in res.err and not marker.exists()
    if kind == "zip":
        assert "posix.system" in res.err_lines[0]


# ------------------------------------------------------------------------------------------ finding 10: --users
def _users_table(out: Path) -> list:
    return pq.read_table(out).column("user").to_pylist()


USERS_OK = {  # accepted --users files: (file name, content, the users scored in order)
    "csv user,segment": ("u.csv", "user,segment\n3,a\n1,b\n", [3, 1]),
    "csv segment,userId": ("u.csv", "segment,userId\na,4\nb,2\n", [4, 2]),
    "tsv user_id": ("u.tsv", "user_id\tsegment\n5\tx\n", [5]),
    "header user": ("u.txt", "user\n7\n8\n", [7, 8]),
    "spaces": ("u.txt", "  9 \n10\n", [9, 10]),
}


@pytest.mark.parametrize("case", list(USERS_OK))
def test_users_files_with_a_user_column_are_read(run, tmp_path, case):
    # finding 10: `--users` help promised a 'user' column, but a CSV user,segment was rejected.
    name, body, users = USERS_OK[case]
    f = tmp_path / name
    f.write_text(body)
    out = tmp_path / "top.parquet"
    cli_case(_score(run, out, "--users", f), 0, unchanged=[run, f])
    seen = list(dict.fromkeys(_users_table(out)))
    assert seen == users


def test_duplicate_users_are_counted_and_scored_once(run, tmp_path):
    # finding 10: duplicate --users rows gave duplicate output.
    f = tmp_path / "u.txt"
    f.write_text("1\n2\n1\n3\n2\n01\n")
    out = tmp_path / "top.parquet"
    res = cli_case(_score(run, out, "--users", f), 0, unchanged=[run, f])
    assert "3 duplicate rows ignored, each user is scored once (first: '1' at row 2)" in res.out
    users = _users_table(out)
    assert list(dict.fromkeys(users)) == [1, 2, 3] and len(users) == 15


USERS_BAD = {  # refused --users files: (file name, content or None for a directory, message)
    "abc among ints": ("u.txt", "1\nabc\n2\n", r"first: 'abc'\); 1 of them are not int64 IDs.*u\.txt.*column "
                                               r"'user'.*row 1"),
    "abc after header": ("u.csv", "user,segment\n1,a\nabc,b\n", r"'abc'.*not int64 IDs.*row 1"),
    "2**63": ("u.txt", f"{2**63}\n", r"'9223372036854775808'.*not int64 IDs.*row 0"),
    "empty line": ("u.txt", "1\n\n2\n", r"empty user ID.*column 'user', row 1"),
    "short csv row": ("u.csv", "segment,user\na,1\nb\n", r"row has 1 fields, the user column is field 2.*row 1"),
    "empty file": ("u.txt", "", r"no user IDs in file"),
    "header only": ("u.txt", "user\n", r"no user IDs in file"),
    "not utf-8": ("u.txt", b"1\n\xff\xfe2\n", r"not UTF-8 text"),
    "a directory": ("udir", None, r"users file is not a regular file"),
    "not parquet": ("u.parquet", "1\n2\n", r"users file is not a readable Parquet file"),
    "missing": ("absent.txt", False, r"users file not found"),
}


@pytest.mark.parametrize("case", list(USERS_BAD))
def test_bad_users_files_give_one_line(run, good_out, tmp_path, case):
    name, body, message = USERS_BAD[case]
    f = tmp_path / name
    if body is None:
        f.mkdir()
    elif isinstance(body, bytes):
        f.write_bytes(body)
    elif body is not False:
        f.write_text(body)
    cli_case(["score", "--run-dir", run, "--k", "5", "--out", good_out, "--users", f], 1, message,
             unchanged=[run, good_out, tmp_path])


def test_a_parquet_users_file_without_a_user_column_is_refused(run, good_out, tmp_path):
    import pyarrow as pa

    f = tmp_path / "u.parquet"
    pq.write_table(pa.table({"a": [1, 2], "b": [3, 4]}), f)
    cli_case(_score(run, good_out, "--users", f), 1, r"no user column .* among \['a', 'b'\]",
             unchanged=[run, good_out, f])


# ------------------------------------------------------------------------------------------ finding 1: shards
def _shards(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.glob("part-*"))}


@pytest.fixture(scope="module")
def other_model(run, tmp_path_factory) -> Path:
    """The run with another model.pt (negated user vectors: other lists), its config hash still valid."""
    dest = tmp_path_factory.mktemp("other") / "run"
    shutil.copytree(run, dest)
    _tamper(dest, lambda raw: raw["tables"].__setitem__("queries", -raw["tables"]["queries"]))
    return dest


STALE = {  # finding 1: (first job's options, second job's options); the second must not keep the first's shards
    "k": (["--k", "10"], ["--k", "3"]),
    "exclude": (["--exclude", "all"], ["--exclude", "none"]),
    "index": ([], ["--index", "prefix:dim=16"]),
    "precision": ([], ["--precision", "bf16"]),
    "shard size": (["--shard-users", "20"], ["--shard-users", "70"]),
    "users subset": (["--users", "u60a.txt"], ["--users", "u60b.txt"]),
    "users file edited": (["--users", "u.txt=a"], ["--users", "u.txt=b"]),
    "unknown-users policy": (["--users", "unk.txt", "--unknown-users", "skip"],
                             ["--users", "unk.txt", "--unknown-users", "popular"]),
    "model": (["--run-dir", "OTHER"], []),
}


def _job(run, other, tmp: Path, out: Path, options: list[str]) -> list:
    """A sharded score command; users files named in ``options`` are written here (``u.txt=a``: that content)."""
    contents = {"u60a.txt": range(0, 60), "u60b.txt": range(60, 120), "a": range(0, 40), "b": range(40, 80),
                "unk.txt": [*range(0, 30), 10**9]}
    opts = {"--k": "5", "--shard-users": "25", "--run-dir": run}
    it = iter(options)
    for key in it:
        value = next(it)
        if key == "--users":
            name, _, which = value.partition("=")
            (tmp / name).write_text("".join(f"{u}\n" for u in contents[which or name]))
            value = tmp / name
        opts[key] = other if value == "OTHER" else value
    return ["score", "--out", out, *[str(x) for kv in opts.items() for x in kv]]


@pytest.mark.parametrize("case", list(STALE))
def test_a_rerun_with_any_difference_rewrites_the_shards(run, other_model, tmp_path, case):
    # finding 1: `--k 10` then `--k 3` into one directory: "wrote 0 rows", complete, shards still ranks 1-10.
    first, second = STALE[case]
    out, ref = tmp_path / "out", tmp_path / "ref"
    cli_case(_job(run, other_model, tmp_path, out, first), 0, unchanged=[run, other_model])
    before = _shards(out)
    res = cli_case(_job(run, other_model, tmp_path, out, second), 0, unchanged=[run, other_model])
    cli_case(_job(run, other_model, tmp_path, ref, second), 0, unchanged=[run, other_model])
    assert _shards(out) == _shards(ref) and _shards(out) != before, res.out
    got, want = (json.loads((d / "manifest.json").read_text()) for d in (out, ref))
    assert got == want and got["complete"] and got["produced_by"]["k"] == want["produced_by"]["k"]


def test_an_identical_rerun_keeps_every_shard(run, tmp_path):
    # finding 1: the fingerprint also says when nothing changed: complete shards are verified and kept.
    out = tmp_path / "out"
    cli_case(_score(run, out, "--shard-users", "40"), 0, unchanged=[run])
    snap = Snapshot(out)
    res = cli_case(_score(run, out, "--shard-users", "40"), 0, unchanged=[run, out])
    assert "0 written, 4 complete ones kept" in res.out and not snap.changed()
    produced = json.loads((out / "manifest.json").read_text())["produced_by"]
    assert produced["run"]["model_sha256"] and produced["k"] == 5 and produced["exclude"] == "all"


# ------------------------------------------------------------------------------------------ finding 9: umask
@pytest.mark.parametrize("umask", [0o022, 0o002])
@pytest.mark.parametrize("verb", ["score", "score sharded", "export", "evaluate"])
def test_every_output_follows_the_umask(run, tmp_path, umask, verb):
    # finding 9: every file written through atomic_path was 0600 whatever the umask.
    out = tmp_path / "out"
    args = {"score": _score(run, out), "score sharded": _score(run, out, "--shard-users", "50"),
            "export": ["export", "--run-dir", run, "--out", out],
            "evaluate": ["evaluate", "--run-dir", run, "--out", out]}[verb]
    old = os.umask(umask)
    try:
        cli_case(args, 0, unchanged=[run])
    finally:
        os.umask(old)
    files = [out] if out.is_file() else sorted(out.iterdir())
    assert len(files) >= (5 if verb == "score sharded" else 1)
    for f in files:
        assert f.stat().st_mode & 0o777 == 0o666 & ~umask, (f.name, oct(f.stat().st_mode))
    if out.is_dir():
        assert out.stat().st_mode & 0o777 == 0o777 & ~umask


# ------------------------------------------------------------------------------------------ finding 10: temp files
def test_a_killed_writers_temp_file_is_removed_and_a_live_ones_kept(run, tmp_path):
    # finding 10: a SIGKILLed score left `.top.parquet.XXXXXXXX.tmp`; the re-run removes such files, and only ours.
    out = tmp_path / "top.parquet"
    stale = tmp_path / ".top.parquet.k1ll3d00.tmp"
    stale.write_bytes(b"half a file")
    live = tmp_path / ".top.parquet.l1ve0000.tmp"
    live.write_bytes(b"being written")
    foreign = [tmp_path / ".top.parquet.tmp", tmp_path / ".other.parquet.abcdefgh.tmp", tmp_path / "top.parquet.tmp"]
    for f in foreign:
        f.write_bytes(b"not ours")
    fd = os.open(live, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # what a writer holds while it writes
    try:
        cli_case(_score(run, out), 0, unchanged=[run, *foreign, live])
    finally:
        os.close(fd)
    assert not stale.exists() and live.exists() and all(f.exists() for f in foreign)
    assert pq.read_table(out).num_rows == 750


# ------------------------------------------------------------------------------------------ more damaged data/
def _split_rows_out_of_range(run):
    import pyarrow as pa

    path = run / "data" / "split.parquet"
    t = pq.read_table(path)
    users = t.column("user").to_numpy().copy()
    users[7] = 999
    pq.write_table(t.set_column(t.column_names.index("user"), "user", pa.array(users)), path)


@pytest.mark.parametrize("verb", ["score", "evaluate"])
@pytest.mark.parametrize("case", ["missing split", "split rows out of range"])
def test_a_damaged_split_is_named(run, good_out, tmp_path, case, verb):
    mine = _copy(run, tmp_path)
    if case == "missing split":
        (mine / "data" / "split.parquet").unlink()
        message = r"has no 'data/split\.parquet'"
    else:
        _split_rows_out_of_range(mine)
        message = r"user row 999 is outside the run's 150 users.*split\.parquet.*row 7"
    args = ["score", "--run-dir", mine, "--k", "5", "--out", good_out] if verb == "score" else \
        ["evaluate", "--run-dir", mine]
    cli_case(args, 1, message, unchanged=[mine, good_out])


def test_export_needs_no_split(run, tmp_path):
    # A correct result: export reads the vocabularies and model.pt only.
    mine = _copy(run, tmp_path)
    (mine / "data" / "split.parquet").unlink()
    cli_case(["export", "--run-dir", mine, "--out", tmp_path / "emb"], 0, unchanged=[mine])
    assert pq.read_table(tmp_path / "emb" / "users.parquet").num_rows == 150


def test_score_refuses_to_write_over_its_histories_file(run, tmp_path):
    # finding 4: the output may not be one of the command's inputs.
    h = tmp_path / "hist.csv"
    h.write_text("user,item\n1,2\n")
    cli_case(_score(run, h, "--histories", h), 2, r"is the --histories input file", unchanged=[run, tmp_path])


@pytest.mark.parametrize("extra, message", [
    (["--num-shards", "2"], r"--trainer\.\* scoring supports neither --num-shards"),
    (["--new-items", "x.csv"], r"--new-items is not supported with --trainer\.\* options"),
])
def test_lightning_scoring_refuses_unsupported_combinations(run, good_out, extra, message):
    cli_case(_score(run, good_out, "--trainer.accelerator", "cpu", *extra), 2, message, unchanged=[run, good_out])
