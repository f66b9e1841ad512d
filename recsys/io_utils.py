"""Atomic file output: write to a temporary sibling, then rename, so readers never see half a file.

Every output of the package goes through :func:`atomic_path`: the temporary file is ``.NAME.XXXXXXXX.tmp`` next
to the target and holds an advisory lock while it is written, so the next writer of the same target can tell a
temporary file of a killed job (unlocked: removed) from one being written right now (locked: left alone).
:func:`check_output_path` refuses, before any work, targets that a rename must not replace: devices, FIFOs,
directories, and the files of a run directory.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import tempfile
from pathlib import Path

try:  # advisory locks: POSIX only; elsewhere stale temp files are simply left for the user
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

#: errno values of a write that failed for lack of room (a full disk, a quota, a file-size limit).
NO_ROOM = {errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}


def _umask() -> int:
    # The only portable way to read the umask is to set it; set it straight back.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _kind(mode: int) -> str:
    """What a non-regular file is, in words, for error messages."""
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def run_directory_of(path: str | Path) -> Path | None:
    """The run directory (a directory with ``config.yaml`` and ``model.pt``) that ``path`` is or lies in, or None.

    Args:
        path: any path; symlinks are resolved first.
    """
    p = Path(os.path.realpath(path))
    for d in (p, *p.parents):
        if (d / "config.yaml").is_file() and (d / "model.pt").is_file():
            return d
    return None


def check_output_path(path: str | Path, *, directory: bool = False, option: str = "--out",
                      allow_in_run: str | None = None, inputs: dict[str, str | Path | None] | None = None) -> Path:
    """Refuse an output target before any work is done; the target with symlinks resolved.

    A single-file output must be a regular file or a new name, a sharded output a directory or a new name; neither
    may be inside a run directory (its ``config.yaml``, ``model.pt``, ``data/`` ... would be replaced), nor be one
    of the command's input files, and the nearest existing parent must be a directory.

    Args:
        path: the target as the user gave it.
        directory: the output is a directory (of shards, of exported tables).
        option: the option that named it, for the message.
        allow_in_run: a regular expression of file names that may be written inside a run directory (``evaluate
            --out RUN/eval_custom.json``), or None to refuse every path inside one.
        inputs: the command's input files by option (``{"--users": path}``); the output may not be one of them.

    Raises:
        UsageError: the target is a device, FIFO, socket or the wrong kind of file, lies inside a run directory,
            is an input, or its parent is not a directory.
    """
    from recsys.errors import UsageError

    given = str(path)
    real = Path(os.path.realpath(path))
    shown = given if str(real) == given else f"{given} (-> {real})"
    if real.exists():
        mode = real.stat().st_mode
        if directory and not stat.S_ISDIR(mode):
            what = "a regular file" if stat.S_ISREG(mode) else _kind(mode)
            raise UsageError(f"{option} {shown} is {what}: this output is a directory; give a directory or a new "
                             "name")
        if not directory and not stat.S_ISREG(mode):
            raise UsageError(f"{option} {shown} is {_kind(mode)}: give a regular file or a new name (the output is "
                             "written to a temporary file and renamed over the target)")
    else:
        for parent in real.parents:
            if parent.exists():
                if not parent.is_dir():
                    raise UsageError(f"{option} {shown}: {parent} is not a directory")
                break
    run = run_directory_of(real)
    if run is not None and not (allow_in_run and real.parent == run and re.fullmatch(allow_in_run, real.name)):
        raise UsageError(f"{option} {shown} is inside the run directory {run}: write outputs outside it (the run's "
                         "own files, such as model.pt and config.yaml, must not be replaced)")
    for name, value in (inputs or {}).items():
        if value is not None and Path(os.path.realpath(value)) == real:
            raise UsageError(f"{option} {shown} is the {name} input file: write the output elsewhere")
    return real


def _lock(fd: int) -> bool:
    """Take the advisory lock of an open temporary file without waiting; whether it was free."""
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def _temp_pattern(name: str) -> re.Pattern:
    # mkstemp's random part: 8 characters of [a-z0-9_].
    return re.compile(rf"\.{re.escape(name)}\.[a-z0-9_]{{8}}\.tmp")


def remove_stale_temps(directory: str | Path, name: str | None = None) -> int:
    """Remove temporary files of killed writers next to an output; the number removed.

    Only our own temporary files (``.NAME.XXXXXXXX.tmp``, of the target ``name``, or of any target when None) whose
    advisory lock is free are removed: one that another process is writing right now stays.

    Args:
        directory: the output's directory.
        name: the output's file name, or None for every target in ``directory``.
    """
    directory = Path(directory)
    if fcntl is None or not directory.is_dir():
        return 0
    pattern = _temp_pattern(name) if name is not None else re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")
    removed = 0
    for entry in os.scandir(directory):
        if not pattern.fullmatch(entry.name) or not entry.is_file(follow_symlinks=False):
            continue
        try:
            fd = os.open(entry.path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            continue
        try:
            # Unlink only the file we locked (not a new one created under the same name meanwhile).
            if _lock(fd) and os.stat(entry.path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino:
                os.unlink(entry.path)
                removed += 1
        except OSError:
            pass
        finally:
            os.close(fd)
    return removed


def _new_temp(path: Path) -> tuple[int, Path]:
    """A locked temporary file next to ``path``: its descriptor (holding the lock) and its path."""
    for _ in range(100):
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        _lock(fd)
        # Another writer's sweep may have removed the file between mkstemp and the lock: then take another name.
        if os.fstat(fd).st_nlink > 0:
            return fd, Path(tmp)
        os.close(fd)
    raise OSError(errno.EEXIST, f"cannot create a temporary file next to {path}")


@contextlib.contextmanager
def atomic_path(path: str | Path, *, sweep: bool = True):
    """Yield a temporary path in the target's directory; rename it onto ``path`` only if the block succeeds.

    The file ends with the mode a plain ``open(path, "w")`` would give a new file (``0o666`` less the umask), not
    ``mkstemp``'s private ``0o600``. A symlink is followed: its target is replaced and the link stays. Temporary
    files that killed writers left for the same target are removed first.

    Args:
        path: the target.
        sweep: remove the target's stale temporary files first (a caller writing many files into one directory,
            such as the shards of a scoring job, sweeps the directory once instead).

    Raises:
        UsageError: the target exists and is not a regular file (a device, a FIFO, a directory).
        OSError: the disk is full or a file-size limit applies (the message says so; the target is unchanged).
    """
    from recsys.errors import UsageError

    path = Path(os.path.realpath(path))
    if path.exists() and not path.is_file():
        raise UsageError(f"refusing to replace {path}: it is {_kind(path.stat().st_mode)}, not a regular file")
    path.parent.mkdir(parents=True, exist_ok=True)
    if sweep:
        remove_stale_temps(path.parent, path.name)
    fd, tmp = _new_temp(path)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if _no_room(e):
            raise OSError(e.errno or errno.ENOSPC, f"cannot write {path}: {_no_room(e)}; {path.name} was left as it "
                          "was (free some space or raise the limit, then run again)") from e
        raise
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    finally:
        os.close(fd)


def _no_room(e: OSError) -> str | None:
    """Why a write failed for lack of room, in words, or None for other failures.

    pyarrow reports the errno in its message only (``[errno 27] File too large``), so the text is read as well.
    """
    codes = {e.errno} | {int(m) for m in re.findall(r"errno (\d+)", str(e), flags=re.IGNORECASE)}
    for code in codes & NO_ROOM:
        return os.strerror(code).lower()
    return None


def atomic_write_text(path: str | Path, text: str, *, sweep: bool = True) -> None:
    """Write a text file atomically (``sweep``: see :func:`atomic_path`)."""
    with atomic_path(path, sweep=sweep) as tmp:
        tmp.write_text(text)


def arrow_to_numpy(column):
    """A pyarrow (chunked) numeric column as numpy, read straight from its buffers.

    pyarrow's own ``to_numpy`` imports pandas (1-2 s), which the scoring path must not pay for.
    """
    import numpy as np

    chunks = getattr(column, "chunks", [column])
    parts = []
    for c in chunks:
        if c.null_count or not hasattr(np, str(c.type)):
            parts.append(np.asarray(c.to_pylist()))
            continue
        dtype = np.dtype(str(c.type))
        parts.append(np.frombuffer(c.buffers()[1], dtype=dtype)[c.offset:c.offset + len(c)])
    return np.concatenate(parts) if parts else np.asarray([])


def numpy_to_arrow(values):
    """A 1-D numeric numpy array as a pyarrow Array, zero-copy and without ``pa.array``'s pandas probe (1-2 s)."""
    import numpy as np
    import pyarrow as pa

    values = np.ascontiguousarray(values)
    if values.dtype == object:
        return pa.array(values.tolist(), type=pa.string())
    return pa.Array.from_buffers(pa.from_numpy_dtype(values.dtype), len(values), [None, pa.py_buffer(values)])
