"""``recsys data``: load a dataset and print what it holds."""

from __future__ import annotations

import argparse
import inspect
import sys

from recsys.errors import UsageError


class _Parser(argparse.ArgumentParser):
    """argparse with its errors as one line (the usage is in ``--help``), like every other recsys message."""

    def error(self, message: str):
        """Print ``message`` as one line and exit with status 2."""
        sys.stderr.write(f"{self.prog}: error: {message} (`{self.prog} --help` lists the options)\n")
        self.exit(2)


def _option_value(name: str, text: str, default):
    """A ``--option`` value: YAML for collections, booleans and null; a number only where the option takes one.

    Column names and separators stay text (``user=1`` names the column "1", ``sep=;`` is ";"), so YAML's guesses
    apply only where the loader's default says what the option is.
    """
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        if text.lstrip().startswith(("{", "[")):
            raise UsageError(f"--option {name}: not a YAML mapping or list: {' '.join(str(exc).split())}") from None
        return text
    if isinstance(value, (dict, list)) or value is None or isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and isinstance(default, (int, float)) and not isinstance(default, bool):
        return value
    return text


def _loader_defaults(dataset: str) -> dict:
    """The dataset loader's parameters and defaults (empty when it takes ``**options``)."""
    from recsys.datasets.registry import _ALIASES, _LOADERS, _normalise

    key = _ALIASES.get(_normalise(dataset), _normalise(dataset))
    loader = _LOADERS.get(key)
    if loader is None:
        return {}
    try:
        params = inspect.signature(loader).parameters
    except (TypeError, ValueError):
        return {}
    return {n: p.default for n, p in params.items()}


def parse_options(pairs: list[str], dataset: str) -> dict:
    """``KEY=VALUE`` strings into loader options (see :func:`_option_value`).

    Raises:
        UsageError: a pair without ``=``, an empty key or a key given twice.
    """
    defaults = _loader_defaults(dataset)
    options: dict = {}
    for pair in pairs:
        key, eq, text = pair.partition("=")
        key = key.strip()
        if not eq or not key:
            raise UsageError(f"--option expects KEY=VALUE (e.g. encoding=latin-1), got {pair!r}")
        if key in options:
            raise UsageError(f"--option {key} is given twice")
        options[key] = _option_value(key, text, defaults.get(key))
    return options


def cmd_data(argv: list[str]) -> int:
    """Load a dataset with the given loader options, prepare it, and print its sizes and what the checks counted."""
    p = _Parser(prog="recsys data", description="Load a dataset and print what it contains.")
    p.add_argument("--dataset", default="synthetic")
    p.add_argument("--path", default=None)
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="A loader option, repeated: e.g. --option user=uid --option encoding=latin-1 --option "
                        "'dtype={item: str}' --option items_path=items.csv (the keys of --data.options in fit).")
    p.add_argument("--rating-threshold", type=float, default=None,
                   help="Keep ratings >= this (--data.preprocess.rating_threshold); without it, ratings <= 0 count "
                        "as positives and are reported.")
    p.add_argument("--split-method", default="auto", help="The split to show (--data.split.method).")
    p.add_argument("--split-ratios", default=None, metavar="TRAIN,VALID,TEST",
                   help="Train/valid/test shares (--data.split.ratios), e.g. 1,0,0 to hold nothing out.")
    a = p.parse_args(argv)
    options = parse_options(a.option, a.dataset)
    ratios = _ratios(a.split_ratios)
    from recsys.data.prepared import Preprocess, SplitSpec, prepare
    from recsys.datasets import load_dataset

    # Options first: a bad one is refused before any file is read.
    preprocessing = Preprocess(rating_threshold=a.rating_threshold)
    split = SplitSpec(method=a.split_method) if ratios is None else SplitSpec(method=a.split_method, ratios=ratios)
    raw = load_dataset(a.dataset, a.path, **options)
    data = prepare(raw, preprocessing, split)
    print(data.summary())
    print(f"ID types: user {_id_type(data.user_vocab)}, item {_id_type(data.item_vocab)}")
    counted = {k: v for k, v in raw.meta.items() if isinstance(v, int) and not isinstance(v, bool) and v}
    if raw.items is not None:
        print(f"item side table: {len(raw.items)} rows, columns {list(raw.items.columns)}")
    if raw.users is not None:
        print(f"user side table: {len(raw.users)} rows, columns {list(raw.users.columns)}")
    if counted:
        print("counted: " + ", ".join(f"{k} {v}" for k, v in sorted(counted.items())))
    return 0


def _ratios(text: str | None) -> tuple[float, float, float] | None:
    """``--split-ratios`` as three floats ("0.8,0.1,0.1" or "[0.8,0.1,0.1]"); SplitSpec checks their values."""
    if text is None:
        return None
    parts = text.strip().strip("[]").split(",")
    try:
        values = tuple(float(x) for x in parts)
    except ValueError:
        values = ()
    if len(values) != 3:
        raise UsageError(f"--split-ratios expects three numbers TRAIN,VALID,TEST (e.g. 0.8,0.1,0.1), got {text!r}")
    return values


def _id_type(vocab) -> str:
    return "str" if vocab.ids.dtype == object else str(vocab.ids.dtype)
