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

from recsys.errors import RecsysError, UsageError

__all__ = ["ConfigError", "add_model_arguments", "build_component", "build_fit_parser", "check_fit_options",
           "instantiate", "instantiate_model", "parse_run_config", "read_config_file"]


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
    # No abbreviations: `--trainer.max_epoch` must not silently mean `--trainer.max_epochs` (nor change meaning
    # when an option is added); a near miss is answered with the close names instead.
    p = parser_class(prog="recsys fit", description="Train a model, restore its best checkpoint, test it.",
                     default_env=False, exit_on_error=exit_on_error, allow_abbrev=False)
    p.add_argument("--config", action=config_action, help="YAML config (class_path/init_args).")
    p.add_argument("--run-dir", "--run_dir", dest="run_dir", type=str | None, default=None,
                   help="Output directory (default: runs/<time>-<config>).")
    p.add_argument("--seed", type=int, default=2026, help="Seed for weights, sampling and order.")
    p.add_argument("--transfer-from", "--transfer_from", dest="transfer_from", type=str | None, default=None,
                   help="A finished run whose learned weights the model starts from on this data (text encoders "
                        "only); with --trainer.max_epochs 0 nothing is trained here (zero-shot transfer).")
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
            hint = _suggestion(message, self)
            if hint:
                line += f"; did you mean {hint}?"
            source = getattr(self, "_recsys_config_file", None)
            files = getattr(self, "_recsys_config_files", [])
            if source is None and files and message.startswith(("Option '", "Group '")):
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
                if isinstance(values, (str, os.PathLike)) and os.path.exists(values):
                    # What jsonargparse would accept silently (duplicate keys, a tag) or report as a Python
                    # error (a binary file), reported here in one line naming the file.
                    try:
                        read_config_file(values)
                    except ConfigError as e:
                        parser.error(str(e).removeprefix(f"{values}: "))
                super().__call__(parser, cfg, values, option_string)
            finally:
                parser._recsys_config_file = None

    return FitParser, ConfigFileAction


def _cli_error_line(message: str) -> str:
    """One line for a jsonargparse command-line error: the failing key, what it expects and the given value."""
    if "Parser key" in message:
        line = _one_line(message)
        given = re.search(r"^\s*Given value: (.*)$", message, flags=re.MULTILINE)
        # A nested option's value is reported as jsonargparse's NestedArg(...) repr: the key already names it; an
        # unknown key names itself, and the whole section it sits in would only hide it.
        if (given and given.group(1).strip() not in line and not given.group(1).startswith("NestedArg(")
                and "is not accepted" not in line):
            line += f" (given: {given.group(1).strip()[:100]})"
        prefix = message.split('Parser key "', 1)[0].strip()
        line = f"{prefix} {line}" if prefix and prefix not in line else line
    else:
        # PyYAML locates a syntax error in '"<unicode string>", line 3, column 7': the file is named by the caller.
        line = " ".join(message.split()).replace(' in "<unicode string>",', " at")
    # "Expected a <class 'int'>" becomes "Expected an int".
    line = re.sub(r"<class '([\w.]+)'>", r"\1", line)
    line = re.sub(r"\bExpected a (?=[aeiouAEIOU])", "Expected an ", line)
    return _literal_line(line)[:500]


def _literal_line(line: str) -> str:
    """``Expected a typing.Literal['a', 'b']. Got value: x`` as ``expected one of a, b (given: x)``."""
    m = re.search(r"Expected a typing\.Literal\[(.*?)\]\. Got value: (.*)$", line)
    if m is None or line.count("typing.Literal[") != 1:  # several alternatives (a union) stay as they are
        return line
    import ast

    try:
        allowed = [str(v) for v in ast.literal_eval(f"[{m.group(1)}]")]
    except (SyntaxError, ValueError):
        return line
    given = m.group(2).strip()
    return f"{line[:m.start()]}expected one of {', '.join(allowed)} (given: {given})"


def _suggestion(message: str, parser) -> str | None:
    """The close names of a mistyped option or value in a jsonargparse error (``--trainer.max_epohcs``), or None.

    Args:
        message: jsonargparse's description of the failure.
        parser: the parser that failed (its option strings are the candidates for an unknown option).
    """
    import difflib

    def close(word: str, names) -> list[str]:
        return difflib.get_close_matches(word, sorted(set(names)), n=3, cutoff=0.6)

    options = [o for o in getattr(parser, "_option_string_actions", {}) if o.startswith("--")]
    m = re.match(r"unrecognized arguments: (.*)", message.strip())
    if m:
        given = [a.split("=", 1)[0] for a in m.group(1).split() if a.startswith("--")]
        hits = [h for a in given for h in close(a, options)]
        return " / ".join(dict.fromkeys(hits)) or None
    m = re.search(r"Group '([\w.]+)' does not accept option '([\w.]+)'", message)
    if m:
        prefix = f"--{m.group(1)}."
        names = [o.removeprefix(prefix) for o in options if o.startswith(prefix)]
        hits = close(m.group(2), names)
        return " / ".join(f"{m.group(1)}.{h}" for h in hits) or None
    m = re.search(r"Option '([\w.]+)' is not accepted", message)
    if m:
        # The innermost class named before the unknown key is the one whose signature it missed.
        owners = re.findall(r"Problem with given class_path '([\w.]+)'", message[:m.start()])
        if owners:
            return " / ".join(close(m.group(1).rsplit(".", 1)[-1], _init_parameters(owners[-1]))) or None
        # A key of the file's top level (``traner.max_epochs``): its first part against the sections.
        head, _, rest = m.group(1).partition(".")
        # With a dotted rest only sections (options that have sub-options) qualify, not scalars such as --seed.
        sections = {o[2:].split(".", 1)[0] for o in options if "." in o or not rest}
        return " / ".join(f"{h}.{rest}" if rest else h for h in close(head, sections)) or None
    m = re.search(r"Expected a typing\.Literal\[(.*?)\]\. Got value: (.*)$", message, flags=re.MULTILINE)
    if m and message.count("typing.Literal[") == 1:
        allowed = re.findall(r"'([^']*)'", m.group(1))
        hits = close(m.group(2).strip(), allowed)
        return " / ".join(repr(h) for h in hits) or None
    return None


def _init_parameters(class_path: str) -> list[str]:
    """The constructor parameters of a class jsonargparse has already imported (nothing is imported here)."""
    import inspect

    module, _, name = class_path.rpartition(".")
    cls = getattr(sys.modules.get(module), name, None)
    if not isinstance(cls, type):
        return []
    names: list[str] = []
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        try:
            params = inspect.signature(init).parameters.values()
        except (TypeError, ValueError):
            break
        names += [p.name for p in params if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break  # only a constructor that forwards **kwargs takes its parent's parameters as well
    return names


class _StrictLoader:
    """A PyYAML safe loader that refuses duplicate mapping keys (PyYAML keeps the last one silently)."""

    _cls = None

    @classmethod
    def get(cls):
        """The loader class, built on first use (so that importing this module does not import PyYAML)."""
        if cls._cls is None:
            import yaml

            class Loader(yaml.SafeLoader):
                pass

            def mapping(loader, node, deep=False):
                seen: dict = {}
                for key_node, _ in node.value:
                    key = loader.construct_object(key_node, deep=True)
                    try:
                        first = seen.setdefault(key, key_node.start_mark.line + 1)
                    except TypeError:  # an unhashable key: the safe constructor reports it
                        continue
                    if first != key_node.start_mark.line + 1:
                        raise yaml.constructor.ConstructorError(
                            None, None, f"duplicate key {key!r} (first at line {first})", key_node.start_mark)
                return loader.construct_mapping(node, deep=deep)

            Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
            cls._cls = Loader
        return cls._cls


def _yaml_problem(e: Exception) -> str:
    """One line for a PyYAML error: what is wrong and where (``line L, column C``)."""
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    mark = getattr(e, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    text = " ".join(f"{problem}{where}".split())
    if mark is not None and mark.buffer and mark.pointer < len(mark.buffer) and mark.buffer[mark.pointer] == "\t":
        text += " (a tab: YAML indents with spaces)"
    return text


def read_config_file(path: str | os.PathLike, text: str | None = None) -> dict:
    """A YAML config file as a mapping, refusing what jsonargparse would misread or misreport.

    Args:
        path: the file (named in every message).
        text: its content when already read.

    Raises:
        ConfigError: ``path`` is a directory or unreadable, not UTF-8 text, empty, not YAML, has a duplicate key
            or a tag, or holds something other than a mapping of options; one line starting with ``path``.
    """
    import yaml

    where = os.fspath(path)
    if text is None:
        if os.path.isdir(where):
            raise ConfigError(f"{where}: is a directory, not a YAML file")
        try:
            raw = open(where, "rb").read()
        except OSError as e:
            raise ConfigError(f"{where}: cannot be read ({e.strerror or e})") from None
        if b"\0" in raw:
            raise ConfigError(f"{where}: is a binary file (it holds NUL bytes), not a YAML config")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError(f"{where}: is not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start})") from None
    try:
        spec = yaml.load(text, Loader=_StrictLoader.get())
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: is not valid YAML: {_yaml_problem(e)}") from None
    if spec is None:
        raise ConfigError(f"{where}: is empty; a config is a YAML mapping of options (model:, data:, trainer:, ...)")
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: holds a {type(spec).__name__}, not a mapping of options (model:, data:, "
                          "trainer:, ...)")
    return spec


def check_fit_options(cfg) -> None:
    """Refuse fit options outside their range that the parser's types let through (one line, naming the option).

    Called on the parsed configuration, before anything is built or any data is read.

    Raises:
        UsageError: ``trainer.max_epochs`` below -1, or 0 without ``transfer_from``, ``trainer.max_steps`` 0 or
            below -1, ``trainer.check_val_every_n_epoch`` below 1, ``early_stopping.patience`` negative, an
            ``early_stopping.monitor`` that validation never logs, or a seed outside numpy's range.
    """
    from recsys.metrics.ranking import METRIC_NAMES

    trainer = cfg.trainer
    epochs = trainer.get("max_epochs")
    if epochs is not None and (epochs < -1 or (epochs == 0 and not cfg.get("transfer_from"))):
        raise UsageError(f"--trainer.max_epochs must be at least 1 (or -1: no limit, with --trainer.max_time, "
                         f"--trainer.max_steps or early stopping to end the fit; 0 only with --transfer-from, a "
                         f"zero-shot transfer), got {epochs}")
    steps = trainer.get("max_steps")
    if steps is not None and (steps == 0 or steps < -1):
        raise UsageError(f"--trainer.max_steps must be at least 1 (or -1: no limit), got {steps}")
    every = trainer.get("check_val_every_n_epoch")
    if every is not None and every < 1:
        raise UsageError(f"--trainer.check_val_every_n_epoch must be at least 1, got {every}")
    if cfg.early_stopping.patience < 0:
        raise UsageError(f"--early_stopping.patience must be >= 0 (validation checks without improvement before "
                         f"stopping), got {cfg.early_stopping.patience}")
    if not 0 <= cfg.seed < 2**32:
        raise UsageError(f"--seed must be in [0, 2**32), got {cfg.seed}")
    monitor = cfg.early_stopping.monitor
    ks = _eval_ks(cfg)
    if ks is None:  # a baseline: no validation passes, nothing is monitored
        return
    m = re.fullmatch(r"valid/(\w+)@(\d+)", monitor or "")
    if m is None or m.group(1) not in METRIC_NAMES or int(m.group(2)) not in ks:
        at = f"@{'/'.join(map(str, ks))}"
        raise UsageError(f"--early_stopping.monitor {monitor!r} is not logged by validation: expected valid/"
                         f"<{'|'.join(METRIC_NAMES)}>{at} (the model's eval_ks)")


def _eval_ks(cfg) -> tuple[int, ...] | None:
    """The validation cut-offs of a ``RecModel`` configuration, or None for models without validation."""
    from recsys.model import RecModel

    model = cfg.model
    # The class_path was validated (and imported) by the parser: looking it up imports nothing new.
    module, _, name = str(model.get("class_path", "")).rpartition(".")
    cls = getattr(sys.modules.get(module), name, None)
    if not (isinstance(cls, type) and issubclass(cls, RecModel)):
        return None
    ks = (model.get("init_args") or {}).get("eval_ks")
    if ks is None:
        import inspect

        ks = inspect.signature(RecModel).parameters["eval_ks"].default
    try:
        ks = tuple(int(k) for k in ks)
    except (TypeError, ValueError):
        return None
    # Cut-offs below 1 are the model's own error (its constructor names them), not the monitor's.
    return ks if ks and min(ks) >= 1 else None


def parse_run_config(text: str, source: str):
    """Validate the ``model`` section of a run's ``config.yaml`` as ``fit`` declares it; returns ``(parser, cfg)``.

    Raises:
        ConfigError: the section is missing or does not validate (one line, naming the offending key).
    """
    from argparse import ArgumentError

    import yaml
    from jsonargparse import ArgumentParser

    try:
        spec = yaml.load(text, Loader=_StrictLoader.get())  # duplicate keys refused, as in `recsys fit`
    except yaml.YAMLError as e:
        raise ConfigError(f"{source} is not YAML: {_yaml_problem(e)}") from None
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
        UsageError: a constructor refused an option value.
    """
    parser, cfg = parse_run_config(text, source)
    return instantiate(parser, cfg).model


def instantiate(parser, cfg):
    """``parser.instantiate(cfg)``, with a constructor's own refusal (a :class:`~recsys.errors.RecsysError` such as
    ``MatrixFactorization dim must be ...``) raised as it is.

    jsonargparse tries each type of a union (``RecModel | Baseline``) and reports a failed constructor as a
    multi-line ``ValueError`` about all of them; the constructor's error is the one a user can act on.

    Raises:
        RecsysError: the constructor's error.
        UsageError: another refusal of the option values (its innermost line).
    """
    try:
        return parser.instantiate(cfg)
    except (ValueError, TypeError) as e:
        if isinstance(e, RecsysError):
            raise
        seen, cause = set(), e.__cause__ or e.__context__
        while cause is not None and id(cause) not in seen:
            if isinstance(cause, RecsysError):
                raise cause from None
            seen.add(id(cause))
            cause = cause.__cause__ or cause.__context__
        if "Does not validate against any of the Union subtypes" not in str(e):
            raise
        raise UsageError(f"the options are refused: {_one_line(str(e))}") from None


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
