"""From a trained model to a score function: GEMM-ready tables for embedding models, ``score_users`` otherwise."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from recsys.data.batch import Batch
from recsys.scoring.topk import ScoreFn, gemm_score_fn


@torch.no_grad()
def embedding_tables(encoder, scorer, data, up_to: str = "train", users: np.ndarray | None = None,
                     chunk_size: int = 4096) -> tuple[Tensor, Tensor]:
    """Scorer-prepared query and item tables, computed once (graph encoders propagate once).

    Args:
        encoder: a bound ``RecEncoder``.
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


def score_function(model, data, up_to: str = "train", retrieval=None, gallery=None, exclude=None) -> ScoreFn:
    """A ``score_fn(user_rows, out)`` for any model this framework trains.

    Baselines that are not embedding models (EASE, item-kNN) expose ``score_users``; embedding models (anything
    with ``encoder`` and ``scorer``) are reduced to one GEMM over precomputed tables.

    Args:
        model: a trained model (``RecModel``, ``LoadedModel`` or a baseline).
        data: the ``PreparedData`` it is bound to.
        up_to: which interactions form the queries' histories (see :func:`embedding_tables`).
        retrieval: a :class:`recsys.scoring.cascade.Retrieval` (prefix dim, coarse-to-fine, Hamming); exact when None.
        gallery: another embedding model whose item table to score against (a backward-compatible upgrade's old
            model); queries keep their first ``D_gallery`` coordinates, the compatible subspace.
        exclude: CSR of items a cascade must not shortlist (the evaluator's exclusions).
    """
    if hasattr(model, "score_users"):
        if retrieval is not None or gallery is not None:
            raise ValueError("prefix, cascade and gallery scoring need an embedding model (encoder + scorer)")
        return model.score_users
    queries, items = embedding_tables(model.encoder, model.scorer, data, up_to)
    if gallery is not None:
        _, items = embedding_tables(gallery.encoder, gallery.scorer, data, up_to)
        queries = queries[:, :items.shape[1]].contiguous()
    if retrieval is not None:
        normalize = bool(model.scorer.describe().get("normalize", False))
        return retrieval.score_fn(queries, items, exclude, normalize)
    return gemm_score_fn(queries, items)
