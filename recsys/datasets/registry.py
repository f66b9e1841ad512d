"""Name -> loader registry behind `load_dataset("ml-latest-small", path=...)` and the CLI's --data.name."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from functools import partial

from recsys.datasets.base import RawDataset
from recsys.datasets.benchmark_txt import load_benchmark_txt
from recsys.datasets.generic import load_generic
from recsys.datasets.movielens import MOVIELENS_VARIANTS, load_movielens
from recsys.datasets.synthetic import generate_synthetic
from recsys.errors import DataError, UsageError

__all__ = ["available_datasets", "load_dataset", "register_dataset"]

DatasetLoader = Callable[..., RawDataset]


def _synthetic(path: str | os.PathLike | None = None, **options) -> RawDataset:
    if path is not None:
        raise DataError(f"the synthetic dataset is generated, not read: drop path={str(path)!r} (--data.path); "
                        "its options are e.g. seed=, n_users= (--data.options)")
    return generate_synthetic(**options)


def _needs_path(loader: DatasetLoader, dataset: str) -> DatasetLoader:
    def load(path: str | os.PathLike | None = None, **options) -> RawDataset:
        if path is None:
            raise DataError(f"dataset {dataset!r} needs path=... (--data.path on the command line)")
        return loader(path, **options)
    load.__wrapped__ = loader  # so that _check_options sees the loader's own parameters
    return load


_synthetic.__wrapped__ = generate_synthetic
_LOADERS: dict[str, DatasetLoader] = {"synthetic": _synthetic}
_LOADERS.update({variant: partial(load_movielens, variant) for variant in MOVIELENS_VARIANTS})
_LOADERS["generic"] = _needs_path(load_generic, "generic")
_LOADERS["benchmark-txt"] = _needs_path(load_benchmark_txt, "benchmark-txt")
_ALIASES = {"csv": "generic", "parquet": "generic", "tsv": "generic", "ngcf": "benchmark-txt",
            "lightgcn": "benchmark-txt", "movielens": "ml-latest-small"}


def register_dataset(name: str, loader: DatasetLoader) -> None:
    """Add or replace a loader.

    Args:
        name: the dataset name (lower-case; "_" is read as "-").
        loader: called as loader(path=None, **options) and returning a RawDataset.
    """
    _LOADERS[_normalise(name)] = loader


def _normalise(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def available_datasets() -> list[str]:
    """The registered dataset names (without aliases), in registration order."""
    return list(_LOADERS)


def load_dataset(name: str, path: str | os.PathLike | None = None, **options) -> RawDataset:
    """Load a dataset by name.

    Args:
        name: "synthetic", "ml-latest-small", "ml-100k", "ml-1m", "ml-20m", "ml-25m", "generic" (aliases "csv",
            "parquet", "tsv"), "benchmark-txt" (aliases "ngcf", "lightgcn") or a name added with register_dataset.
        path: where the data are (a file for generic, a directory for MovieLens and benchmark-txt); unused for
            synthetic.
        **options: passed to the loader (e.g. seed=/n_users= for synthetic, user=/item=/rating= for generic,
            cache_dir=/download= for MovieLens).

    Returns:
        The RawDataset.

    Raises:
        DataError: unknown name (the message lists the known names) or a missing required path (a ValueError
            subclass, as raised before).
    """
    key = _normalise(name)
    key = _ALIASES.get(key, key)
    if key not in _LOADERS:
        known = ", ".join([*_LOADERS, *(f"{a} (= {t})" for a, t in _ALIASES.items())])
        raise DataError(f"unknown dataset {name!r} (--data.dataset); known datasets: {known}")
    loader = _LOADERS[key]
    _check_options(loader, key, options)
    return loader(path=path, **options)


def _check_options(loader: DatasetLoader, dataset: str, options: dict) -> None:
    """Refuse an option the loader does not take, listing those it does (a TypeError would name no option)."""
    try:
        params = inspect.signature(loader).parameters
    except (TypeError, ValueError):  # a builtin or C callable: nothing to check against
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    taken = [n for n, p in params.items() if p.kind is not inspect.Parameter.POSITIONAL_ONLY and n != "path"]
    unknown = [k for k in options if k not in taken]
    if unknown:
        raise UsageError(f"dataset {dataset!r} has no option {unknown[0]!r} (--data.options / --option); its options: "
                         f"{', '.join(taken)}")
