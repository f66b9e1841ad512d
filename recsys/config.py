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

import re

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
    from jsonargparse import ActionConfigFile, ArgumentParser

    from recsys.data.datamodule import RecDataModule

    p = ArgumentParser(prog="recsys fit", description="Train a model, restore its best checkpoint, test it.",
                       default_env=False, exit_on_error=exit_on_error)
    p.add_argument("--config", action=ActionConfigFile, help="YAML config (class_path/init_args).")
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
