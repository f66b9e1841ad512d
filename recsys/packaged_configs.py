"""The configs shipped inside the package (``recsys/configs``): resolve ``--config NAME`` and list them.

A ``--config`` value that names an existing file is used as it is; otherwise it is looked up among the packaged
configs by name (``lightgcn``, ``paper/lightgcn_gowalla``; the ``.yaml`` suffix is optional), so a wheel install
runs ``recsys fit --config mf_bpr`` from any directory.
"""

from __future__ import annotations

from pathlib import Path

from recsys.errors import RecsysError

__all__ = ["DEFAULT_CONFIG", "config_dir", "list_configs", "resolve_config"]

#: the config ``recsys fit`` uses when none is given.
DEFAULT_CONFIG = "mf_bpr"


def config_dir() -> Path:
    """The directory of the packaged configs."""
    return Path(__file__).resolve().parent / "configs"


def _names() -> list[str]:
    root = config_dir()
    return sorted(p.relative_to(root).with_suffix("").as_posix() for p in root.rglob("*.yaml"))


def resolve_config(value: str) -> str:
    """A ``--config`` value as a file path: an existing file, else a packaged config's name.

    Raises:
        RecsysError: neither a file nor a packaged config (the message lists the close names).
    """
    if Path(value).is_file():
        return value
    name = value.removesuffix(".yaml").removesuffix(".yml")
    name = name.removeprefix("configs/")
    path = config_dir() / f"{name}.yaml"
    if path.is_file():
        return str(path)
    import difflib

    close = difflib.get_close_matches(name, _names(), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else "; `recsys configs` lists the packaged ones"
    raise RecsysError(f"--config {value!r} is neither a file nor a packaged config{hint}")


def describe(path: Path) -> str:
    """A config's one-line description: its first header comment line."""
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            text = line.lstrip("#").strip()
            if text:
                return text
        elif line.strip():
            break
    return ""


def list_configs() -> list[tuple[str, str]]:
    """``(name, description)`` of every packaged config, sorted by name."""
    root = config_dir()
    return [(name, describe(root / f"{name}.yaml")) for name in _names()]
