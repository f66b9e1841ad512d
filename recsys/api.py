"""The Python API: datasets from DataFrames, Arrow tables or files, ``fit`` to a run, ``load_run`` to read one back.

Everything here goes through the same code as the ``recsys`` command (:func:`recsys.fitting.fit_run` for training,
:class:`recsys.runs.Run` for scoring, evaluation and export), so a notebook and a nightly job get the same runs::

    import recsys

    data = recsys.from_dataframe(ratings, user="userId", item="movieId", timestamp="timestamp")
    run = recsys.fit(data, config="lightgcn", trainer__max_epochs=50)
    run.recommend([1, 2, 3], k=10)           # DataFrame[user, item, rank, score], external IDs
    run.evaluate("test")                      # {"ndcg@20": ...}
    run = recsys.load_run(run.path)
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from recsys.datasets.base import RawDataset
    from recsys.runs import Run

__all__ = ["fit", "from_arrow", "from_dataframe", "from_file", "load_run"]


def from_dataframe(interactions: pd.DataFrame, *, user: str = "user", item: str = "item", rating: str | None = None,
                   timestamp: str | None = None, split: str | None = None, items: pd.DataFrame | None = None,
                   item_key: str | None = None, multi_valued: Mapping[str, str] | None = None,
                   users: pd.DataFrame | None = None, user_key: str | None = None,
                   name: str = "dataframe") -> RawDataset:
    """A dataset from an interaction DataFrame (and optional item and user side tables), by column mapping.

    Args:
        interactions: one row per interaction.
        user, item: the ID columns (ints or strings; their type is kept in every output).
        rating, timestamp: optional columns (timestamps as unix seconds or datetimes).
        split: optional column holding a fixed ``train``/``valid``/``test`` split.
        items, users: optional side tables (text, categorical, multi-valued and numeric attributes).
        item_key, user_key: key columns of the side tables (default: the same names as ``item`` / ``user``).
        multi_valued: item columns holding several values, column -> separator (e.g. ``{"genres": "|"}``).
        name: the dataset's name (recorded in the run).

    Raises:
        DataError: a missing column or a bad value, naming the column and row.
    """
    from recsys.datasets.generic import load_generic

    return load_generic(interactions, user=user, item=item, rating=rating, timestamp=timestamp, split=split,
                        items_path=items, item_key=item_key, multi_valued=multi_valued, users_path=users,
                        user_key=user_key, name=name)


def from_arrow(interactions, **columns) -> RawDataset:
    """A dataset from a ``pyarrow.Table`` of interactions (the same column mapping as :func:`from_dataframe`)."""
    return from_dataframe(interactions.to_pandas(), **columns)


def from_file(path: str | os.PathLike, **columns) -> RawDataset:
    """A dataset from a CSV, TSV or Parquet interaction file (the column mapping of :func:`from_dataframe`; side
    tables may be DataFrames or file paths; ``name`` defaults to the file's stem)."""
    from recsys.datasets.generic import load_generic

    if "items" in columns:
        columns["items_path"] = columns.pop("items")
    if "users" in columns:
        columns["users_path"] = columns.pop("users")
    return load_generic(path, **columns)


def _option(key: str, value: Any) -> list[str]:
    """One ``recsys fit`` option from a keyword: ``trainer__max_epochs=5`` -> ``--trainer.max_epochs 5``."""
    flag = "--" + key.replace("__", ".")
    if isinstance(value, str):
        return [flag, value]
    if isinstance(value, (Path, os.PathLike)):
        return [flag, os.fspath(value)]
    return [flag, json.dumps(value)]


def fit(data: RawDataset | str | None = None, config: str | os.PathLike = "mf_bpr", *,
        run_dir: str | os.PathLike | None = None, seed: int | None = None, refit_all: bool = False,
        overwrite: bool = False, quiet: bool = False, **overrides: Any) -> Run:
    """Train a model and return its finished run (the same run directory ``recsys fit`` writes).

    Args:
        data: a dataset object (:func:`from_dataframe`, :func:`from_arrow`, :func:`from_file`,
            :func:`recsys.datasets.load_dataset`), a registered dataset name, or None for the config's own.
        config: a packaged config's name (``recsys configs`` lists them) or a YAML file.
        run_dir: where the run is written (default ``runs/<time>-<config>``).
        seed: the seed of weights, sampling and order (the config's default when None).
        refit_all: after early stopping, refit on every interaction for the best epoch count.
        overwrite: replace a run already in ``run_dir`` (once the new data are prepared; refused otherwise).
        quiet: print nothing.
        **overrides: any ``recsys fit`` option, with ``__`` for the dots: ``trainer__max_epochs=20``,
            ``model__init_args__encoder__init_args__dim=128``, ``data__split__seed=1``.

    Raises:
        RecsysError: a bad config name, option or dataset (one-line message).
    """
    from recsys.datasets.base import RawDataset
    from recsys.fitting import fit_run
    from recsys.packaged_configs import resolve_config

    argv = ["--config", resolve_config(os.fspath(config))]
    dataset = None
    if isinstance(data, RawDataset):
        dataset = data
    elif isinstance(data, str):
        argv += ["--data.dataset", data]
    elif data is not None:
        raise TypeError(f"data must be a dataset object or a dataset name, not {type(data).__name__}")
    if run_dir is not None:
        argv += ["--run-dir", os.fspath(run_dir)]
    if seed is not None:
        argv += ["--seed", str(seed)]
    for key, value in overrides.items():
        argv += _option(key, value)
    return fit_run(argv, dataset=dataset, refit_all=refit_all, overwrite=overwrite, quiet=quiet)


def load_run(path: str | os.PathLike) -> Run:
    """A finished run directory (from ``recsys fit`` or :func:`fit`).

    Raises:
        RunDirError: the directory is missing or holds no finished run.
    """
    from recsys.runs import Run

    return Run.open(path)
