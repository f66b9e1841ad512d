"""Run directories: :class:`Run` is the one reader and writer of what ``recsys fit`` leaves behind.

Layout::

    RUN/config.yaml          the fully resolved configuration (what the fit parser dumped)
    RUN/model.pt             a ModelPayload as plain dicts and tensors: loads with torch.load(weights_only=True)
    RUN/data/                vocabularies, the split, side tables (Parquet; recsys.data.prepared.PreparedData)
    RUN/checkpoints/         Lightning's best checkpoint (trained models)
    RUN/logs/                CSV training logs (or the configured logger's)
    RUN/metrics.json         test metrics, flat {"ndcg@20": ...}; valid_metrics.json, timing.json, eval_*.json

Loading is safe: ``model.pt`` records the sha256 of ``config.yaml`` at fit time and every read of the payload
refuses a ``config.yaml`` changed since; building the model (:meth:`Run.recommender`) also re-validates its ``model``
section with the fit parser's declaration (:mod:`recsys.config`), so it only ever instantiates the declared types.
Scoring from stored tables needs neither jsonargparse nor Lightning.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from recsys.errors import CheckpointError, DataError, RunDirError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from recsys.data.prepared import PreparedData
    from recsys.data.vocab import Vocabulary
    from recsys.recommender import Recommender

__all__ = ["PAYLOAD_VERSION", "ModelPayload", "Run"]

#: the ``model.pt`` format this code writes; 1 is the unversioned format of earlier runs (still read).
PAYLOAD_VERSION = 2


@dataclass
class ModelPayload:
    """What ``model.pt`` holds: the fitted weights and what serving needs without model code.

    Args:
        state_dict: the model's ``state_dict`` (CPU tensors).
        scorer: the scorer's description (``Scorer.describe()``): metric, ``normalize``, temperature, class_path.
        queries: GEMM-ready (scorer-prepared) user table, when the model is an embedding model.
        items: GEMM-ready item table, with ``queries``.
        concepts: one name per table dimension, for explicit-concept models (SESA).
        config_sha256: sha256 of the run's ``config.yaml`` when the model was saved (None for version-1 runs).
        extras: further named tables (item indexes) stored with the model.
        version: the format version (:data:`PAYLOAD_VERSION` when written by this code).

    Shapes:
        queries: [n_users, D]; items: [n_items, D]
    """

    state_dict: dict[str, Tensor]
    scorer: dict[str, Any] = field(default_factory=lambda: {"metric": "inner_product"})
    queries: Tensor | None = None
    items: Tensor | None = None
    concepts: list[str] | None = None
    config_sha256: str | None = None
    extras: dict[str, Tensor] = field(default_factory=dict)
    version: int = PAYLOAD_VERSION

    def __post_init__(self) -> None:
        if (self.queries is None) != (self.items is None):
            raise ValueError("a payload stores both serving tables or neither")

    @property
    def tables(self) -> tuple[Tensor, Tensor] | None:
        """``(queries, items)``, or None when the model is not an embedding model."""
        return None if self.queries is None else (self.queries, self.items)

    def to_dict(self) -> dict:
        """Plain dicts, lists, strings and tensors, as ``torch.save`` stores them (loadable with weights_only)."""
        d: dict[str, Any] = {"format_version": PAYLOAD_VERSION, "state_dict": dict(self.state_dict),
                             "scorer": dict(self.scorer), "config_sha256": self.config_sha256,
                             "extras": dict(self.extras)}
        if self.queries is not None:
            d["tables"] = {"queries": self.queries, "items": self.items}
        if self.concepts:
            d["concepts"] = list(self.concepts)
        return d

    @classmethod
    def from_dict(cls, d, source: str = "model.pt") -> ModelPayload:
        """The payload :meth:`to_dict` wrote (or a version-1 checkpoint).

        Raises:
            CheckpointError: not a recsys payload, or one of a newer format than this code reads.
        """
        if not isinstance(d, dict) or not isinstance(d.get("state_dict"), dict):
            raise CheckpointError(f"{source} is not a recsys model payload (no state_dict)")
        version = d.get("format_version", 1)
        if not isinstance(version, int) or version < 1:
            raise CheckpointError(f"{source} has an invalid payload format version {version!r}")
        if version > PAYLOAD_VERSION:
            raise CheckpointError(f"{source} has payload format version {version}, newer than this recsys reads "
                                  f"(up to {PAYLOAD_VERSION}): upgrade recsys to load it")
        tables = d.get("tables") or {}
        scorer, concepts = d.get("scorer"), d.get("concepts")
        if version == 1:  # JSON strings, and no config hash
            scorer = json.loads(scorer) if scorer else None
            concepts = json.loads(concepts) if concepts else None
        return cls(state_dict=d["state_dict"], scorer=scorer or {"metric": "inner_product"},
                   queries=tables.get("queries"), items=tables.get("items"),
                   concepts=list(concepts) if concepts else None, config_sha256=d.get("config_sha256"),
                   extras=dict(d.get("extras") or {}), version=version)


class Run:
    """A run directory: the config, the model payload, the prepared data, metrics and logs of one ``recsys fit``.

    ``Run(path)`` does no I/O; :meth:`create` starts a run, :meth:`open` checks a finished one. The payload, the
    prepared data and the vocabularies are each read once per ``Run`` object and cached.

    Args:
        path: the run directory.
    """

    CONFIG = "config.yaml"
    MODEL = "model.pt"
    DATA = "data"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._payload: ModelPayload | None = None
        self._data: PreparedData | None = None
        self._vocab: dict[str, Vocabulary] = {}
        self._written_sha256: str | None = None
        self._model_sha256: str | None = None
        self._checked = False  # checked_payload() has passed

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    # ------------------------------------------------------------------------------------------------ lifecycle
    @classmethod
    def create(cls, path: str | Path, config_text: str) -> Run:
        """Start a run: make the directory and write its resolved ``config.yaml`` (atomically)."""
        from recsys.io_utils import atomic_write_text

        run = cls(path)
        run.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run.path / cls.CONFIG, config_text)
        # The hash of what was written, not of the file when the model is saved hours later.
        run._written_sha256 = hashlib.sha256(config_text.encode()).hexdigest()
        return run

    @classmethod
    def open(cls, path: str | Path) -> Run:
        """A finished run (its directory holds ``config.yaml`` and ``model.pt``).

        Raises:
            RunDirError: the directory or one of the files is missing.
        """
        run = cls(path)
        if not run.path.is_dir():
            what = "is not a directory" if run.path.exists() else "does not exist"
            raise RunDirError(f"run directory {str(run.path)!r} {what} (pass --run-dir of a finished "
                              "`recsys fit`)")
        run._require(cls.CONFIG, cls.MODEL)
        return run

    def _require(self, *files: str) -> None:
        for f in files:
            p = self.path / f
            if not p.exists():
                raise RunDirError(f"run directory {str(self.path)!r} has no {f!r}; was `recsys fit` run to "
                                  "completion there?")
            if not p.is_file():
                raise RunDirError(f"{str(p)!r} of the run is not a regular file; was the run directory edited?")

    @property
    def status(self) -> str:
        """``configured`` (config written), ``fitted`` (model saved) or ``finished`` (fit's last file, timing.json)."""
        if (self.path / "timing.json").exists():
            return "finished"
        return "fitted" if (self.path / self.MODEL).exists() else "configured"

    # ------------------------------------------------------------------------------------------------ config
    def config_text(self) -> str:
        """The resolved configuration as written at fit time."""
        self._require(self.CONFIG)
        return (self.path / self.CONFIG).read_text()

    def config_sha256(self) -> str:
        """sha256 of ``config.yaml``'s bytes."""
        self._require(self.CONFIG)
        return hashlib.sha256((self.path / self.CONFIG).read_bytes()).hexdigest()

    def config_dict(self) -> dict:
        """``config.yaml`` as plain YAML data (for reports; build objects with :meth:`recommender`)."""
        import yaml

        return yaml.safe_load(self.config_text())

    def _check_config(self, payload: ModelPayload) -> None:
        if payload.config_sha256 is None:  # version-1 runs recorded no hash
            return
        got = self.config_sha256()
        if got != payload.config_sha256:
            from recsys.config import ConfigError

            raise ConfigError(f"config.yaml of run {str(self.path)!r} was changed after fit (sha256 {got[:12]}…, "
                              f"model.pt records {payload.config_sha256[:12]}…): restore it or fit again")

    # ------------------------------------------------------------------------------------------------ model
    @property
    def payload(self) -> ModelPayload:
        """The model payload, read once (and checked against ``config.yaml``).

        Raises:
            CheckpointError: ``model.pt`` is damaged, not a recsys payload, or of a newer format.
            ConfigError: ``config.yaml`` was changed after fit.
        """
        if self._payload is None:
            self._require(self.MODEL)
            path = self.path / self.MODEL
            raw = _safe_load(path)
            payload = ModelPayload.from_dict(raw, str(path))
            self._check_config(payload)
            self._payload = payload
        return self._payload

    def checked_payload(self) -> ModelPayload:
        """The payload, its serving tables and scorer description checked against the run's vocabularies.

        ``model.pt`` is data from disk: tables of another run (another dimension, another number of users) would be
        scored silently or fail mid-job, so they are refused before anything is written.

        Raises:
            CheckpointError: the tables do not fit the vocabularies or each other, hold NaN or infinite values, or
                the scorer description or concept names are not what a recsys model writes.
        """
        payload = self.payload
        if self._checked:
            return payload
        where = str(self.path / self.MODEL)
        _check_scorer(payload.scorer, where)
        if payload.tables is not None:
            q, i = payload.tables
            for name, t, side in (("queries", q, "user"), ("items", i, "item")):
                if not isinstance(t, Tensor) or t.dim() != 2 or not t.is_floating_point():
                    shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
                    raise CheckpointError(f"{where}: the stored {name} table must be a 2-D float tensor, got "
                                          f"{shape}")
                n = len(self.vocab(side))
                if t.shape[0] != n:
                    raise CheckpointError(f"{where}: the stored {name} table has {t.shape[0]} rows but the run has "
                                          f"{n} {side}s (data/{side}_vocab.parquet): the model is not this run's")
                if not bool(torch.isfinite(t).all()):
                    raise CheckpointError(f"{where}: the stored {name} table holds NaN or infinite values")
            if q.shape[1] != i.shape[1]:
                raise CheckpointError(f"{where}: the stored queries have dimension {q.shape[1]} but the items "
                                      f"{i.shape[1]}: the tables are not one model's")
            if payload.concepts is not None and (len(payload.concepts) != q.shape[1]
                                                 or not all(isinstance(c, str) for c in payload.concepts)):
                raise CheckpointError(f"{where}: {len(payload.concepts)} concept names for tables of dimension "
                                      f"{q.shape[1]}")
        for name, t in payload.extras.items():
            if not isinstance(t, Tensor):
                raise CheckpointError(f"{where}: extra table {name!r} is a {type(t).__name__}, not a tensor")
        self._checked = True
        return payload

    def model_sha256(self) -> str:
        """sha256 of ``model.pt``'s bytes (read once per ``Run``): what a scoring fingerprint records."""
        if self._model_sha256 is None:
            self._require(self.MODEL)
            self._model_sha256 = file_sha256(self.path / self.MODEL)
        return self._model_sha256

    def identity(self, data_files: tuple[str, ...] = ("user_vocab.parquet", "item_vocab.parquet",
                                                       "split.parquet")) -> dict[str, str]:
        """What determines this run's predictions: sha256 of ``config.yaml``, ``model.pt`` and the data files.

        A copy of the run elsewhere has the same identity; a refit, another model or edited data has another.

        Args:
            data_files: the files under ``data/`` to hash (those the caller reads).
        """
        ident = {"config_sha256": self.config_sha256(), "model_sha256": self.model_sha256()}
        for f in data_files:
            self._require(f"{self.DATA}/{f}")
            ident[f"data/{f}"] = file_sha256(self.path / self.DATA / f)
        return ident

    def save_payload(self, payload: ModelPayload) -> None:
        """Write ``model.pt`` atomically; the hash of the current ``config.yaml`` is recorded when absent."""
        from recsys.io_utils import atomic_path

        if payload.config_sha256 is None:
            payload.config_sha256 = self._written_sha256 or self.config_sha256()
        with atomic_path(self.path / self.MODEL) as tmp:
            torch.save(payload.to_dict(), tmp)
        self._payload, self._model_sha256, self._checked = payload, None, False

    def save_model(self, model: Recommender, data: PreparedData, extras: dict[str, Tensor] | None = None
                   ) -> ModelPayload:
        """Save a fitted recommender: its weights, plus GEMM-ready tables so that scoring needs no model code.

        Args:
            model: the fitted recommender.
            data: the data it is bound to (the tables' queries read histories ``up_to="all"``).
            extras: further named tables to store (item-index tables; see :attr:`ModelPayload.extras`).
        """
        from recsys.capabilities import ExplicitConcepts

        tables = model.serving_tables(data, up_to="all")
        explicit = model.capability(ExplicitConcepts)
        payload = ModelPayload(
            state_dict={k: v.detach().cpu() for k, v in model.state_dict().items()},
            scorer=model.scorer_description(),
            queries=None if tables is None else tables[0].detach().cpu().contiguous(),
            items=None if tables is None else tables[1].detach().cpu().contiguous(),
            # Explicit-concept models (SESA): dimension names, so `recsys score --explain` needs no model code.
            concepts=list(explicit.concept_names()) if explicit is not None else None,
            # Index tables (low-rank factors, quantization codes) declared by the model, plus any given here.
            extras={k: v.detach().cpu().contiguous()
                    for k, v in {**model.serving_extras(data, up_to="all"), **(extras or {})}.items()})
        self.save_payload(payload)
        return payload

    def recommender(self, data: PreparedData | None = None) -> Recommender:
        """The fitted model, rebuilt from the validated config, bound to ``data`` (the run's own when None).

        Raises:
            ConfigError: ``config.yaml`` changed after fit or names a class outside the declared types.
            CheckpointError: the weights do not fit the configured model.
        """
        from recsys.config import instantiate_model

        payload = self.checked_payload()  # checks config.yaml against the hash before it is parsed
        model = instantiate_model(self.config_text(), f"config.yaml of run {str(self.path)!r}")
        model.bind(self.data() if data is None else data)
        try:
            model.load_state_dict(payload.state_dict, strict=True)
        except RuntimeError as e:
            raise CheckpointError(f"checkpoint {str(self.path / self.MODEL)!r} does not match the configured "
                                  f"model: {_one_line(e)}") from e
        model.eval()
        return model

    def item_table_for(self, item_vocab: Vocabulary) -> Tensor:
        """This run's stored item table, to serve (or train against) as the gallery of a catalogue.

        Raises:
            DataError: the catalogues differ (another item vocabulary) or the run stores no item table.

        Shapes:
            -> [n_items, D]
        """
        if not _same_ids(self.vocab("item"), item_vocab):
            raise DataError("the gallery run's item vocabulary differs from this run's", file=str(self.path))
        payload = self.checked_payload()
        if payload.items is None:
            raise DataError("the gallery run has no stored item table", file=str(self.path / self.MODEL))
        return payload.items

    def lightning_state(self, checkpoint: str | Path) -> dict[str, Tensor]:
        """The ``state_dict`` of a Lightning checkpoint this run wrote (``checkpoints/best.ckpt``)."""
        raw = _safe_load(checkpoint)
        if not isinstance(raw, dict) or not isinstance(raw.get("state_dict"), dict):
            raise CheckpointError(f"checkpoint {str(checkpoint)!r} is not a Lightning checkpoint (no state_dict)")
        return raw["state_dict"]

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / "checkpoints"

    # ------------------------------------------------------------------------------------------------ data
    def save_data(self, data: PreparedData) -> None:
        """Write the vocabularies, the split and the side tables under ``data/``."""
        data.save(self.path / self.DATA)
        self._data = data

    def data(self) -> PreparedData:
        """The prepared data the model was fitted on (read once)."""
        if self._data is None:
            import pyarrow.parquet as pq

            from recsys.data.prepared import PreparedData

            files = ("user_vocab.parquet", "item_vocab.parquet", "split.parquet")
            self._require(*(f"{self.DATA}/{f}" for f in files))
            d = self.path / self.DATA
            for f in (*files, "items.parquet", "users.parquet"):
                if f in files or (d / f).exists():
                    with _unreadable(d / f):  # the footer only: names the damaged file before the full read
                        pq.ParquetFile(d / f)
            with _unreadable(d):
                data = PreparedData.load(d)
            _check_split_rows(self.path / self.DATA / "split.parquet", data.users, data.items,
                              len(data.user_vocab), len(data.item_vocab))
            self._data = data
        return self._data

    def vocab(self, side: str) -> Vocabulary:
        """The ``user`` or ``item`` vocabulary, without reading the rest of the data (no pandas)."""
        if self._data is not None:
            return self._data.user_vocab if side == "user" else self._data.item_vocab
        if side not in self._vocab:
            from recsys.data.vocab import Vocabulary

            if side not in ("user", "item"):
                raise ValueError(f"side must be 'user' or 'item', not {side!r}")
            f = f"{self.DATA}/{side}_vocab.parquet"
            self._require(f)
            with _unreadable(self.path / f):
                self._vocab[side] = Vocabulary.load(self.path / f, side)
        return self._vocab[side]

    def train_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """User and item rows of the training interactions, without pandas (the scoring path's exclusions).

        Shapes:
            -> users [nnz], items [nnz]
        """
        import pyarrow.parquet as pq

        from recsys.io_utils import arrow_to_numpy

        f = f"{self.DATA}/split.parquet"
        self._require(f)
        with _unreadable(self.path / f):
            split = pq.ParquetFile(self.path / f).read(columns=["user", "item", "split"])
        train = arrow_to_numpy(split.column("split")) == 0
        users, items = arrow_to_numpy(split.column("user"))[train], arrow_to_numpy(split.column("item"))[train]
        _check_split_rows(self.path / f, users, items, len(self.vocab("user")), len(self.vocab("item")))
        return users, items

    # ------------------------------------------------------------------------------------------------ results
    def artifact(self, name: str) -> Path:
        """The path of a result file inside the run (``per_user_test.parquet``, ``eval_test.json``, ...)."""
        return self.path / name

    def write_json(self, name: str, obj) -> None:
        """Write a JSON result (sorted keys, atomically)."""
        from recsys.io_utils import atomic_write_text

        atomic_write_text(self.path / name, json.dumps(obj, indent=2, sort_keys=True) + "\n")

    def read_json(self, name: str) -> dict:
        """A JSON result of the run (``metrics.json``, ``valid_metrics.json``, ``timing.json``, ...)."""
        self._require(name)
        return json.loads((self.path / name).read_text())

    def metrics(self, split: str = "test") -> dict[str, float]:
        """The metrics ``recsys fit`` wrote for ``test`` (``metrics.json``) or ``valid``."""
        return self.read_json("metrics.json" if split == "test" else f"{split}_metrics.json")

    # ------------------------------------------------------------------------------------------------ Python API
    def recommend(self, users=None, k: int = 10, exclude: str = "all", **options) -> pd.DataFrame:
        """Top-k items of users, in external IDs: what ``recsys score`` writes, as a DataFrame.

        Args:
            users: external user IDs (any iterable; their type is kept), or None for every user of the run.
            k: list length.
            exclude: ``all`` (every interaction the run knows of the user), ``train`` or ``none``.
            **options: further :func:`recsys.scoring.batch.score_run` options (``index=``, ``unknown_users=``,
                ``histories=``, ...).

        Returns:
            Columns ``user``, ``item``, ``rank`` (1-based), ``score``; one block of ``k`` rows per user.
        """
        import tempfile

        import pandas as pd

        from recsys.scoring.batch import score_run
        from recsys.scoring.index import parse_index_spec

        if isinstance(options.get("index"), str):
            options["index"] = parse_index_spec(options["index"])
        with tempfile.TemporaryDirectory(prefix="recsys-recommend-") as tmp:
            users_file = None
            if users is not None:
                users = list(users) if not isinstance(users, (str, bytes)) else [users]
                users_file = Path(tmp) / "users.txt"
                users_file.write_text("".join(f"{u}\n" for u in users))
            out = Path(tmp) / "top.parquet"
            score_run(self.path, out, k=k, users_file=users_file, exclude=exclude, **options)
            return pd.read_parquet(out)

    def evaluate(self, split: str = "test", ks: tuple[int, ...] = (10, 20), **options) -> dict[str, float]:
        """Full-ranking metrics of the run's model on its ``valid`` or ``test`` split (``recsys evaluate``).

        Args:
            split: ``valid`` or ``test``.
            ks: cut-offs.
            **options: :func:`recsys.metrics.evaluate.evaluate` options (``index=``, ``per_user_out=``, ...).
        """
        from recsys.metrics.evaluate import evaluate

        data = self.data()
        return evaluate(self.recommender(data), data, split, tuple(ks), **options)

    def save(self, path: str | Path, overwrite: bool = False) -> Run:
        """Copy the run directory to ``path`` (a new run: the copy is checked like any finished run).

        Raises:
            RunDirError: ``path`` exists and ``overwrite`` is False, or this run is not finished.
        """
        import shutil

        self._require(self.CONFIG, self.MODEL)
        dest = Path(path)
        if dest.resolve() == self.path.resolve():
            return self
        if dest.exists():
            if not overwrite:
                raise RunDirError(f"{str(dest)!r} exists: pass overwrite=True to replace it")
            shutil.rmtree(dest)
        tmp = dest.with_name(f".{dest.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(self.path, tmp)
        tmp.rename(dest)
        return Run.open(dest)

    def export(self, out: str | Path, format: str = "parquet", index=None) -> dict:
        """User and item embeddings for an ANN service (``recsys export``); returns what was written.

        Args:
            out: the output directory.
            format: ``parquet`` (embeddings with external IDs) or ``faiss`` (an index plus an ID map).
            index: with ``faiss``: an index spec such as ``"faiss:ivf,nlist=256"``.
        """
        from recsys.scoring.export import export_run
        from recsys.scoring.index import parse_index_spec

        if isinstance(index, str):
            index = parse_index_spec(index)
        return export_run(self.path, out, format=format, index=index)


def _same_ids(a: Vocabulary, b: Vocabulary) -> bool:
    return a.ids.dtype == b.ids.dtype and len(a) == len(b) and bool((a.ids == b.ids).all())


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _one_line(e: BaseException, limit: int = 300) -> str:
    """An exception's text on one line, shortened: torch's messages run over several lines of advice."""
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _safe_load(path: Path):
    """``torch.load(weights_only=True)`` of a run's file, every failure one :class:`CheckpointError` line.

    A file holding Python objects beyond tensors and plain containers (a pickle that would import a module or call a
    function) is refused without running any of it; the message says so rather than quoting torch's advice to
    load it without ``weights_only``, which would run that code.
    """
    import pickle
    import warnings

    try:
        with warnings.catch_warnings():
            # torch's remarks on a foreign file's pickle protocol: the refusal below says what matters.
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        import re

        text = str(e)
        found = re.search(r"GLOBAL ([\w.]+)", text)
        what = f" (it asks to import {found.group(1)})" if found else ""
        raise CheckpointError(f"refusing to load {str(path)!r}: it holds Python objects other than tensors and plain "
                              f"data{what}, which a recsys run never stores; nothing in it was run. Use a model.pt "
                              "written by `recsys fit`") from e
    except Exception as e:  # torch raises several types for damaged files
        raise CheckpointError(f"cannot read checkpoint {str(path)!r}: it is truncated, corrupted or not a recsys "
                              f"checkpoint ({type(e).__name__}: {_one_line(e, 160)})") from e


@contextmanager
def _unreadable(path: Path):
    """Turn a read failure of a run's data file (not Parquet, truncated, wrong columns) into one DataError line."""
    try:
        yield
    except (DataError, RunDirError):
        raise
    except (OSError, ValueError, KeyError, TypeError, IndexError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise DataError(f"the run's data file cannot be read: it is truncated, corrupted or not what `recsys fit` "
                        f"wrote ({type(e).__name__}: {_one_line(e, 160)})", file=str(path)) from e


def _check_split_rows(path: Path, users, items, n_users: int, n_items: int) -> None:
    """Refuse a split whose user or item rows fall outside the vocabularies (an edited or mismatched data/)."""
    for name, rows, n in (("user", users, n_users), ("item", items, n_items)):
        if len(rows) and (int(rows.min()) < 0 or int(rows.max()) >= n):
            bad = int(((rows < 0) | (rows >= n)).argmax())
            raise DataError(f"{name} row {int(rows[bad])} is outside the run's {n} {name}s: data/ does not belong "
                            "together", file=str(path), column=name, row=bad)


def _check_scorer(scorer, where: str) -> None:
    """Refuse a scorer description that no recsys scorer writes (another metric, a non-positive temperature)."""
    import math

    if not isinstance(scorer, dict):
        raise CheckpointError(f"{where}: the scorer description is a {type(scorer).__name__}, not a mapping")
    if scorer.get("metric", "inner_product") != "inner_product":
        raise CheckpointError(f"{where}: unknown scorer metric {scorer.get('metric')!r} (recsys writes "
                              "'inner_product' over scorer-prepared tables)")
    if not isinstance(scorer.get("normalize", False), bool):
        raise CheckpointError(f"{where}: scorer 'normalize' must be true or false, got {scorer['normalize']!r}")
    t = scorer.get("temperature", 1.0)
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
        raise CheckpointError(f"{where}: scorer temperature must be a positive number, got {t!r}")
    if not isinstance(scorer.get("class_path", ""), str):
        raise CheckpointError(f"{where}: scorer class_path must be a string")
