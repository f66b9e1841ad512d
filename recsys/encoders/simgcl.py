"""SimGCL: LightGCN plus an InfoNCE term between two views perturbed by uniform noise at every layer."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from recsys.encoders.graph import Adjacency, EmbeddingInit, l2_normalize, spmm
from recsys.encoders.lightgcn import LightGCN

__all__ = ["SimGCL", "info_nce", "noisy_propagation", "perturb"]


def perturb(x: Tensor, eps: float, groups: int = 1) -> Tensor:
    """SimGCL's noise: ``x + sign(x) ⊙ normalize(U(0, 1)) · eps``, a step of length ``eps`` inside x's orthant.

    The noise enters autograd as a constant: ``sign`` has zero gradient, so ``∂/∂x`` is the identity, as in the
    reference code.

    Args:
        x: the layer output to perturb.
        eps: the noise's L2 norm per row (and per group).
        groups: how many independent ``D / groups``-wide views ``x`` holds side by side; each gets its own
            unit-norm direction.

    Shapes:
        x: [N, D] -> [N, D]
    """
    if eps == 0:
        return x
    with torch.no_grad():
        n, d = x.shape
        noise = F.normalize(torch.rand(n, groups, d // groups, dtype=x.dtype, device=x.device), dim=-1)
        delta = noise.view(n, d).mul_(torch.sign(x)).mul_(eps)
    return x + delta


def info_nce(view1: Tensor, view2: Tensor, temperature: float) -> Tensor:
    """InfoNCE between two views of the same nodes: row ``i`` of ``view1`` must pick row ``i`` of ``view2``.

    ``mean_i [log Σ_j exp(s_ij / τ) − s_ii / τ]`` with ``s_ij`` the cosine of ``view1_i`` and ``view2_j``; the
    other rows of ``view2`` are the negatives (SELFRec's ``InfoNCE``).

    Shapes:
        view1, view2: [M, D] -> scalar
    """
    logits = l2_normalize(view1) @ l2_normalize(view2).T / temperature
    return F.cross_entropy(logits, torch.arange(len(logits), device=logits.device))


def noisy_propagation(adj: Adjacency, x: Tensor, alpha: list[float], eps: float, n_views: int) -> list[Tensor]:
    """``Σ_l α_l E^l`` with ``E^0 = x``, ``E^l = perturb(Ã E^{l-1}, eps)``, for ``n_views`` independent noises.

    The views travel side by side as one ``[N, n_views · D]`` matrix, one sparse product and one noise draw per
    layer for all of them (on one CPU core a 128-wide product costs what two 64-wide ones do: the gain is fewer
    passes, not fewer reads of ``Ã``).

    Shapes:
        x: [N, D] -> n_views × [N, D]
    """
    a, at = adj.matrices()
    h = x.repeat(1, n_views)
    out = h * alpha[0]
    for weight in alpha[1:]:
        h = perturb(spmm(a, at, h), eps, n_views)
        out = out + h * weight
    return list(out.chunk(n_views, dim=1))


class SimGCL(LightGCN):
    """SimGCL: LightGCN whose training adds λ · InfoNCE between two noise-perturbed propagations.

    The recommendation view is LightGCN's noise-free ``Σ_l α_l Ã^l E⁰`` (scored by BPR, penalised by the ego
    L2 of the batch, and the evaluation tables). Each contrastive view propagates the same ego table with
    ``E^l = Ã E^{l-1} + Δ^l``, ``Δ^l = sign(E^l) ⊙ normalize(U(0, 1)) · eps`` fed into the next layer, combined with
    the same ``α``. The term is ``λ (InfoNCE_users + InfoNCE_items)`` over the batch's unique users and unique
    positive items (cosine similarity, temperature ``τ``), returned as ``losses["contrastive"]`` of training
    steps only.

    Yu et al., "Are Graph Augmentations Necessary? Simple Graph Contrastive Learning for Recommendation",
    SIGIR 2022.

    The paper and its official code (SELFRec) skip the ego layer in all three propagations, ``mean_{l=1..L} E^l``:
    set ``alpha: [0, 1/L, ..., 1/L]``. The default keeps LightGCN's ``1/(L+1)`` so that ``cl_weight: 0`` is exactly
    LightGCN. SELFRec's L2 is on the propagated batch rows; here it is LightGCN's ego L2 (``reg_weight``).

    Args:
        dim: embedding size.
        n_layers: propagation depth ``L``.
        alpha: layer weights ``α_0..α_L`` of every view (``1/(L+1)`` each when None).
        eps: the noise's norm per row and layer (the paper's ε; 0.1).
        temperature: the InfoNCE temperature τ (0.2).
        cl_weight: the contrastive weight λ (0.5 on Yelp2018 and Amazon-Book in the paper).
        init: see :func:`recsys.encoders.graph.init_embedding_`.
        init_std: standard deviation of the normal initialisation.

    Shapes:
        batch.users: [B]; batch.items: [B, C] -> StepOutput(query [B, dim], candidates [B, C, dim])
    """

    def __init__(self, dim: int = 64, n_layers: int = 3, alpha: list[float] | None = None, eps: float = 0.1,
                 temperature: float = 0.2, cl_weight: float = 0.5, init: EmbeddingInit = "normal",
                 init_std: float = 0.1) -> None:
        super().__init__(dim, n_layers, alpha, init, init_std)
        if eps < 0 or temperature <= 0 or cl_weight < 0:
            raise ValueError(f"SimGCL needs eps >= 0, temperature > 0 and cl_weight >= 0 (got eps={eps}, "
                             f"temperature={temperature}, cl_weight={cl_weight})")
        self.eps, self.temperature, self.cl_weight = eps, temperature, cl_weight

    def noisy_views(self, n_views: int = 2) -> list[Tensor]:
        """``n_views`` independently perturbed propagations of the ego table (users then items).

        Shapes:
            -> n_views × [U + I, dim]
        """
        return noisy_propagation(self.adj, self.embedding.weight, self.propagation.alpha, self.eps, n_views)

    def batch_losses(self, batch) -> dict[str, Tensor]:
        """``{"contrastive": λ (InfoNCE_users + InfoNCE_items)}`` while training (nothing in evaluation).

        Shapes:
            batch.users: [B]; batch.items: [B, C] -> {"contrastive": scalar}
        """
        if not self.training or self.cl_weight == 0:
            return {}
        users = torch.unique(batch.users)
        items = torch.unique(batch.items[:, 0]) + self.n_users
        view1, view2 = self.noisy_views()
        loss = (info_nce(view1.index_select(0, users), view2.index_select(0, users), self.temperature)
                + info_nce(view1.index_select(0, items), view2.index_select(0, items), self.temperature))
        return {"contrastive": self.cl_weight * loss}

