"""SESA: users and items embedded as non-negative activations over explicit, named concepts.

Reconstruction of "SESA: Supervised Explicit Semantic Analysis" (Bogdanova & Yazdani, LinkedIn, 2017; no public
code). Both sides are mapped into a space where dimension k is a named concept (a skill there; a genre, a tag or a
generator concept here), and a supervised ranking loss trains the mapping, so every score splits exactly into
per-concept contributions (:mod:`recsys.scoring.explain`).

Choices this reconstruction makes (the paper leaves them open or is specific to its data):

* **Latent h.** Items: a trained linear map ``W`` (initialised to the identity) of the frozen LM embedding of the
  item's flattened text (:class:`recsys.encoders.language.TextFeatures`, cached; PCA-reduced by default) — the
  paper's text encoder, with the LM service instead of its GRU. Users (``user="history"``): a second map of the
  mean LM embedding of their training items. ``residual`` optionally adds free ID vectors to h (collaborative
  capacity; the score is still computed only in the explicit space, so explanations stay exact).
* **Concepts.** ``c_k`` is initialised from the LM embedding of concept k's name (same PCA), so before training
  ``h · c_k`` is the text-to-name similarity, and it is trained with the rest.
* **Explicit activation.** ``e_k = f(h · c_k + b_k)`` with ``f`` = ReLU or sigmoid, plus ``softplus(γ_k)`` for
  every *declared* concept of the row (an item's genres/tags, a user's declared concepts): declared concepts feed
  the profile directly, with a learned non-negative weight per concept. The ReLU's backward pass leaks 0.01 below
  zero so that no concept dies for good (its forward values are exact ReLU zeros); each side's bias starts at minus
  its median logit, so every concept starts active for about half of the rows. ``user="pooled"`` instead makes a
  user the mean explicit vector of their training items (plus their own declared concepts): a profile made of
  concepts only.
* **Score and loss.** Any scorer (dot, or cosine / τ) on the explicit vectors and any ranking loss (BPR, sampled
  softmax) through :class:`recsys.model.RecModel`. ``l1_weight`` adds ``λ · mean ‖e‖₁`` over the batch's
  activations (sparser vectors, shorter posting lists for :mod:`recsys.retrieval`).

Shapes:
    batch.users: [B]; batch.items: [B, C] -> (query [B, K], items [B, C, K]) with K = number of concepts
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recsys.capabilities import ExplicitConcepts, StepOutput
from recsys.data.concepts import Concepts, ConceptVocabulary
from recsys.encoders.base import TwoSidedEncoder
from recsys.encoders.choices import check_choice
from recsys.encoders.language import TextFeatures, history_mean

log = logging.getLogger(__name__)

__all__ = ["SESA"]

#: the explicit activation ``f``.
Activation = Literal["relu", "sigmoid"]
#: how a user's explicit vector is made.
UserSide = Literal["history", "pooled"]
#: which sides add free ID vectors to the latent h.
Residual = Literal["none", "user", "item", "both"]
#: which concepts an item may activate.
ItemSupport = Literal["all", "declared"]


def _sparse(m: sp.spmatrix) -> Tensor:
    m = sp.coo_matrix(m, dtype=np.float32)
    idx = torch.from_numpy(np.vstack([m.row, m.col]).astype(np.int64))
    return torch.sparse_coo_tensor(idx, torch.from_numpy(m.data), size=m.shape, check_invariants=False).coalesce()


class SESA(ExplicitConcepts, TwoSidedEncoder):
    """Explicit-concept encoder: non-negative activations ``e_k = f(h · c_k + b_k) + softplus(γ_k)·declared_k``.

    Bogdanova & Yazdani, "SESA: Supervised Explicit Semantic Analysis", arXiv:1708.03246, 2017.

    Args:
        concepts: where the concept vocabulary comes from (default: MovieLens genres and tags, ≥ 5 items).
        text: item text and LM options (default: all-MiniLM-L6-v2, PCA to 64 dimensions).
        activation: ``"relu"`` or ``"sigmoid"``.
        user: ``"history"`` (concept activations of a mapped mean history LM vector) or ``"pooled"`` (the mean
            explicit vector of the user's training items).
        declared_weight: initial weight of declared concepts (0 = declared concepts are not used).
        residual: free ID vectors added to the latent h: ``"none"``, ``"user"``, ``"item"`` or ``"both"``.
        residual_std: standard deviation of the residuals' normal initialisation.
        l1_weight: weight of the L1 sparsity penalty on the batch's activations (0 = off).
        undeclared_l1: weight of an extra L1 penalty on item activations of concepts the item does not declare
            (0 = off): pushes item vectors, and so explanations, towards the item's true concepts without
            forbidding other concepts.
        item_support: ``"all"`` (any concept may activate) or ``"declared"`` (an item activates only its declared
            concepts: explanations name true concepts by construction; items declaring none score 0).
    """

    def __init__(self, concepts: Concepts | None = None, text: TextFeatures | None = None,
                 activation: Activation = "relu", user: UserSide = "history", declared_weight: float = 1.0,
                 residual: Residual = "none", residual_std: float = 0.01, l1_weight: float = 0.0,
                 undeclared_l1: float = 0.0, item_support: ItemSupport = "all") -> None:
        super().__init__()
        check_choice("activation", activation, Activation)
        check_choice("user", user, UserSide)
        check_choice("residual", residual, Residual)
        check_choice("item_support", item_support, ItemSupport)
        if min(declared_weight, l1_weight, undeclared_l1) < 0:
            raise ValueError("declared_weight, l1_weight and undeclared_l1 must be >= 0")
        self.concepts = concepts if concepts is not None else Concepts()
        self.text = text if text is not None else TextFeatures(lm_dim=64)
        self.activation, self.user, self.residual = activation, user, residual
        self.declared_weight, self.residual_std, self.l1_weight = declared_weight, residual_std, l1_weight
        self.undeclared_l1, self.item_support = undeclared_l1, item_support
        self.vocab: ConceptVocabulary | None = None
        self._concept_names: list[str] = []
        self.concept_emb: nn.Parameter | None = None  # allocated at the first bind (a reload keeps the trained one)
        self.out_dim = 0
        self._n_items = 0

    # ------------------------------------------------------------------------------------------------ binding
    def bind(self, data) -> None:
        self.vocab = self.concepts.build(data)
        self._concept_names = list(self.vocab.names)
        k = self.out_dim = len(self._concept_names)
        self._n_items = data.n_items
        z = self.text.item_table(data)
        h = z.shape[1]
        self.register_buffer("lm_items", z, persistent=False)
        self.register_buffer("lm_users", history_mean(data.train, z), persistent=False)
        self.register_buffer("item_declared", torch.from_numpy(self.vocab.items.toarray()), persistent=False)
        users = self.vocab.users
        self.register_buffer("user_declared", torch.from_numpy(users.toarray()) if users is not None else None,
                             persistent=False)
        self.register_buffer("train_mean", _sparse(sp.diags(1.0 / np.maximum(
            np.diff(data.train.indptr), 1)).astype(np.float32) @ (data.train > 0).astype(np.float32)),
            persistent=False)
        if self.concept_emb is None:
            names = self.text.embed(self._concept_names)
            self.concept_emb = nn.Parameter(names.clone())
            # Each side's bias starts at minus its median logit per concept, so at initialisation every concept is
            # active for about half of the rows: with raw LM similarities a ReLU concept can start dead everywhere
            # (all logits < 0) and then never receive a gradient.
            self.item_bias = nn.Parameter(-(z @ names.T).median(0).values)
            self.user_bias = nn.Parameter(-(self.lm_users @ names.T).median(0).values)
            self.item_map = nn.Linear(h, h, bias=False)
            self.user_map = nn.Linear(h, h, bias=False)
            for m in (self.item_map, self.user_map):
                nn.init.eye_(m.weight)
            # softplus⁻¹(w): the declared weights start at declared_weight.
            w = max(self.declared_weight, 1e-6)
            self.declared_raw = nn.Parameter(torch.full((k,), float(np.log(np.expm1(w)))),
                                             requires_grad=self.declared_weight > 0)
            self.item_residual = self.user_residual = None
            if self.residual in ("item", "both"):
                self.item_residual = nn.Embedding(data.n_items, h)
                nn.init.normal_(self.item_residual.weight, std=self.residual_std)
            if self.residual in ("user", "both"):
                self.user_residual = nn.Embedding(data.n_users, h)
                nn.init.normal_(self.user_residual.weight, std=self.residual_std)
        log.info("SESA: %d concepts over a %d-dimensional latent space (%d items, %d users)", k, h, data.n_items,
                 data.n_users)

    @property
    def n_items(self) -> int:
        return self._n_items

    # ------------------------------------------------------------------------------------------------ activations
    def _declared(self) -> Tensor:
        w = F.softplus(self.declared_raw)
        return w if self.declared_weight > 0 else torch.zeros_like(w)

    def _explicit(self, latent: Tensor, bias: Tensor, declared: Tensor | None) -> Tensor:
        """``f(h · C^T + b)`` plus the weighted declared concepts.

        Shapes:
            latent: [N, H]; bias: [K]; declared: [N, K] or None -> [N, K]
        """
        logits = latent @ self.concept_emb.T + bias
        if self.activation == "relu":
            # Forward: exactly ReLU (true zeros, sparse vectors). Backward: a 0.01 leak below zero, so a concept
            # pushed below zero for every row (Adam overshoots easily at small logit scales) is not dead for good.
            e = torch.relu(logits)
            if logits.requires_grad:
                e = e + 0.01 * torch.where(logits < 0, logits - logits.detach(), torch.zeros_like(logits))
        else:
            e = torch.sigmoid(logits)
        if declared is not None and self.declared_weight > 0:
            e = e + declared * self._declared()
        return e

    def item_activations(self, items: Tensor) -> Tensor:
        """Explicit item vectors.

        Shapes:
            items: [...] -> [..., K]
        """
        flat = items.reshape(-1)
        h = self.item_map(self.lm_items[flat])
        if self.item_residual is not None:
            h = h + self.item_residual(flat)
        declared = self.item_declared[flat]
        e = self._explicit(h, self.item_bias, declared)
        if self.item_support == "declared":
            e = e * declared
        return e.view(*items.shape, -1)

    def user_activations(self, users: Tensor, item_table: Tensor | None = None) -> Tensor:
        """Explicit user vectors (``item_table``: all items' activations, reused by ``user="pooled"``).

        Shapes:
            users: [B] -> [B, K]
        """
        declared = self.user_declared[users] if self.user_declared is not None else None
        if self.user == "pooled":
            table = item_table if item_table is not None else self.item_activations(
                torch.arange(self._n_items, device=users.device))
            e = torch.sparse.mm(self.train_mean, table)[users]
            return e + declared * self._declared() if declared is not None and self.declared_weight > 0 else e
        h = self.user_map(self.lm_users[users])
        if self.user_residual is not None:
            h = h + self.user_residual(users)
        return self._explicit(h, self.user_bias, declared)

    # ------------------------------------------------------------------------------------------------ TwoSidedEncoder
    def propagate(self) -> tuple[Tensor, Tensor]:
        dev = self.lm_items.device
        items = self.item_activations(torch.arange(self._n_items, device=dev))
        users = self.user_activations(torch.arange(self.lm_users.shape[0], device=dev), items)
        return users, items

    def concept_names(self) -> list[str]:
        """The concept of each output dimension."""
        return list(self._concept_names)

    def forward(self, batch) -> StepOutput:
        if self._tables is not None:
            return super().forward(batch)
        if self.user == "pooled" or batch.items.numel() >= self._n_items:
            # Training batches outnumber the catalogue (and pooled users read every item): map it once, gather.
            table = self.item_activations(torch.arange(self._n_items, device=batch.items.device))
            items = table.index_select(0, batch.items.reshape(-1)).view(*batch.items.shape, -1)
            users = self.user_activations(batch.users, table)
        else:
            items = self.item_activations(batch.items)
            users = self.user_activations(batch.users)
        losses = self.sparsity_losses(batch, users, items) if self.training else {}
        return StepOutput(users, items, self.regularization(batch), losses)

    def encode_queries(self, batch) -> Tensor:
        if self._tables is not None:
            return self._tables[0][batch.users]
        return self.user_activations(batch.users)

    def encode_items(self, items: Tensor) -> Tensor:
        if self._tables is not None:
            return self._tables[1][items]
        return self.item_activations(items)

    def regularization(self, batch) -> Tensor:
        reg = torch.zeros((), device=batch.users.device)
        if self.user_residual is not None:
            reg = reg + self.user_residual(batch.users).pow(2).sum()
        if self.item_residual is not None:
            reg = reg + self.item_residual(batch.items.reshape(-1)).pow(2).sum()
        return reg

    def sparsity_losses(self, batch, users: Tensor, items: Tensor) -> dict[str, Tensor]:
        """``sparsity``: ``l1_weight × (mean ‖e_u‖₁ + mean ‖e_i‖₁) + undeclared_l1 × mean ‖e_i ⊙ (1 − declared_i)‖₁``
        over the step's activations; none when both weights are 0.

        Shapes:
            users: [B, K]; items: [B, C, K]
        """
        if self.l1_weight <= 0 and self.undeclared_l1 <= 0:
            return {}
        loss = torch.zeros((), device=users.device)
        if self.l1_weight > 0:
            loss = loss + self.l1_weight * (users.sum(-1).mean() + items.sum(-1).mean())
        if self.undeclared_l1 > 0:
            off = 1.0 - self.item_declared[batch.items]
            loss = loss + self.undeclared_l1 * (items * off).sum(-1).mean()
        return {"sparsity": loss}

    @torch.no_grad()
    def contributions(self, users: Tensor, items: Tensor, scorer=None) -> Tensor:
        """Per-concept contributions to the scores of (user, item) pairs; they sum to ``scorer(user, item)``.

        Args:
            users: user rows.
            items: one item row per user.
            scorer: the model's scorer (dot when None); its prepared vectors are what the score multiplies.

        Shapes:
            users: [B]; items: [B] -> [B, K]
        """
        q, i = self.user_activations(users), self.item_activations(items)
        if scorer is not None:
            q, i = scorer.prepare_queries(q), scorer.prepare_items(i)
        # Each term of the inner product is one concept's share of the score.
        return q * i
