"""The one model protocol: every fitted model (trained encoder or closed-form baseline) is a :class:`Recommender`.

A recommender is fitted on prepared data, then serves either GEMM-ready user/item tables
(:meth:`Recommender.serving_tables`) or a score function over all items (:meth:`Recommender.score_fn`); it is saved
and loaded through :class:`recsys.runs.Run`. Callers never ask what kind of model they hold.

Trained embedding models (``recsys.model.RecModel``, :class:`EmbeddingRecommender`) share their serving code through
:class:`EmbeddingModel`: an encoder and a scorer reduced to one GEMM over precomputed tables.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch
from torch import Tensor, nn

from recsys.capabilities import EmbedsNewItems
from recsys.data.batch import Batch
from recsys.errors import DataError, MissingDependencyError, RecsysError, ServingError
from recsys.scoring.index import ExactSpec, IndexSpec, ItemIndex, ServingTables
from recsys.scoring.topk import ScoreFn, gemm_score_fn

if TYPE_CHECKING:
    import pandas as pd

    from recsys.data.prepared import PreparedData

__all__ = ["EmbeddingModel", "EmbeddingRecommender", "Recommender", "build_index", "embedding_tables",
           "score_function", "table_score_fn"]

C = TypeVar("C")

#: runs Lightning's ``Trainer.fit`` on a LightningModule; ``recsys fit`` passes one to :meth:`Recommender.fit`.
LightningFit = Callable[[Any], None]


class Recommender:
    """A model that ranks every item for a user once fitted: what ``fit`` trains and ``evaluate``/``score`` serve.

    A nominal mixin for torch modules (``state_dict``, ``load_state_dict`` and ``eval`` come from
    ``torch.nn.Module``): closed-form baselines (:class:`recsys.baselines.Baseline`) and embedding models
    (:class:`EmbeddingModel`) implement it. Its weights round-trip through ``state_dict`` into
    :class:`recsys.runs.ModelPayload`.
    """

    def fit(self, data: PreparedData, trainer: LightningFit | None = None) -> None:
        """Fit on prepared data.

        Args:
            data: the run's ``PreparedData`` (``data.train`` is the user × item training matrix).
            trainer: runs Lightning's ``Trainer.fit`` on a LightningModule, for models trained by gradient steps
                (``recsys fit`` passes one); closed-form models ignore it.
        """
        raise NotImplementedError

    def bind(self, data: PreparedData) -> None:
        """Restore data-dependent context (sizes, graphs, the training matrix) before loading fitted weights."""

    def serving_tables(self, data: PreparedData, up_to: str = "train") -> tuple[Tensor, Tensor] | None:
        """Scorer-prepared (queries, items) tables whose inner products are the scores; None if not an embedding model.

        Args:
            data: the ``PreparedData`` the model is bound to.
            up_to: which interactions form a query's history: ``train`` (validation), ``train+valid`` (test) or
                ``all`` (scoring after the fact).

        Shapes:
            -> queries [n_users, D], items [n_items, D]
        """
        return None

    def serving_extras(self, data: PreparedData, up_to: str = "train") -> dict[str, Tensor]:
        """Tables an item index needs beyond :meth:`serving_tables`; none here.

        Keys are names of :attr:`recsys.scoring.index.ServingTables.EXTRAS` (a low-rank model's factors and basis,
        a latent-quantization model's codes and codebook), so that ``evaluate --index lowrank`` / ``--index
        quantized`` can serve a live model; what ``recsys fit`` stores goes to ``ModelPayload.extras`` instead.

        Args:
            data: the ``PreparedData`` the model is bound to.
            up_to: which interactions form a query's history (see :meth:`serving_tables`).

        Shapes:
            -> e.g. query_factors [n_users, r], item_factors [n_items, r], basis [r, D]
        """
        return {}

    def score_fn(self, data: PreparedData, up_to: str = "train") -> ScoreFn:
        """``score(user_rows, out) -> [B, n_items]``: the scores of every item, written into ``out`` when given.

        The default is one GEMM over :meth:`serving_tables`.
        """
        tables = self.serving_tables(data, up_to)
        if tables is None:
            raise NotImplementedError(f"{type(self).__name__} has neither serving tables nor a score function")
        return gemm_score_fn(*tables)

    def scorer_description(self) -> dict:
        """How the serving tables are scored (``Scorer.describe()``): the metric an ANN index should use."""
        return {"metric": "inner_product"}

    def capability(self, cap: type[C]) -> C | None:
        """The part of this model that has the declared capability ``cap`` (:mod:`recsys.capabilities`), or None.

        Embedding models answer for their encoder; baselines for themselves.
        """
        return None

    def prepare_queries(self, queries: Tensor) -> Tensor:
        """Raw query embeddings (a :class:`~recsys.capabilities.FoldsIn` model's) made GEMM-ready against the item
        table of :meth:`serving_tables`: the scorer's preparation; unchanged here.

        Shapes:
            queries: [B, D] -> [B, D]
        """
        return queries

    def new_item_table(self, table: pd.DataFrame) -> Tensor:
        """Scorer-prepared embeddings of items unseen in training, from their side-table rows.

        Raises:
            ValueError: the model cannot embed items outside its catalogue (only text encoders can).

        Shapes:
            table: M rows -> [M, D]
        """
        raise ValueError(f"{type(self).__name__} cannot embed items outside its catalogue: --new-items needs a "
                         "text encoder (AlphaRec, LinearProbe)")


class EmbeddingModel(Recommender):
    """The serving half of an encoder + scorer model: tables computed once, scores by one GEMM.

    Mixed into modules that hold ``self.encoder`` (a ``TwoSidedEncoder``) and ``self.scorer`` (a ``Scorer``).
    """

    encoder: Any
    scorer: Any

    def fit(self, data: PreparedData, trainer: LightningFit | None = None) -> None:
        """Bind the encoder to ``data``: the weights are trained elsewhere (``RecModel``) or pretrained."""
        if trainer is not None:
            raise ValueError(f"{type(self).__name__} serves trained weights; train its encoder in a RecModel")
        self.bind(data)

    def bind(self, data: PreparedData) -> None:
        self.encoder.bind(data)

    def serving_tables(self, data: PreparedData, up_to: str = "train") -> tuple[Tensor, Tensor]:
        return embedding_tables(self.encoder, self.scorer, data, up_to)

    def serving_extras(self, data: PreparedData, up_to: str = "train") -> dict[str, Tensor]:
        # Raw tables (before any scorer) of whichever encoder the outermost one asks about: its factors or codes.
        from recsys.scorers import DotScorer

        return self.encoder.serving_extras(lambda enc: embedding_tables(enc, DotScorer(), data, up_to))

    def scorer_description(self) -> dict:
        return self.scorer.describe()

    def capability(self, cap: type[C]) -> C | None:
        return self.encoder if isinstance(self.encoder, cap) else None

    def prepare_queries(self, queries: Tensor) -> Tensor:
        return self.scorer.prepare_queries(queries)

    @torch.no_grad()
    def new_item_table(self, table: pd.DataFrame) -> Tensor:
        if not isinstance(self.encoder, EmbedsNewItems):
            raise ValueError(f"{type(self.encoder).__name__} cannot embed items outside its catalogue: --new-items "
                             "needs a text model (AlphaRec, LinearProbe, TextHistoryMean)")
        return self.scorer.prepare_items(self.encoder.embed_new_items(table))


class EmbeddingRecommender(nn.Module, EmbeddingModel):
    """An encoder and a scorer served as a recommender, without Lightning (a pretrained or re-bound encoder).

    Its ``state_dict`` keys (``encoder.*``, ``scorer.*``) are those of the ``RecModel`` that trained the parts.

    Args:
        encoder: a ``TwoSidedEncoder`` (bound, or bound by :meth:`fit`).
        scorer: its ``Scorer``.
    """

    def __init__(self, encoder: nn.Module, scorer: nn.Module) -> None:
        super().__init__()
        self.encoder, self.scorer = encoder, scorer


@torch.no_grad()
def embedding_tables(encoder, scorer, data, up_to: str = "train", users: np.ndarray | None = None,
                     chunk_size: int = 4096) -> tuple[Tensor, Tensor]:
    """Scorer-prepared query and item tables, computed once (graph encoders propagate once).

    Args:
        encoder: a bound ``TwoSidedEncoder``.
        scorer: the model's ``Scorer``.
        data: the ``PreparedData`` the encoder is bound to.
        up_to: which interactions form a query's history: ``train`` (validation), ``train+valid`` (test) or ``all``
            (scoring after the fact). Only encoders that read histories use it.
        users: the user rows to embed (all when None); rows of the result follow ``users``' order.
        chunk_size: queries embedded per forward pass.

    Shapes:
        -> queries [len(users), D], items [n_items, D]
    """
    was_training = encoder.training
    encoder.eval()
    try:
        encoder.precompute()
        items = scorer.prepare_items(encoder.item_table())
        rows = np.arange(data.n_users) if users is None else np.asarray(users)
        dev = items.device
        parts = []
        for s in range(0, len(rows), chunk_size):
            r = rows[s:s + chunk_size]
            hist = None
            if encoder.history_len:
                hist = torch.from_numpy(data.history(r, up_to, encoder.history_len)).to(dev)
            parts.append(scorer.prepare_queries(encoder.encode_queries(Batch(torch.from_numpy(r).to(dev),
                                                                              history=hist))))
        queries = torch.cat(parts) if parts else items.new_zeros((0, items.shape[1]))
    finally:
        encoder.clear_cache()
        encoder.train(was_training)
    return queries, items


def table_score_fn(queries: Tensor, items: Tensor, *, normalize: bool = False, index: IndexSpec | None = None,
                   extras: dict[str, Tensor] | None = None, gallery: Tensor | None = None,
                   extra_items: Tensor | None = None, exclude=None, extra_queries: Tensor | None = None) -> ScoreFn:
    """A score function over scorer-prepared tables: exact GEMM, or through an item index built over them.

    Args:
        queries, items: the tables (:meth:`Recommender.serving_tables` or a run's stored ones).
        normalize: the scorer is cosine: truncated tables (prefixes, low rank, dequantized codes) are re-normalised.
        index: the item index to serve through (:func:`recsys.scoring.index.parse_index_spec`); exact when None.
        extras: the further tables some indexes need (:attr:`recsys.scoring.index.ServingTables.EXTRAS`: low-rank
            factors, quantization codes); names outside that list are ignored.
        gallery: an old model's item table to score against instead of ``items`` (a backward-compatible upgrade);
            queries keep their first ``D_gallery`` coordinates, the compatible subspace.
        extra_items: scorer-prepared rows appended after the item table (items unseen in training).
        exclude: CSR of items a shortlisting index must not take (the evaluator's or the job's exclusions).
        extra_queries: scorer-prepared rows appended after the query table (users folded in from histories,
            :mod:`recsys.scoring.fold_in`); their rows follow the trained users'.

    Raises:
        DataError: the index needs tables that are not there (e.g. ``lowrank`` without factor tables).
        ServingError: an index option does not fit the tables.
        MissingDependencyError: the index's optional package (faiss) is not installed.

    Shapes:
        queries: [U, D]; items: [N, D]; gallery: [N, D_gallery]; extra_items: [M, D]; extra_queries: [H, D]
    """
    if extra_queries is not None:
        queries = torch.cat([queries, extra_queries.to(queries.dtype)])
    if gallery is not None:
        items = gallery
        queries = queries[:, :items.shape[1]].contiguous()
    if extra_items is not None:
        items = torch.cat([items, extra_items.to(items.dtype)])
    if index is None or isinstance(index, ExactSpec):
        return gemm_score_fn(queries, items)
    # A gallery or new items replace the item table, folded-in users extend the query table: factor tables and
    # codes describe the old ones, so none are passed and an index that needs them fails with its own "needs ..."
    # error.
    kept = {k: v for k, v in (extras or {}).items() if k in ServingTables.EXTRAS and v is not None}
    dropped = bool(kept) and (gallery is not None or extra_items is not None or extra_queries is not None)
    tables = ServingTables(queries, items, normalize, **({} if dropped else kept))
    return build_index(index, tables, dropped).score_function(exclude=exclude)


def build_index(index: IndexSpec, tables: ServingTables, dropped: bool = False) -> ItemIndex:
    """``index.build(tables)``, with every failure a one-line :class:`recsys.errors.RecsysError` for the CLI.

    Args:
        index: the parsed spec.
        tables: what the run (or model) serves.
        dropped: the model's extra tables were left out because a gallery or new items replaced the item table
            (or folded-in users extended the query table); a missing-table error then says so.

    Raises:
        DataError: the run does not store what this kind needs.
        ServingError: an option does not fit the tables (e.g. a prefix longer than the model's dimension).
        MissingDependencyError: the optional package of the kind is not installed.
    """
    try:
        return index.build(tables)
    except RecsysError as e:
        if dropped and isinstance(e, DataError):
            raise DataError(f"{e}: a gallery or new items replace the item table and --histories users extend the "
                            "query table, so its stored index tables do not apply (plain-table kinds do: exact, "
                            "prefix, hamming, seismic, faiss)") from None
        raise
    except ImportError as e:
        raise MissingDependencyError(str(e)) from None
    except ValueError as e:
        raise ServingError(str(e)) from None


def score_function(model: Recommender, data, up_to: str = "train", index: IndexSpec | None = None,
                   gallery: Tensor | None = None, exclude=None) -> ScoreFn:
    """A ``score_fn(user_rows, out)`` for any recommender, exact or through an item index over its tables.

    Args:
        model: a fitted :class:`Recommender`.
        data: the ``PreparedData`` it is bound to.
        up_to: which interactions form the queries' histories (see :meth:`Recommender.serving_tables`).
        index: the item index to serve through (prefix, coarse-to-fine, Hamming, low rank, ...); exact when None.
        gallery: an old model's scorer-prepared item table (:meth:`recsys.runs.Run.item_table_for`) to score the
            queries against.
        exclude: CSR of items a shortlisting index must not take (the evaluator's exclusions).

    Raises:
        ServingError: an index or a gallery on a model without serving tables (a baseline such as EASE).

    Shapes:
        gallery: [n_items, D_gallery]
    """
    exact = index is None or isinstance(index, ExactSpec)
    if exact and gallery is None:
        return model.score_fn(data, up_to)
    tables = model.serving_tables(data, up_to)
    if tables is None:
        what = "a gallery" if exact else f"index '{index.kind}'"
        raise ServingError(f"{what} needs an embedding model (user and item tables); {type(model).__name__} "
                           "scores items directly")
    normalize = bool(model.scorer_description().get("normalize", False))
    # The extras describe this model's own item table; a gallery replaces it (see table_score_fn).
    extras = model.serving_extras(data, up_to) if gallery is None and not exact else None
    return table_score_fn(*tables, normalize=normalize, index=index, extras=extras, gallery=gallery,
                          exclude=exclude)
