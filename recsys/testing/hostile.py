"""Helpers for adversarial tests: run a command as a user would, and prove nothing else changed.

Every hostile case asserts three things: the exit status, the message (one line on stderr, naming what was wrong),
and that every file that existed before is byte-identical afterwards (:class:`Snapshot`). ``cli_case`` does all
three for an in-process ``recsys`` command.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CliResult", "Snapshot", "cli_case", "run_cli"]


@dataclass
class CliResult:
    """What one ``recsys`` command did.

    Args:
        status: its exit status (argparse's ``SystemExit`` code for usage errors).
        out: what it printed on stdout.
        err: what it printed on stderr.
    """

    status: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        """Non-empty stderr lines, without log records (``[name] ...``) and Python warnings."""
        keep = []
        for line in self.err.splitlines():
            s = line.strip()
            if not s or s.startswith("[") or "Warning:" in s or s.startswith("warnings.warn"):
                continue
            keep.append(s)
        return keep


def run_cli(args: list[str]) -> CliResult:
    """Run ``recsys ARGS`` in this process, capturing its output (no traceback escapes: one would fail the test)."""
    from recsys.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main([str(a) for a in args])
        except SystemExit as e:  # argparse's usage errors
            status = e.code if isinstance(e.code, int) else 1
    return CliResult(int(status or 0), out.getvalue(), err.getvalue())


class Snapshot:
    """The bytes (as sha256) and modes of every file under some paths, to compare before and after a command.

    Args:
        *paths: files or directories to watch (directories recursively; missing paths are recorded as missing).
    """

    def __init__(self, *paths: str | os.PathLike) -> None:
        self.paths = [Path(p) for p in paths]
        self.before = self._take()

    def _take(self) -> dict[str, tuple[str, int] | None]:
        state: dict[str, tuple[str, int] | None] = {}
        for root in self.paths:
            if not root.exists() and not root.is_symlink():
                state[str(root)] = None
                continue
            files = [root] if not root.is_dir() else sorted(p for p in root.rglob("*") if p.is_file())
            for f in files:
                if f.is_file():
                    state[str(f)] = (hashlib.sha256(f.read_bytes()).hexdigest(), f.stat().st_mode)
        return state

    def changed(self) -> list[str]:
        """Paths whose bytes or mode changed, that disappeared, or that appeared where nothing was."""
        after = self._take()
        keys = set(self.before) | set(after)
        return sorted(k for k in keys if self.before.get(k) != after.get(k)
                      and not (self.before.get(k) is None and k not in after))

    def assert_unchanged(self) -> None:
        """Fail when any watched file changed."""
        changed = self.changed()
        assert not changed, f"files changed: {changed}"


def cli_case(args: list[str], status: int, message: str | None = None, *, unchanged=(), allow_new=False
             ) -> CliResult:
    """Run one hostile ``recsys`` command and assert its status, its one-line message and untouched files.

    Args:
        args: the command line after ``recsys``.
        status: the expected exit status (2 usage errors, 1 runtime failures, 0 a correct result).
        message: a regular expression the single error line must match (``status != 0``), or None.
        unchanged: files and directories that must be byte-identical afterwards.
        allow_new: whether new files may appear under ``unchanged`` directories (a correct result writing output).
    """
    snap = Snapshot(*unchanged)
    res = run_cli(args)
    assert res.status == status, f"exit {res.status}, expected {status}; stderr: {res.err[-1500:]}"
    assert "Traceback" not in res.err, res.err[-3000:]
    if status != 0:
        lines = res.err_lines
        assert len(lines) == 1, f"expected one error line, got {len(lines)}: {lines[:6]}"
        if message is not None:
            assert re.search(message, lines[0]), f"{lines[0]!r} does not match {message!r}"
    if allow_new:
        after = snap._take()
        modified = [k for k, v in snap.before.items() if v is not None and after.get(k) != v]
        assert not modified, f"files changed: {modified}"
    else:
        snap.assert_unchanged()
    return res
