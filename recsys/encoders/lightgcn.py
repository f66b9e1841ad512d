"""LightGCN: ego embeddings smoothed over the normalised user-item graph, averaged over layers."""

from __future__ import annotations

from torch import Tensor

from recsys.encoders.graph import EmbeddingInit, GraphEncoder, LightGCNPropagation


class LightGCN(GraphEncoder):
    """LightGCN: no feature transform, no non-linearity, no self-loops; a weighted sum over propagation depths.

    ``E = Σ_{l=0..L} α_l Ã^l E⁰`` with ``Ã = D^-1/2 A D^-1/2`` of the bipartite training graph, scored by dot
    product and trained with BPR plus ``λ ½‖E⁰_batch‖² / B`` (set ``reg_weight``; the authors use λ = 1e-4).

    He et al., "LightGCN: Simplifying and Powering Graph Convolution Network for Recommendation", SIGIR 2020.

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
        out = self.propagation(self.adj, self.embedding.weight)
        # index_select: advanced indexing takes a much slower generic path on CPU.
        return out if rows is None else out.index_select(0, rows)
