"""recsys: a composable recommender-systems framework (encoders, scorers, losses, one LightningModule).

The Python API (:mod:`recsys.api`), imported on first use so that ``import recsys`` stays instant::

    run = recsys.fit(recsys.from_dataframe(df, user="userId", item="movieId"), config="lightgcn")
    run.recommend([1, 2], k=10)
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["Run", "fit", "from_arrow", "from_dataframe", "from_file", "list_configs", "load_dataset", "load_run"]

_API = {"fit": "recsys.api", "from_arrow": "recsys.api", "from_dataframe": "recsys.api", "from_file": "recsys.api",
        "load_run": "recsys.api", "Run": "recsys.runs", "load_dataset": "recsys.datasets",
        "list_configs": "recsys.packaged_configs"}


def __getattr__(name: str):
    if name in _API:
        import importlib

        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'recsys' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
