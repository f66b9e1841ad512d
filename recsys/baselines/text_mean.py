"""Text-history mean: the no-training language baseline AlphaRec's mapping has to beat.

Items are the frozen LM embeddings of their flattened text, a user is the mean LM embedding of their history, and
scores are cosine similarities: exactly AlphaRec's input (Sheng et al., "Language Representations Can be What
Recommenders Need: Findings and Potentials", ICLR 2025) before any mapping or propagation is learned.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from recsys.baselines.base import Baseline
from recsys.capabilities import FoldsIn, Histories, ScoresHistories
from recsys.encoders.language import TextFeatures, history_mean
from recsys.recommender import LightningFit
from recsys.scoring.topk import ScoreFn, gemm_score_fn
from recsys.text.lm import Pooling

__all__ = ["TextHistoryMean"]


class TextHistoryMean(FoldsIn, ScoresHistories, Baseline):
    """Cosine between a user's mean LM vector over their history and each item's LM vector; nothing is trained.

    ``score(u, i) = cos(mean_{j∈H(u)} z_j, z_i)`` with ``z_i`` the frozen LM embedding of item i's flattened
    attributes (:class:`recsys.encoders.language.TextFeatures`). The zero-training reference point of AlphaRec
    (Sheng et al., ICLR 2025): what the LM space alone ranks, before the mapping and the graph.

    A query's history is the interactions up to the evaluated split (``up_to``: train for validation, train+valid
    for test, every interaction for ``recsys score``), as a sequence model reads it: there is nothing fitted that
    could leak. Users unseen in training are embedded from a history alone (:class:`~recsys.capabilities.FoldsIn`,
    used by ``recsys score --histories``); items unseen in training from their side-table text (``--new-items``).
    A user with an empty history has a zero vector and scores 0 for every item.

    Args:
        lm_path, pooling, normalize, max_length, attributes, max_words_per_attribute, max_words, cache_dir,
            lm_batch_size: item text and LM options, see :class:`~recsys.encoders.language.TextFeatures` (no
            ``lm_dim``: cosine needs no reduction, and unreduced vectors keep new items embeddable after a reload).
    """

    def __init__(self, lm_path: str | None = None, pooling: Pooling = "mean", normalize: bool = True,
                 max_length: int = 128, attributes: list[str] | None = None,
                 max_words_per_attribute: int | None = 32, max_words: int | None = 128, cache_dir: str | None = None,
                 lm_batch_size: int = 64) -> None:
        super().__init__()
        self.text = TextFeatures(lm_path, pooling, normalize, max_length, attributes, max_words_per_attribute,
                                 max_words, cache_dir, lm_batch_size)
        # Unit-length LM vectors of the catalogue (the GEMM's item table) and of the users' training histories.
        self.register_buffer("item_vectors", torch.empty(0, 0))
        self.register_buffer("user_vectors", torch.empty(0, 0))

    @property
    def n_items(self) -> int:
        return self.item_vectors.shape[0]

    def fit(self, data, trainer: LightningFit | None = None) -> None:
        """Embed every item's text (the LM cache makes a refit free) and average each user's training items."""
        self.item_vectors = F.normalize(self.text.item_table(data), dim=-1)
        self.user_vectors = self._queries(data.train)

    def _queries(self, matrix) -> Tensor:
        """Unit-length history means of the rows of a user × item matrix (zero rows stay zero).

        Shapes:
            matrix: [B, I] -> [B, H]
        """
        return F.normalize(history_mean(matrix, self.item_vectors.cpu()), dim=-1).to(self.item_vectors.device)

    def serving_tables(self, data, up_to: str = "train") -> tuple[Tensor, Tensor]:
        """Unit-length (queries, items): user history means up to ``up_to`` and the item LM vectors.

        Shapes:
            -> queries [n_users, H], items [n_items, H]
        """
        if up_to == "train":
            return self.user_vectors, self.item_vectors
        # history_mean counts an item once, so the parts' sum needs no re-binarising.
        history = data.csr("train+valid") if up_to == "train+valid" else data.csr("train+valid") + data.csr("test")
        return self._queries(history), self.item_vectors

    def scorer_description(self) -> dict:
        """Cosine over unit-length tables: inner products, re-normalised should an index truncate them."""
        return {"metric": "inner_product", "normalize": True}

    def score_fn(self, data, up_to: str = "train") -> ScoreFn:
        """One GEMM over :meth:`serving_tables`: the histories grow with ``up_to``."""
        return gemm_score_fn(*self.serving_tables(data, up_to))

    @torch.no_grad()
    def score_users(self, users: Tensor, out: Tensor | None = None) -> Tensor:
        """Cosine scores of every item for users given by their training histories.

        Shapes:
            users: [B] -> [B, n_items]
        """
        q = self.user_vectors[users.to(self.user_vectors.device)]
        if out is None:
            return q @ self.item_vectors.T
        return torch.mm(q, self.item_vectors.T, out=out)

    @torch.no_grad()
    def fold_in(self, histories: Histories) -> Tensor:
        """Unit-length mean LM vectors of the histories: the query a training user with that history gets.

        Shapes:
            histories: B users -> [B, H]
        """
        return self._queries(histories.matrix())

    @torch.no_grad()
    def score_histories(self, histories: Histories, rows: Tensor, out: Tensor | None = None) -> Tensor:
        """Cosine scores of every item for the histories ``rows``.

        Shapes:
            rows: [R] -> [R, n_items]
        """
        q = self.fold_in(histories.select(rows.cpu().numpy()))
        if out is None:
            return q @ self.item_vectors.T
        return torch.mm(q, self.item_vectors.T, out=out)

    @torch.no_grad()
    def new_item_table(self, table) -> Tensor:
        """Unit-length LM vectors of items outside the catalogue, from their side-table rows (zero-shot).

        Shapes:
            table: M rows (the training side table's attributes) -> [M, H]
        """
        return F.normalize(self.text.embed(self.text.texts(table)), dim=-1).to(self.item_vectors.device)

