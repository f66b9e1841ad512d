"""``recsys fit --help`` from a cache: the fit parser's help rendered once, then served without importing Lightning.

Building the fit parser reads the signatures of the data module, the models and ``lightning.Trainer``, which
imports Lightning (several seconds). The help text depends only on what the parser is built from, so a bare
``recsys fit --help`` / ``-h`` is answered from a file under the user cache directory
(``$RECSYS_CACHE/help``, else ``$XDG_CACHE_HOME/recsys/help``, else ``~/.cache/recsys/help``). The file records a
key that hashes everything the text is made from: the recsys version and the size and mtime of every recsys source
file, the Python version, the installed versions of the packages the parser reads (Lightning, jsonargparse, torch,
docstring-parser, ...), ``JSONARGPARSE_*`` settings, and the terminal width (argparse wraps to it). A missing,
stale or unreadable file is rendered again by the real command, in a fresh interpreter (so the text is exactly what
an uncached ``recsys fit --help`` prints, whatever this process has imported), and rewritten atomically.

``recsys fit --config X --help`` always runs the real parser: the help then shows the config's values.
``RECSYS_NO_HELP_CACHE=1`` turns the cache off.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

__all__ = ["cached_fit_help", "fit_help_key", "help_cache_path"]

log = logging.getLogger(__name__)

#: Bumped when the file layout or the key's contents change.
_FORMAT = 1
_HEADER = "# recsys fit --help cache "
#: Distributions whose code shapes the help text: the Trainer's signature, jsonargparse's formatting, docstrings.
_DISTRIBUTIONS = ("lightning", "pytorch-lightning", "jsonargparse", "docstring-parser", "typeshed-client", "torch",
                  "pyyaml")
_RENDER = "import sys; from recsys.cli import main; sys.exit(main(['fit', '--help']))"


def _cache_root() -> Path:
    root = os.environ.get("RECSYS_CACHE")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return Path(xdg) / "recsys" if xdg else Path.home() / ".cache" / "recsys"


def _width() -> int:
    # What argparse's HelpFormatter reads (COLUMNS, else the terminal, else 80).
    return shutil.get_terminal_size().columns


def _color() -> bool:
    """Whether argparse would colour the help on this stdout (Python 3.14+; never before)."""
    if sys.version_info < (3, 14):
        return False
    try:
        import _colorize

        return bool(_colorize.can_colorize(file=sys.stdout))
    except (ImportError, AttributeError, TypeError):
        return False


def help_cache_path() -> Path:
    """The cache file for this terminal width and colour mode (one file each, so switching between a terminal and a
    pipe does not re-render every time)."""
    return _cache_root() / "help" / f"fit-w{_width()}{'-color' if _color() else ''}.txt"


def _versions() -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {}
    for name in _DISTRIBUTIONS:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _package_dir() -> Path:
    import recsys

    return Path(recsys.__file__).resolve().parent


def fit_help_key() -> str:
    """A hash of everything the fit help is made from (see the module docstring); equal keys give equal texts."""
    import recsys

    root = _package_dir()
    sources = []
    for f in sorted(root.rglob("*.py")):
        st = f.stat()
        sources.append((f.relative_to(root).as_posix(), st.st_mtime_ns, st.st_size))
    spec = {"format": _FORMAT, "recsys": recsys.__version__, "root": str(root), "python": sys.version,
            "versions": _versions(), "sources": sources, "width": _width(), "color": _color(),
            "env": sorted((k, v) for k, v in os.environ.items() if k.startswith("JSONARGPARSE_"))}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def _read(path: Path, key: str) -> str | None:
    """The cached text when ``path`` holds one for ``key``; None when it is missing, stale or unreadable."""
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    header, sep, text = raw.partition("\n")
    if not sep or header != _HEADER + key:
        return None
    return text


def _render() -> str | None:
    """The help the real ``recsys fit --help`` prints, run in a fresh interpreter; None when that fails."""
    env = dict(os.environ, RECSYS_NO_HELP_CACHE="1", COLUMNS=str(_width()), PYTHONIOENCODING="utf-8")
    if _color():
        # The child writes into a pipe, where argparse would not colour; this terminal would.
        env["FORCE_COLOR"] = "1"
    # Run from the folder holding this recsys package, so that the child imports this very package (the key
    # describes it) even if the working directory holds another.
    try:
        done = subprocess.run([sys.executable, "-c", _RENDER], cwd=_package_dir().parent, env=env,
                              stdout=subprocess.PIPE, check=False)
    except OSError as e:
        log.debug("fit help not rendered: %s", e)
        return None
    if done.returncode != 0:
        return None
    try:
        return done.stdout.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _write(path: Path, key: str, text: str) -> None:
    from recsys.io_utils import atomic_path

    try:
        with atomic_path(path) as tmp:
            # Explicit UTF-8: the locale's default encoding may not hold every character of the help.
            tmp.write_text(_HEADER + key + "\n" + text, encoding="utf-8")
    except OSError as e:
        # A read-only home or a full disk costs the next call its speed, not its help.
        log.debug("fit help not cached at %s: %s", path, e)


def cached_fit_help(argv: list[str]) -> bool:
    """Print the fit help from the cache (rendering and caching it first when needed) for a bare ``--help``.

    Args:
        argv: the ``fit`` arguments (after the verb).

    Returns:
        True when the help was printed; False when the caller must run the real parser: any other arguments
        (``--config X --help`` shows the config's values), ``RECSYS_NO_HELP_CACHE=1``, or a render that failed
        (the real parser then reports why).
    """
    if list(argv) not in (["--help"], ["-h"]) or os.environ.get("RECSYS_NO_HELP_CACHE", "") not in ("", "0"):
        return False
    path, key = help_cache_path(), fit_help_key()
    text = _read(path, key)
    if text is None:
        text = _render()
        if text is None:
            return False
        _write(path, key, text)
    sys.stdout.write(text)
    sys.stdout.flush()
    return True
