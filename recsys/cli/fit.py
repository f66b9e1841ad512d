"""``recsys fit``: train a model from a YAML config into a run directory (see :func:`recsys.fitting.fit_run`)."""

from __future__ import annotations


def _with_config_paths(argv: list[str]) -> list[str]:
    """``--config NAME`` resolved to the packaged config's path; the default config when none is given."""
    from recsys.packaged_configs import DEFAULT_CONFIG, resolve_config

    out, i, seen = [], 0, False
    while i < len(argv):
        a = argv[i]
        if a == "--config" and i + 1 < len(argv):
            out += [a, resolve_config(argv[i + 1])]
            i, seen = i + 2, True
            continue
        if a.startswith("--config="):
            out.append("--config=" + resolve_config(a.split("=", 1)[1]))
            seen = True
        else:
            out.append(a)
        i += 1
    return out if seen or "-h" in argv or "--help" in argv else ["--config", resolve_config(DEFAULT_CONFIG), *out]


def _take_flag(argv: list[str], flag: str, with_value: bool = False) -> tuple[list[str], str | bool | None]:
    """``argv`` without ``flag`` (and its value), and the flag's value (True for a bare flag, None when absent)."""
    from recsys.errors import RecsysError

    rest, value, i = [], None, 0
    while i < len(argv):
        a = argv[i]
        if a == flag:
            if with_value:
                if i + 1 >= len(argv):
                    raise RecsysError(f"{flag} needs a value")
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
    from recsys.fitting import fit_run, resume_argv

    argv, refit_all = _take_flag(argv, "--refit-all")
    argv, resume = _take_flag(argv, "--resume", with_value=True)
    if resume:
        if any(a == "--config" or a.startswith("--config=") for a in argv):
            from recsys.errors import RecsysError

            raise RecsysError("--resume continues a run with its own config.yaml: drop --config")
        argv = resume_argv(resume, argv)
    else:
        argv = _with_config_paths(argv)
    if "-h" in argv or "--help" in argv:
        print("recsys fit also takes: --resume RUN (continue an interrupted run from RUN/checkpoints/last.ckpt), "
              "--refit-all (after early stopping, refit on every interaction for the best epoch count)\n")
    fit_run(argv, resume=bool(resume), refit_all=bool(refit_all))
    return 0
