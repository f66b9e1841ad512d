"""Faults while writing outputs (issue 19): a SIGKILLed scoring job re-runs to byte-identical output with no temp
files left, and a full disk gives one clear line with the previous output intact.

(A fit killed with SIGKILL and resumed is tested in ``tests/test_resume.py``.)
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO

from recsys.testing.hostile import CliResult, Snapshot, cli_case

#: a child ``recsys`` whose Parquet chunk writes are slowed down, so that a kill lands in the middle of a file.
SLOW_CHILD = """
import sys, time
import pyarrow.parquet as pq
write = pq.ParquetWriter.write_table
def slow(self, *a, **k):
    time.sleep(0.15)
    return write(self, *a, **k)
pq.ParquetWriter.write_table = slow
from recsys.cli import main
sys.exit(main(sys.argv[1:]))
"""

#: a child ``recsys`` that may write at most LIMIT bytes per file (RLIMIT_FSIZE; SIGXFSZ ignored, so a write past
#: it fails with EFBIG as on a full disk instead of killing the process).
LIMITED_CHILD = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
from recsys.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _child(code: str, *args) -> subprocess.Popen:
    import torch

    # The thread count of the in-process runs the child is compared with: a GEMM split over another number of
    # threads may round differently in the last bit, and the outputs are compared byte for byte.
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "RECSYS_PROGRESS": "off"}
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _temps(d: Path) -> list[Path]:
    return sorted(d.glob(".*.tmp"))


def _wait_for(cond, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        if proc.poll() is not None:
            pytest.fail(f"the child ended before the kill (exit {proc.returncode}): {proc.stderr.read()[-2000:]}")
        time.sleep(0.02)
    proc.kill()
    pytest.fail("the child never reached the point of the kill")


def _kill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def _files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()}


def test_sigkill_during_sharded_scoring_then_rerun_is_byte_identical(mf_run, tmp_path):
    args = ["score", "--run-dir", mf_run, "--k", "10", "--shard-users", "20", "--chunk-size", "5"]
    ref = tmp_path / "ref"
    cli_case([*args, "--out", ref], 0, unchanged=[mf_run])
    out = tmp_path / "killed"
    proc = _child(SLOW_CHILD, *args, "--out", out)
    # Killed while a shard is half written: two shards done, the next one's temp file open.
    _wait_for(lambda: out.is_dir() and len(list(out.glob("part-*.json"))) >= 2 and _temps(out), proc)
    _kill(proc)
    assert _temps(out), "the kill should leave a temp file behind"
    assert not json.loads((out / "manifest.json").read_text())["complete"]
    res = cli_case([*args, "--out", out], 0, unchanged=[mf_run])
    assert "complete ones kept" in res.out
    assert _files(out) == _files(ref) and not _temps(out)


def test_sigkill_during_single_file_scoring_keeps_the_old_output_and_rerun_is_byte_identical(mf_run, tmp_path):
    args = ["score", "--run-dir", mf_run, "--k", "10", "--chunk-size", "5"]
    ref = tmp_path / "ref.parquet"
    cli_case([*args, "--out", ref], 0, unchanged=[mf_run])
    d = tmp_path / "out"
    out = d / "top.parquet"
    cli_case(["score", "--run-dir", mf_run, "--k", "3", "--out", out], 0)  # yesterday's good output
    previous = Snapshot(out)
    proc = _child(SLOW_CHILD, *args, "--out", out)
    _wait_for(lambda: any(t.stat().st_size > 0 for t in _temps(d)), proc)
    _kill(proc)
    assert not previous.changed(), "a killed job must not touch the published output"
    assert _temps(d), "the kill should leave a temp file behind"
    cli_case([*args, "--out", out], 0, unchanged=[mf_run])
    assert out.read_bytes() == ref.read_bytes() and not _temps(d)


FULL_DISK = {  # (the command under an 8 KiB file-size limit, the earlier one whose output must survive, message)
    "score": (["--k", "50", "--out", "OUT/top.parquet"], ["--k", "2", "--out", "OUT/top.parquet"],
              r"cannot write .*top\.parquet: file too large; top\.parquet was left as it was"),
    "score sharded": (["--k", "50", "--shard-users", "150", "--out", "OUT/shards"],
                      ["--k", "2", "--shard-users", "150", "--out", "OUT/shards"],
                      r"cannot write .*part-00000\.parquet: file too large; part-00000\.parquet was left as it was"),
    "export": (["--out", "OUT/emb"], ["--out", "OUT/emb"],
               r"cannot write .*users\.parquet: file too large; users\.parquet was left as it was"),
}


@pytest.mark.parametrize("case", list(FULL_DISK))
def test_a_full_disk_gives_one_line_and_keeps_the_previous_output(mf_run, tmp_path, case):
    verb = "export" if case == "export" else "score"
    failing, earlier, message = FULL_DISK[case]

    def cmd(opts):
        return [verb, "--run-dir", mf_run, *[str(o).replace("OUT", str(tmp_path)) for o in opts]]

    cli_case(cmd(earlier), 0)  # the previous output, written without the limit
    snap = Snapshot(tmp_path, mf_run)
    proc = _child(LIMITED_CHILD, 8192, *cmd(failing))
    out, err = proc.communicate(timeout=300)
    res = CliResult(proc.returncode, out, err)
    assert res.status == 1 and "Traceback" not in err, err[-2000:]
    assert len(res.err_lines) == 1 and re.search(message, res.err_lines[0]), res.err_lines
    changed = snap.changed()
    # A sharded job marks its manifest incomplete before it replaces anything: the only file allowed to change.
    assert changed == ([str(tmp_path / "shards" / "manifest.json")] if case == "score sharded" else []), changed
    if case == "score sharded":
        assert not json.loads((tmp_path / "shards" / "manifest.json").read_text())["complete"]
    assert not [p for p in tmp_path.rglob(".*.tmp")]
