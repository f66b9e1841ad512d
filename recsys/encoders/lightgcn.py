"""LightGCN: ego embeddings smoothed over the normalised user-item graph, averaged over layers."""

from __future__ import annotations

from torch import Tensor

from recsys.encoders.graph import EmbeddingInit, GraphEncoder, LightGCNPropagation


class LightGCN(GraphEncoder):
    """LightGCN: no feature transform, no non-linearity, no self-loops; a weighted sum over propagation depths.

    ``E = Σ_{l=0..L} α_l Ã^l E⁰`` with ``Ã = D^-1/2 A D^-1/2`` of the bipartite training graph, scored by dot
    product and trained with BPR plus ``λ ½‖E⁰_batch‖² / B`` (set ``reg_weight``; the authors use λ = 1e-4).

    He et al., "LightGCN: Simplifying and Powering Graph Convolution Network for Recommendation", SIGIR 2020.

    A training step computes the last layer for the batch's rows only and starts its backward with a scatter
    through their non-zeros (:func:`~recsys.encoders.graph.sparse_polynomial_rows`): on Gowalla 4.3 sparse
    products' worth of work per step instead of 6, with the same loss and gradients to float rounding. There is
    no graph dropout (LightGCN-PyTorch's ``dropout``/``keep_prob`` edge dropout, off by default there, is not
    implemented).

    Args:
        dim: embedding size.
        n_layers: propagation depth ``L``.
        alpha: layer weights ``α_0..α_L`` (``1/(L+1)`` each when None, as the paper).
        init: ``"normal"`` (std ``init_std``, the authors' PyTorch code), ``"xavier"`` or ``"xavier_normal"``
            (RecBole); see :func:`recsys.encoders.graph.init_embedding_`.
        init_std: standard deviation of the normal initialisation.

    Shapes:
        batch.users: [B]; batch.items: [B, C] -> (query [B, dim], items [B, C, dim])
    """

    def __init__(self, dim: int = 64, n_layers: int = 3, alpha: list[float] | None = None,
                 init: EmbeddingInit = "normal", init_std: float = 0.1) -> None:
        super().__init__(dim, init, init_std)
        self.propagation = LightGCNPropagation(n_layers, alpha)

    def propagate_nodes(self, rows: Tensor | None = None) -> Tensor:
        # With ``rows`` (a training batch) the last layer is computed for those rows only (see
        # :func:`recsys.encoders.graph.sparse_polynomial_rows`); the same values as the full propagation's rows.
        return self.propagation(self.adj, self.embedding.weight, rows=rows)
