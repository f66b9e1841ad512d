"""The ``recsys fit`` configuration: the jsonargparse declarations that both fitting and loading a run validate.

A run's ``config.yaml`` is what the fit parser dumped at fit time. Loading a run parses its ``model`` section again
with the same declaration (:func:`add_model_arguments`: ``RecModel`` / ``Baseline`` for the model,
``TwoSidedEncoder`` for its encoder, ``Scorer``, ``Loss``, ... below it), so a ``class_path`` outside them (say
``subprocess.run``) is refused before anything is called. Only the model is instantiated on load, so only it is
validated: the ``data`` and ``trainer`` sections describe how the run was fitted, and a later Lightning that
renamed a Trainer option must not make finished runs unloadable. Lightning (which ``RecModel`` needs) is imported
only when a parser is built.
"""

from __future__ import annotations

import functools
import os
import re
import sys

from recsys.errors import RecsysError

__all__ = ["ConfigError", "add_model_arguments", "build_component", "build_fit_parser", "instantiate_model",
           "parse_run_config"]


class ConfigError(RecsysError, ValueError):
    """A run's configuration is refused: changed after fit, or naming a class outside the declared types."""


def add_model_arguments(parser) -> None:
    """The ``model`` section: a ``RecModel`` or a ``Baseline`` (the declared base types of every fitted model)."""
    from recsys.baselines.base import Baseline
    from recsys.model import RecModel

    parser.add_subclass_arguments((RecModel, Baseline), "model", required=True)


def build_fit_parser(exit_on_error: bool = True):
    """The ``fit`` parser: the constructor signatures of the data module, the model and the Trainer.

    Args:
        exit_on_error: print usage and exit on a bad argument (the command line); False raises
            ``argparse.ArgumentError`` instead (loading a run).
    """
    import lightning as L

    from recsys.data.datamodule import RecDataModule

    parser_class, config_action = _cli_classes()
    p = parser_class(prog="recsys fit", description="Train a model, restore its best checkpoint, test it.",
                     default_env=False, exit_on_error=exit_on_error)
    p.add_argument("--config", action=config_action, help="YAML config (class_path/init_args).")
    p.add_argument("--run-dir", "--run_dir", dest="run_dir", type=str | None, default=None,
                   help="Output directory (default: runs/<time>-<config>).")
    p.add_argument("--seed", type=int, default=2026, help="Seed for weights, sampling and order.")
    p.add_argument("--early_stopping.patience", type=int, default=5,
                   help="Validation checks without improvement of valid/ndcg@20 before stopping.")
    p.add_argument("--early_stopping.monitor", type=str, default="valid/ndcg@20")
    p.add_class_arguments(RecDataModule, "data")
    add_model_arguments(p)
    p.add_class_arguments(L.Trainer, "trainer", instantiate=False, default={"max_epochs": 100})
    return p


@functools.cache
def _cli_classes():
    """The fit parser's classes: command-line errors in one line, config-file errors naming the file.

    Built on first use, so that importing this module does not import jsonargparse.
    """
    from jsonargparse import ActionConfigFile, ArgumentParser

    class FitParser(ArgumentParser):
        """jsonargparse's parser, whose command-line errors are one line (``prog: error: ...``, exit status 2).

        jsonargparse prints the whole usage (a hundred lines for fit) and a nested, multi-line explanation;
        ``RECSYS_TRACEBACK=1`` (or ``JSONARGPARSE_DEBUG``) keeps that full report.
        """

        def parse_args(self, *args, **kwargs):
            """jsonargparse's ``parse_args``, noting which ``--config`` files it reads (for :meth:`error`)."""
            self._recsys_config_files: list[str] = []
            return super().parse_args(*args, **kwargs)

        def error(self, message: str, ex: Exception | None = None):
            """Print ``message`` as one line naming the option or file, and exit with status 2.

            Args:
                message: jsonargparse's (multi-line) description of the failure.
                ex: the exception behind it, if any.
            """
            if not self.exit_on_error or os.environ.get("RECSYS_TRACEBACK", "") not in ("", "0") \
                    or os.environ.get("JSONARGPARSE_DEBUG"):
                super().error(message, ex)
            self._logger.error(message)
            line = _cli_error_line(message)
            source = getattr(self, "_recsys_config_file", None)
            files = getattr(self, "_recsys_config_files", [])
            if source is None and files and message.startswith("Option '"):
                # An unknown key is found only when the merged config is validated, after every file was read;
                # on the command line the same mistake is an "unrecognized argument", so it came from a file.
                source = " / ".join(files)
            if source is not None:
                line = f"--config {source}: {line}"
            sys.stderr.write(f"{self.prog}: error: {line} (`{self.prog} --help` lists the options)\n")
            self.exit(2)

    class ConfigFileAction(ActionConfigFile):
        """``--config``, whose errors (YAML syntax, bad values) name the file they come from.

        jsonargparse reports a bad file from deep inside its parse, through ``parser.error``, with the file's
        content but not its name: the action records which file it is reading for :class:`FitParser` to name.
        """

        def __call__(self, parser, cfg, values, option_string=None):
            """Read the config file ``values`` into ``cfg``, as jsonargparse does, with the file on record."""
            parser._recsys_config_file = values
            if isinstance(getattr(parser, "_recsys_config_files", None), list):
                parser._recsys_config_files.append(str(values))
            try:
                super().__call__(parser, cfg, values, option_string)
            finally:
                parser._recsys_config_file = None

    return FitParser, ConfigFileAction


def _cli_error_line(message: str) -> str:
    """One line for a jsonargparse command-line error: the failing key, what it expects and the given value."""
    if "Parser key" in message:
        line = _one_line(message)
        given = re.search(r"^\s*Given value: (.*)$", message, flags=re.MULTILINE)
        # A nested option's value is reported as jsonargparse's NestedArg(...) repr: the key already names it.
        if given and given.group(1).strip() not in line and not given.group(1).startswith("NestedArg("):
            line += f" (given: {given.group(1).strip()[:100]})"
        prefix = message.split('Parser key "', 1)[0].strip()
        line = f"{prefix} {line}" if prefix and prefix not in line else line
    else:
        # PyYAML locates a syntax error in '"<unicode string>", line 3, column 7': the file is named by the caller.
        line = " ".join(message.split()).replace(' in "<unicode string>",', " at")
    # "Expected a <class 'int'>" becomes "Expected an int".
    line = re.sub(r"<class '([\w.]+)'>", r"\1", line)
    return re.sub(r"\bExpected a (?=[aeiouAEIOU])", "Expected an ", line)[:500]


def parse_run_config(text: str, source: str):
    """Validate the ``model`` section of a run's ``config.yaml`` as ``fit`` declares it; returns ``(parser, cfg)``.

    Raises:
        ConfigError: the section is missing or does not validate (one line, naming the offending key).
    """
    from argparse import ArgumentError

    import yaml
    from jsonargparse import ArgumentParser

    try:
        spec = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{source} is not YAML: {' '.join(str(e).split())}") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("model"), dict):
        raise ConfigError(f"{source} has no model section (a class_path and its init_args)")
    parser = ArgumentParser(default_env=False, exit_on_error=False)
    add_model_arguments(parser)
    try:
        return parser, parser.parse_object({"model": spec["model"]})
    except ArgumentError as e:
        raise ConfigError(f"{source} is refused: {_one_line(str(e))}") from None


def instantiate_model(text: str, source: str):
    """The (unfitted, unbound) recommender a validated run configuration describes.

    Raises:
        ConfigError: see :func:`parse_run_config`.
    """
    parser, cfg = parse_run_config(text, source)
    return parser.instantiate(cfg).model


def build_component(spec: dict, base: type, source: str = "spec"):
    """Build one ``class_path`` / ``init_args`` spec, validated against a declared base type (for scripts).

    Raises:
        ConfigError: the spec names a class outside ``base`` or does not fit its signature.
    """
    from argparse import ArgumentError

    from jsonargparse import ArgumentParser

    p = ArgumentParser(default_env=False, exit_on_error=False)
    p.add_subclass_arguments(base, "component", required=True)
    try:
        cfg = p.parse_object({"component": spec})
    except ArgumentError as e:
        raise ConfigError(f"{source} is refused: {_one_line(str(e))}") from None
    return p.instantiate(cfg).component


#: jsonargparse's explanatory lines around the actual failure.
_NOISE = ("Does not validate against any of the Union subtypes", "Subtypes:", "Errors:", "Given value",
          "Expected a <class 'NoneType'>", "Problem with given class_path")


def _one_line(message: str) -> str:
    """The innermost failure of a nested jsonargparse error, with the dotted key that leads to it."""
    lines = [(len(ln) - len(ln.lstrip()), ln.strip().removeprefix("- ").strip()) for ln in message.splitlines()
             if ln.strip()]
    content = [(i, t) for i, t in lines if t and not t.startswith(_NOISE) and not t.startswith("Parser key")]
    if not content:
        return " ".join(t for _, t in lines)[:500]
    depth = max(i for i, _ in content)
    picked = list(dict.fromkeys(t for i, t in content if i == depth))
    keys: list[tuple[int, str]] = []
    for i, t in lines:
        if t == picked[0] and i == depth:
            break
        # An indentation stack: a line closes every key opened at its own depth or deeper.
        keys = [(j, k) for j, k in keys if j < i]
        m = re.match(r'Parser key "(.*)"', t)
        if m:
            keys.append((i, m.group(1)))
    where = ".".join(k for _, k in keys)
    text = "; ".join(picked)
    return (f"{where}: {text}" if where else text)[:500]
