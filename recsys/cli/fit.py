"""``recsys fit``: train a model from a YAML config into a run directory (see :func:`recsys.fitting.fit_run`)."""

from __future__ import annotations


def _resolve(value: str) -> str:
    """A ``--config`` value as a file path; a directory, or a name that is neither a file nor a packaged config, is
    a usage error (exit status 2)."""
    from pathlib import Path

    from recsys.errors import RecsysError, UsageError
    from recsys.packaged_configs import resolve_config

    if not value.strip():
        raise UsageError("--config is empty: give a YAML file or a packaged config's name (`recsys configs`)")
    if Path(value).is_dir():
        raise UsageError(f"--config {value!r} is a directory, not a YAML file")
    try:
        return resolve_config(value)
    except UsageError:
        raise
    except RecsysError as e:
        raise UsageError(str(e)) from None


def _with_config_paths(argv: list[str]) -> list[str]:
    """``--config NAME`` resolved to the packaged config's path; the default config when none is given."""
    from recsys.packaged_configs import DEFAULT_CONFIG

    out, i, seen = [], 0, False
    while i < len(argv):
        a = argv[i]
        if a == "--config" and i + 1 < len(argv):
            out += [a, _resolve(argv[i + 1])]
            i, seen = i + 2, True
            continue
        if a.startswith("--config="):
            out.append("--config=" + _resolve(a.split("=", 1)[1]))
            seen = True
        else:
            out.append(a)
        i += 1
    return out if seen or "-h" in argv or "--help" in argv else ["--config", _resolve(DEFAULT_CONFIG), *out]


def _take_flag(argv: list[str], flag: str, with_value: bool = False) -> tuple[list[str], str | bool | None]:
    """``argv`` without ``flag`` (and its value), and the flag's value (True for a bare flag, None when absent)."""
    from recsys.errors import UsageError

    rest, value, i = [], None, 0
    while i < len(argv):
        a = argv[i]
        if a == flag:
            if with_value:
                if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
                    raise UsageError(f"{flag} needs a value (a run directory)")
                value, i = argv[i + 1], i + 2
                continue
            value = True
        elif with_value and a.startswith(flag + "="):
            value = a.split("=", 1)[1]
        else:
            rest.append(a)
        i += 1
    return rest, value


def cmd_fit(argv: list[str]) -> int:
    from recsys.cli.help_cache import cached_fit_help

    if cached_fit_help(argv):  # a bare `recsys fit --help`: the cached text, without importing Lightning
        return 0
    from recsys.errors import UsageError
    from recsys.fitting import fit_run, resume_argv

    argv, refit_all = _take_flag(argv, "--refit-all")
    argv, overwrite = _take_flag(argv, "--overwrite")
    argv, resume = _take_flag(argv, "--resume", with_value=True)
    if resume:
        if any(a == "--config" or a.startswith("--config=") for a in argv):
            raise UsageError("--resume continues a run with its own config.yaml: drop --config")
        if any(a in ("--run-dir", "--run_dir") or a.startswith(("--run-dir=", "--run_dir=")) for a in argv):
            raise UsageError("--resume RUN continues the run in RUN: drop --run-dir")
        if overwrite:
            raise UsageError("--overwrite replaces a run and --resume continues one: pass one of them")
        argv = resume_argv(resume, argv)
    else:
        argv = _with_config_paths(argv)
    if "-h" in argv or "--help" in argv:
        print("recsys fit also takes: --resume RUN (continue an interrupted run from RUN/checkpoints/last.ckpt), "
              "--overwrite (replace the run already in --run-dir, once the new data are prepared), "
              "--refit-all (after early stopping, refit on every interaction for the best epoch count)\n")
    fit_run(argv, resume=bool(resume), refit_all=bool(refit_all), overwrite=bool(overwrite))
    return 0
