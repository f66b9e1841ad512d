"""NGCF: neural graph collaborative filtering, in the paper's form and in the authors' code's form."""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from recsys.encoders.choices import check_strategy
from recsys.encoders.graph import (
    EmbeddingInit,
    GraphEncoder,
    NGCFLayer,
    OfficialNGCFLayer,
    PaperNGCFLayer,
    dropout_mask,
    l2_normalize,
    spmm,
)

__all__ = ["NGCF", "NGCFVariant", "OfficialNGCF", "PaperNGCF"]


class NGCFVariant:
    """Which NGCF: the adjacency it propagates over, the form of its layers and the L2 penalty of a step.

    Wang et al., "Neural Graph Collaborative Filtering", SIGIR 2019: :class:`PaperNGCF` is the paper's equations,
    :class:`OfficialNGCF` the authors' TensorFlow code. A variant holds no state, so one instance may serve many
    encoders.
    """

    #: the adjacency's normalisation (see :func:`~recsys.encoders.graph.bipartite_adjacency`).
    norm: ClassVar[Literal["sym", "left"]]
    #: whether the adjacency has self-loops.
    self_loops: ClassVar[bool]

    def layer(self, in_dim: int, out_dim: int) -> NGCFLayer:
        """One propagation layer of this form."""
        raise NotImplementedError

    def step_penalty(self, encoder: NGCF, batch, query: Tensor, cands: Tensor) -> Tensor:
        """The training step's L2 penalty, given the step's propagated embeddings.

        Shapes:
            query: [B, out_dim]; cands: [B, C, out_dim] -> scalar
        """
        raise NotImplementedError

    def regularization(self, encoder: NGCF, batch) -> Tensor:
        """The same penalty outside a training forward (full-catalogue steps), computing what it needs."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class PaperNGCF(NGCFVariant):
    """The paper's NGCF (Eq. 7-10, RecBole's form).

    ``E^l = LeakyReLU((L + I) E^{l-1} W1 + (L E^{l-1} ⊙ E^{l-1}) W2 + b)``, ``L = D^-1/2 A D^-1/2``
    (:class:`~recsys.encoders.graph.PaperNGCFLayer`); node dropout applies to ``L``; the step's penalty is
    ``½‖E⁰_batch‖²`` on the batch's ego embeddings (RecBole's form). The paper's Eq. 11 penalises every parameter,
    ``λ‖Θ‖²`` (ego table and layer weights), which is Adam's ``weight_decay``; ``configs/ngcf.yaml`` uses that, much
    better on P1.
    """

    norm = "sym"
    self_loops = False

    def layer(self, in_dim: int, out_dim: int) -> NGCFLayer:
        return PaperNGCFLayer(in_dim, out_dim)

    def step_penalty(self, encoder: NGCF, batch, query: Tensor, cands: Tensor) -> Tensor:
        return encoder.ego_regularization(batch)

    def regularization(self, encoder: NGCF, batch) -> Tensor:
        return encoder.ego_regularization(batch)


class OfficialNGCF(NGCFVariant):
    """The authors' TensorFlow NGCF (``xiangwang1223/neural_graph_collaborative_filtering``, ``adj_type=norm``,
    ``alg_type=ngcf``).

    It differs from :class:`PaperNGCF` in three ways:

    1. the adjacency is ``L' = D^-1 (A + I)`` (row-normalised, self-loops inside, not symmetric) and no separate
       ``+ I`` self-connection term is added;
    2. the sum and bi-interaction branches have their own activations,
       ``E^l = LeakyReLU(L' E W_gc + b_gc) + LeakyReLU((E ⊙ L' E) W_bi + b_bi)``, and the bi branch uses ``L'``
       (which includes the node itself) rather than ``L`` (:class:`~recsys.encoders.graph.OfficialNGCFLayer`,
       whose biases are Glorot-initialised like the weights, as in the code);
    3. the L2 penalty is ``½‖·‖²`` of the *propagated* (concatenated) embeddings of the batch's users and
       candidates (``tf.nn.l2_loss``), which the model divides by the batch size as the code does.
    """

    norm = "left"
    self_loops = True

    def layer(self, in_dim: int, out_dim: int) -> NGCFLayer:
        return OfficialNGCFLayer(in_dim, out_dim)

    def step_penalty(self, encoder: NGCF, batch, query: Tensor, cands: Tensor) -> Tensor:
        return 0.5 * (query.pow(2).sum() + cands.pow(2).sum())

    def regularization(self, encoder: NGCF, batch) -> Tensor:
        return self.step_penalty(encoder, batch, *encoder.batch_rows(batch))


class NGCF(GraphEncoder):
    """NGCF: layers that mix neighbour sums and neighbour-ego affinities, concatenated over depths.

    Wang et al., "Neural Graph Collaborative Filtering", SIGIR 2019. Each layer (see :class:`NGCFLayer`) reads
    the previous layer's un-normalised output (the normalised one with ``feed_normalized``); the final embedding
    is ``[E⁰ ‖ Ê¹ ‖ … ‖ Ê^L]`` where ``Ê^l`` is the row-wise L2-normalised layer output, so
    ``out_dim = dim × (n_layers + 1)``. Training uses message dropout on every layer's output and node dropout on
    the adjacency (each non-zero dropped with probability ``node_dropout``, the rest scaled by ``1/(1-p)``, as both
    reference codes do).

    ``variant`` chooses the paper's equations (:class:`PaperNGCF`, the default) or the authors' code
    (:class:`OfficialNGCF`): the adjacency, the layer form and the step's L2 penalty.

    Args:
        dim: size of the ego embeddings and of every layer.
        n_layers: propagation depth ``L``.
        variant: :class:`PaperNGCF` or :class:`OfficialNGCF` (YAML: ``class_path``).
        node_dropout: probability of dropping each non-zero of the adjacency during training.
        message_dropout: dropout on each layer's output during training.
        feed_normalized: feed each layer's L2-normalised output (the copy that is concatenated) to the next layer
            instead of the raw output. RecBole 1.2.1's ``NGCF`` does this; the paper and the official code feed the
            raw output (False).
        init: ego-embedding initialisation, ``"xavier"`` (Glorot-uniform per side, the official code),
            ``"xavier_normal"`` (RecBole) or ``"normal"`` (std 0.1); see :func:`~recsys.encoders.graph.init_embedding_`.

    Shapes:
        batch.users: [B]; batch.items: [B, C] -> (query [B, dim·(L+1)], items [B, C, dim·(L+1)])
    """

    def __init__(self, dim: int = 64, n_layers: int = 3, variant: NGCFVariant = PaperNGCF(),
                 node_dropout: float = 0.1, message_dropout: float = 0.1, init: EmbeddingInit = "xavier",
                 feed_normalized: bool = False) -> None:
        check_strategy("variant", variant, NGCFVariant)
        super().__init__(dim, init=init)
        self.variant, self.node_dropout, self.message_dropout = variant, node_dropout, message_dropout
        self.feed_normalized = feed_normalized
        self.norm, self.self_loops = variant.norm, variant.self_loops
        self.out_dim = dim * (n_layers + 1)
        self.layers = nn.ModuleList(variant.layer(dim, dim) for _ in range(n_layers))

    def propagate_nodes(self, rows: Tensor | None = None) -> Tensor:
        values = self.adj.dropout(self.node_dropout) if self.training and self.node_dropout > 0 else None
        a, at = self.adj.matrices(values)
        inverse = None
        if rows is not None:
            rows, inverse = torch.unique(rows, return_inverse=True)  # duplicates share one dropout draw
        ego = self.embedding.weight
        outs = [ego if rows is None else ego.index_select(0, rows)]
        last = len(self.layers) - 1
        for k, layer in enumerate(self.layers):
            side = spmm(a, at, ego)
            if rows is not None and k == last:
                # The last layer feeds only the output, so only the requested rows need its transform.
                ego, side = ego.index_select(0, rows), side.index_select(0, rows)
            mask = None
            if self.training and self.message_dropout > 0:
                mask = dropout_mask((ego.shape[0], layer.w_sum.shape[1]), self.message_dropout, ego)
            ego = layer(ego, side, mask)
            if self.feed_normalized:  # RecBole: the next layer reads the normalised copy
                ego = l2_normalize(ego)
            kept = ego if rows is None or k == last else ego.index_select(0, rows)
            outs.append(kept if self.feed_normalized else l2_normalize(kept))
        out = torch.cat(outs, dim=1)
        return out if inverse is None else out.index_select(0, inverse)

    def step_penalty(self, batch, query: Tensor, cands: Tensor) -> Tensor:
        return self.variant.step_penalty(self, batch, query, cands)

    def regularization(self, batch) -> Tensor:
        return self.variant.regularization(self, batch)
