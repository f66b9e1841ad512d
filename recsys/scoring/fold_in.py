"""Users outside the training data, scored from item histories given at serving time (``recsys score --histories``).

A histories file lists ``user,item`` pairs (optionally a ``timestamp``) with external IDs. Its items are mapped to
the run's catalogue (unknown ones counted and dropped), each user's items form a chronological
:class:`~recsys.capabilities.Histories` row, and the run's model scores them through its declared capability:

* :class:`~recsys.capabilities.FoldsIn` (MF, ALS, BPR, SASRec, Recformer, AlphaRec, the linear probe): a query
  embedding per history, prepared by the model's scorer and appended to the run's stored query table, so every
  item index serves the new users as it serves the trained ones;
* :class:`~recsys.capabilities.ScoresHistories` (EASE, item-kNN, GF-CF, most-popular): score rows computed from the
  history directly.

A model with neither is refused in one line naming its class.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from recsys.capabilities import FoldsIn, Histories, ScoresHistories
from recsys.errors import DataError, ServingError
from recsys.scoring.topk import ScoreFn, ScoreFunction

__all__ = ["HistoryUsers", "fold_in_queries", "history_scorer", "read_histories", "to_id_type"]


@dataclass
class HistoryUsers:
    """What a histories file holds once mapped to the run's catalogue.

    Args:
        ids: external IDs of the users with at least one known item, sorted (row ``h`` of ``histories``).
        histories: their item histories (run item rows, chronological).
        first_rows: the file row where each of ``ids`` first appears.
        empty_ids: users every one of whose items is unknown to the run (they have no history left).
        empty_first_rows: the file row where each of ``empty_ids`` first appears.
        n_rows: data rows read.
        unknown_items: rows dropped because their item is not in the run's catalogue.
        first_unknown_item: the first such item ID (for the report), or None.
        source: the file, for error messages.

    Shapes:
        ids, first_rows: [H]; empty_ids, empty_first_rows: [E]
    """

    ids: np.ndarray
    histories: Histories
    first_rows: np.ndarray
    empty_ids: np.ndarray
    empty_first_rows: np.ndarray
    n_rows: int
    unknown_items: int
    first_unknown_item: object = None
    source: str = "--histories"

    def all_ids(self) -> tuple[np.ndarray, np.ndarray]:
        """Every user of the file (with or without a history left) and their first file rows, in ID order."""
        ids = np.concatenate([self.ids, self.empty_ids])
        rows = np.concatenate([self.first_rows, self.empty_first_rows])
        order = np.argsort(ids, kind="stable")
        return ids[order], rows[order]


def to_id_type(values: np.ndarray, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """External IDs converted exactly to a vocabulary's ID type, and which of them convert (nothing wraps).

    See :func:`recsys.data.vocab.as_id_type`: ``-1`` is no ``uint64`` ID, ``2**63`` no ``int64`` one, ``"4.5"`` no
    integer ID. Nothing is raised: the caller decides whether a misfit is an unknown ID or an error.

    Shapes:
        values: [N] -> (ids [N] of ``dtype``, ok [N] bool)
    """
    from recsys.data.vocab import as_id_type

    return as_id_type(np.asarray(values), dtype)


def read_histories(path: str | Path, user_vocab, item_vocab) -> HistoryUsers:
    """Read a histories file (CSV or Parquet: ``user``, ``item``, optional ``timestamp``) into run item rows.

    A user's items are in ``timestamp`` order when the file has one, else in file order (most recent last, as
    sequence models read them). Items outside the run's catalogue are counted and dropped; a user left with no item
    is listed in ``empty_ids``.

    Args:
        path: the file.
        user_vocab: the run's user vocabulary (its ID type is the output's; a user ID of another type is an error).
        item_vocab: the run's (trained) item vocabulary.

    Raises:
        DataError: missing file or column, blank IDs, an unparseable timestamp, or a user ID that cannot be of the
            run's user ID type (file, column and row named).
    """
    from recsys.data.io import read_interactions, read_table

    label = str(path)
    # IDs as text: the exact conversion maps them to the vocabulary's type ('007' stays '007').
    df = read_table(path, dtype={"user": str, "item": str})
    df = read_interactions(df, timestamp="timestamp" if "timestamp" in df.columns else None, name=label)
    users, ok = to_id_type(df["user"].to_numpy(), user_vocab.ids.dtype)
    if not ok.all():
        row = int(np.flatnonzero(~ok)[0])
        raise DataError(f"user ID {df['user'].iloc[row]!r} is not of the run's user ID type ({user_vocab.ids.dtype})",
                        file=label, column="user", row=row)
    items, item_ok = to_id_type(df["item"].to_numpy(), item_vocab.ids.dtype)
    rows = np.where(item_ok, item_vocab.encode(items, missing="ignore"), -1) if len(item_vocab) else \
        np.full(len(items), -1, dtype=np.int64)
    known = rows >= 0
    first_unknown = None
    if not known.all():
        at = int(np.flatnonzero(~known)[0])
        first_unknown = items[at] if item_ok[at] else df["item"].iloc[at]  # in the catalogue's ID type when it fits
    if isinstance(first_unknown, np.generic):
        first_unknown = first_unknown.item()
    order_key = df["timestamp"].to_numpy() if "timestamp" in df.columns else np.zeros(len(df), dtype=np.int64)
    file_row = np.arange(len(df))
    every, first_at = np.unique(users, return_index=True)
    # Users with a history left, sorted by ID; each history by (timestamp, file row).
    kept_users = users[known]
    ids, inverse = np.unique(kept_users, return_inverse=True)
    order = np.lexsort((file_row[known], order_key[known], inverse))
    lens = np.bincount(inverse, minlength=len(ids))
    histories = Histories(np.concatenate([[0], np.cumsum(lens)]).astype(np.int64), rows[known][order],
                          len(item_vocab))
    has = np.isin(every, ids)
    return HistoryUsers(ids=ids, histories=histories, first_rows=first_at[np.searchsorted(every, ids)],
                        empty_ids=every[~has], empty_first_rows=first_at[~has], n_rows=len(df),
                        unknown_items=int((~known).sum()), first_unknown_item=first_unknown, source=label)


def _refuse(model) -> ServingError:
    from recsys.recommender import EmbeddingModel

    name = type(model).__name__
    if isinstance(model, EmbeddingModel):
        name = f"{name}({type(model.encoder).__name__})"
    return ServingError(f"{name} cannot score users from --histories: it declares neither FoldsIn nor "
                        "ScoresHistories (models that can: MF, ALS, BPR, SASRec, Recformer, AlphaRec, LinearProbe, "
                        "EASE, ItemKNN, GFCF, MostPopular, TextHistoryMean, and wrappers such as Matryoshka of the "
                        "encoders among them)")


def check_scores_histories(model) -> None:
    """Raise the one-line :class:`~recsys.errors.ServingError` when ``model`` cannot score histories."""
    if model.capability(FoldsIn) is None and model.capability(ScoresHistories) is None:
        raise _refuse(model)


@torch.no_grad()
def fold_in_queries(model, histories: Histories, chunk_size: int = 4096) -> Tensor | None:
    """Scorer-prepared query embeddings of the histories, for a :class:`~recsys.capabilities.FoldsIn` model.

    Returns None when the model scores histories directly instead (:class:`~recsys.capabilities.ScoresHistories`).

    Args:
        model: the run's rebuilt :class:`recsys.recommender.Recommender`, in eval mode.
        histories: the users' histories.
        chunk_size: histories embedded at once.

    Raises:
        ServingError: the model has neither capability.

    Shapes:
        -> [B, D] float32 on the CPU
    """
    encoder = model.capability(FoldsIn)
    if encoder is None:
        if model.capability(ScoresHistories) is None:
            raise _refuse(model)
        return None
    parts = [model.prepare_queries(encoder.fold_in(histories.select(np.arange(s, min(s + chunk_size, len(histories))))))
             .float().cpu() for s in range(0, len(histories), chunk_size)]
    return torch.cat(parts) if parts else torch.zeros((0, 0))


class RoutedScore(ScoreFunction):
    """Scores of rows ``0..n_known-1`` from the run's score function and of the rows after them from histories.

    For models that score items directly (no embedding tables): the trained users keep their own score function,
    users given by histories get :meth:`~recsys.capabilities.ScoresHistories.score_histories`.

    Args:
        inner: the run's score function over user rows.
        scorer: the model part that scores histories.
        histories: the histories of rows ``n_known..``.
        n_known: the number of trained users.
        n_items: catalogue size.

    Shapes:
        rows: [B] -> [B, n_items]
    """

    def __init__(self, inner: ScoreFn, scorer: ScoresHistories, histories: Histories, n_known: int,
                 n_items: int) -> None:
        self.inner, self.scorer, self.histories = inner, scorer, histories
        self.n_known, self.n_items = n_known, n_items

    def __call__(self, rows: Tensor, out: Tensor | None = None) -> Tensor:
        new = rows >= self.n_known
        if not bool(new.any()):
            return self.inner(rows, out)
        if bool(new.all()):
            return self.scorer.score_histories(self.histories, rows - self.n_known, out)
        # A chunk straddling both kinds: each part scored on its own, then placed.
        result = out if out is not None else torch.empty((len(rows), self.n_items))
        result[~new] = self.inner(rows[~new], None).to(result)
        result[new] = self.scorer.score_histories(self.histories, rows[new] - self.n_known, None).to(result)
        return result


def history_scorer(model, inner: ScoreFn, histories: Histories, n_known: int, n_items: int) -> RoutedScore:
    """A score function over trained users then history users, for a :class:`ScoresHistories` model.

    Raises:
        ServingError: the model does not score histories directly.
    """
    scorer = model.capability(ScoresHistories)
    if scorer is None:
        raise _refuse(model)
    return RoutedScore(inner, scorer, histories, n_known, n_items)
