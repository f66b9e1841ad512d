"""Atomic file output: write to a temporary sibling, then rename, so readers never see half a file."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def _umask() -> int:
    # The only portable way to read the umask is to set it; set it straight back.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path in the target's directory; rename it onto ``path`` only if the block succeeds.

    The file ends with the mode a plain ``open(path, "w")`` would give it (``0o666`` less the umask), not
    ``mkstemp``'s private ``0o600``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
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
