"""The console: a cached `recsys fit --help`, progress reports, one-line user errors (tracebacks on request)."""

import io
import logging
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import REPO

from recsys.cli import help_cache, main
from recsys.errors import DataError, UsageError

#: A fixed width: argparse wraps help to the terminal, and a test must not depend on the one it runs in.
COLUMNS = "100"
_CALL = ("import sys; from recsys.cli.help_cache import cached_fit_help; served = cached_fit_help(['--help']); "
         "print('served' if served else 'declined', 'lightning' in sys.modules, file=sys.stderr)")


def _env(cache: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RECSYS_NO_HELP_CACHE", "RECSYS_TRACEBACK")}
    return {**env, "RECSYS_CACHE": str(cache), "COLUMNS": COLUMNS, "OMP_NUM_THREADS": "1", **extra}


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    return lines[0]


# ------------------------------------------------------------------------------------------------- fit --help cache
def test_cached_fit_help_is_the_real_help_and_skips_lightning(tmp_path):
    ref = subprocess.run([sys.executable, "-m", "recsys", "fit", "--help"], capture_output=True, cwd=REPO,
                         env=_env(tmp_path / "unused", RECSYS_NO_HELP_CACHE="1"), timeout=300)
    assert ref.returncode == 0, ref.stderr.decode()
    assert ref.stdout.count(b"usage: recsys fit") == 1

    cold = subprocess.run([sys.executable, "-c", _CALL], capture_output=True, env=_env(tmp_path), timeout=300)
    assert cold.stdout == ref.stdout, cold.stderr.decode()
    assert "served" in cold.stderr.decode()
    files = list((tmp_path / "help").iterdir())
    assert [f.name for f in files] == [f"fit-w{COLUMNS}.txt"]

    warm = subprocess.run([sys.executable, "-c", _CALL], capture_output=True, env=_env(tmp_path), timeout=120)
    assert warm.stdout == ref.stdout
    # Served from the file: Lightning (seconds to import) was never loaded.
    assert warm.stderr.decode().split()[-2:] == ["served", "False"], warm.stderr.decode()


def test_help_cache_declines_what_it_cannot_answer(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("RECSYS_CACHE", str(tmp_path))
    monkeypatch.setattr(help_cache, "_render", lambda: pytest.fail("nothing should be rendered"))
    # The help of a config shows the config's values: the real parser must run.
    assert not help_cache.cached_fit_help(["--config", "mf_bpr", "--help"])
    assert not help_cache.cached_fit_help(["--trainer.max_epochs", "3"])
    monkeypatch.setenv("RECSYS_NO_HELP_CACHE", "1")
    assert not help_cache.cached_fit_help(["--help"])
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("content", [b"# recsys fit --help cache stale-key\nold help\n", b"\xff\xfe\x00garbage",
                                     b"no header at all"])
def test_stale_or_unreadable_cache_is_rendered_again(monkeypatch, tmp_path, capsys, content):
    monkeypatch.setenv("RECSYS_CACHE", str(tmp_path))
    monkeypatch.setenv("COLUMNS", COLUMNS)
    path = help_cache.help_cache_path()
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    renders = []
    monkeypatch.setattr(help_cache, "_render", lambda: renders.append(1) or "usage: recsys fit ...\n")
    assert help_cache.cached_fit_help(["-h"])
    assert capsys.readouterr().out == "usage: recsys fit ...\n"
    assert path.read_text().splitlines()[0] == "# recsys fit --help cache " + help_cache.fit_help_key()
    # Rewritten: the next call reads the file.
    assert help_cache.cached_fit_help(["--help"])
    assert capsys.readouterr().out == "usage: recsys fit ...\n"
    assert renders == [1]


def test_failed_render_leaves_it_to_the_real_parser(monkeypatch, tmp_path):
    monkeypatch.setenv("RECSYS_CACHE", str(tmp_path))
    monkeypatch.setattr(help_cache, "_render", lambda: None)
    assert not help_cache.cached_fit_help(["--help"])
    assert not (tmp_path / "help").exists()


def test_help_key_follows_sources_width_and_settings(monkeypatch, tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    src = pkg / "sub" / "a.py"
    src.write_text("x = 1\n")
    monkeypatch.setattr(help_cache, "_package_dir", lambda: pkg)
    monkeypatch.setenv("COLUMNS", "100")
    base = help_cache.fit_help_key()
    assert help_cache.fit_help_key() == base
    st = src.stat()
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    edited = help_cache.fit_help_key()
    assert edited != base
    monkeypatch.setenv("COLUMNS", "120")
    assert help_cache.fit_help_key() != edited
    monkeypatch.setenv("JSONARGPARSE_DEFAULT_ENV", "1")
    assert len({base, edited, help_cache.fit_help_key()}) == 3


def test_help_cache_location(monkeypatch, tmp_path):
    monkeypatch.delenv("RECSYS_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("COLUMNS", "90")
    assert help_cache.help_cache_path() == tmp_path / "xdg" / "recsys" / "help" / "fit-w90.txt"
    monkeypatch.setenv("RECSYS_CACHE", str(tmp_path / "rc"))
    assert help_cache.help_cache_path() == tmp_path / "rc" / "help" / "fit-w90.txt"


# ------------------------------------------------------------------------------------------------------ progress
def test_byte_progress_logs_mib(caplog):
    from recsys.progress import progress

    with caplog.at_level(logging.INFO, logger="recsys.progress"), \
            progress(4 << 20, "downloading ml-100k", "B", every_s=0.0, bar=False) as bar:
        bar.update(1 << 20)
    assert "downloading ml-100k: 1.0/4.0 MiB (25%)" in caplog.text


class _Recorder:
    """Stands in for :func:`recsys.progress.progress`: records what a loop reports."""

    def __init__(self):
        self.calls = []

    def __call__(self, total, desc, unit="it", **kwargs):
        rec = {"total": total, "desc": desc, "unit": unit, "n": 0, **kwargs}
        self.calls.append(rec)

        class _Bar:
            def update(self, n=1):
                rec["n"] += n

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                pass

        return _Bar()


def test_movielens_download_reports_bytes(monkeypatch, tmp_path):
    from recsys.datasets import movielens

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("ml-100k/u.data", "1\t2\t5\t881250949\n" * 2000)
    payload = buf.getvalue()

    class _Response(io.BytesIO):
        headers = {"Content-Length": str(len(payload))}

    monkeypatch.setitem(movielens.MOVIELENS_VARIANTS, "ml-100k", movielens._Variant("100k", "u.data", None, None))
    monkeypatch.setattr(movielens.urllib.request, "urlopen", lambda url, timeout: _Response(payload))
    rec = _Recorder()
    monkeypatch.setattr(movielens, "progress", rec)
    directory = movielens._download("ml-100k", tmp_path)
    assert (directory / "u.data").is_file()
    assert rec.calls == [{"total": len(payload), "desc": "downloading ml-100k", "unit": "B", "n": len(payload)}]


def test_lm_encoding_reports_texts(monkeypatch):
    import torch

    from recsys.text import lm

    class _Tokens(dict):
        def to(self, device):
            return self

    class _Tokenizer:
        def __call__(self, texts, **kwargs):
            n = max(len(t) for t in texts)
            return _Tokens(input_ids=torch.ones(len(texts), n, dtype=torch.long),
                           attention_mask=torch.ones(len(texts), n, dtype=torch.long))

    class _Model:
        def __call__(self, input_ids, attention_mask):
            return type("Out", (), {"last_hidden_state": input_ids[..., None].float().expand(-1, -1, 4)})()

    enc = lm.LMEncoder.__new__(lm.LMEncoder)
    enc._tokenizer, enc._model = _Tokenizer(), _Model()
    enc.batch_size, enc.max_length, enc.pooling, enc.normalize = 2, 8, "mean", True
    enc.device, enc.progress = torch.device("cpu"), False
    rec = _Recorder()
    monkeypatch.setattr(lm, "progress", rec)
    out = enc._run(["a", "bb", "ccc", "dddd", "e"])
    assert out.shape == (5, 4)
    # progress=False still goes through recsys.progress, which then reports nothing.
    assert rec.calls == [{"total": 5, "desc": "LM encoding", "unit": "text", "n": 5, "enabled": False}]


# ------------------------------------------------------------------------------------------ one-line user errors
@pytest.fixture
def files(tmp_path):
    (tmp_path / "empty.csv").write_bytes(b"")
    (tmp_path / "wrong.csv").write_text("a,b\n1,2\n")
    (tmp_path / "binary.csv").write_bytes(bytes(range(128, 256)) * 8)
    (tmp_path / "ok.csv").write_text("user,item\n1,2\n1,3\n2,2\n2,3\n")
    (tmp_path / "syntax.yaml").write_text("model:\n  class_path: x\n   bad: [\n")
    (tmp_path / "unknown.yaml").write_text("foo: 1\n")
    return tmp_path


@pytest.mark.parametrize("case, named", [
    (["--dataset", "generic", "--path", "{d}/empty.csv"], ["{d}/empty.csv", "empty file"]),
    (["--dataset", "generic", "--path", "{d}/wrong.csv"], ["{d}/wrong.csv", "missing column 'user'"]),
    (["--dataset", "generic", "--path", "{d}/binary.csv"], ["{d}/binary.csv", "not utf-8 text"]),
    (["--dataset", "generic", "--path", "{d}/missing.csv"], ["{d}/missing.csv", "file not found"]),
    (["--dataset", "nope"], ["'nope'", "--data.dataset", "ml-1m"]),
    (["--dataset", "generic"], ["--data.path"]),
    (["--dataset", "synthetic", "--path", "{d}/ok.csv"], ["{d}/ok.csv", "--data.path"]),
])
def test_data_errors_are_one_line(files, capsys, case, named):
    assert main(["data", *(a.format(d=files) for a in case)]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith("recsys data: error: ")
    for text in named:
        assert text.format(d=files) in line


@pytest.mark.parametrize("case, status, named", [
    (["--trainer.max_epochs", "abc"], 2, ["trainer.max_epochs", "int", "abc"]),
    (["--config", "{d}/syntax.yaml"], 2, ["--config {d}/syntax.yaml", "line 3"]),
    (["--config", "{d}/unknown.yaml"], 2, ["--config {d}/unknown.yaml", "'foo'"]),
    (["--data.split.method", "bogus"], 2, ["data.split.method", "bogus"]),
    (["--data.split.ratios", "[0.8,-0.1,0.3]", "--run-dir", "{d}/run"], 2, ["--data.split.ratios"]),
    (["--data.dataset", "nope", "--run-dir", "{d}/run"], 1, ["'nope'", "--data.dataset"]),
    (["--data.dataset", "generic", "--data.path", "{d}/ok.csv", "--data.split.method", "temporal",
      "--run-dir", "{d}/run"], 1, ["--data.split.method temporal", "timestamps"]),
    (["--data.preprocess.min_user_interactions", "100000", "--run-dir", "{d}/run"], 1,
     ["no interactions left", "--data.preprocess"]),
])
def test_fit_errors_are_one_line(files, capsys, case, status, named):
    argv = ["fit", *(a.format(d=files) for a in case)]
    if status == 2:
        # A bad option: the parser's own exit, as argparse does, or a value refused when the options are read.
        try:
            got = main(argv)
        except SystemExit as exc:
            got = exc.code
        assert got == 2
    else:
        assert main(argv) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith("recsys fit: error: ")
    for text in named:
        assert text.format(d=files) in line


def test_traceback_on_request(files, monkeypatch, capsys):
    # --traceback sets RECSYS_TRACEBACK for the whole process: monkeypatch restores it after the test.
    monkeypatch.setenv("RECSYS_TRACEBACK", "0")
    with pytest.raises(DataError, match="unknown dataset 'nope'"):
        main(["--traceback", "data", "--dataset", "nope"])
    monkeypatch.setenv("RECSYS_TRACEBACK", "1")
    with pytest.raises(DataError, match="empty file"):
        main(["data", "--dataset", "generic", "--path", str(files / "empty.csv")])
    # A bad fit option: jsonargparse's full report (usage and the nested explanation), not the one line.
    with pytest.raises(SystemExit):
        main(["fit", "--trainer.max_epochs", "abc"])
    assert len(capsys.readouterr().err.splitlines()) > 5


def test_option_checks_at_the_source():
    from recsys.data.prepared import Preprocess, SplitSpec

    with pytest.raises(DataError, match="--data.preprocess.duplicates"):
        Preprocess(duplicates="last")
    with pytest.raises(UsageError, match="--data.split.valid_from_train"):
        SplitSpec(valid_from_train=1.5)
    assert SplitSpec(ratios=(1.0, 0.0, 0.0)).ratios == (1.0, 0.0, 0.0)
