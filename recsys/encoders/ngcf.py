"""NGCF: neural graph collaborative filtering, in the paper's form and in the authors' code's form."""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from recsys.encoders import graph_kernels
from recsys.encoders.choices import check_choice, check_size, check_strategy
from recsys.encoders.graph import (
    EmbeddingInit,
    GraphDropout,
    GraphEncoder,
    NGCFLayer,
    OfficialNGCFLayer,
    PaperNGCFLayer,
    dropout_mask,
    l2_normalize,
    rows_restricted,
    spmm,
    spmm_rows,
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
    ``out_dim = dim × (n_layers + 1)``. Training uses message dropout on every layer's output and dropout on the
    adjacency with probability ``node_dropout``, survivors scaled by ``1/(1-p)`` so the expected matrix is
    unchanged, of one of two kinds (``dropout_kind``):

    - ``"edge"`` (the default): each non-zero of the Laplacian is dropped independently, as both reference codes
      do (the official TensorFlow code's ``_dropout_sparse``, RecBole's ``sparse_dropout``);
    - ``"node"``: what the paper describes (Wang et al., SIGIR 2019, Sec. 2.4.2: node dropout "randomly blocks a
      particular node and discards all its outgoing messages"): each node is dropped with probability ``p`` per
      step and its column of the propagation matrix zeroed, so it sends nothing that step.

    A training step computes the last layer (its sparse product and its transform) for the batch's rows only, and
    an earlier layer for the rows within reach of them when those are at most ``restrict_below`` of the nodes (on
    Gowalla with batches of 1024: the middle of three layers, ~71 % of the nodes); the first layer, whose output
    reaches almost every node within two hops, runs on the whole graph. The step's loss and gradients are the full
    computation's to float rounding, dropout draws included (:func:`~recsys.encoders.graph.row_restriction`).

    ``variant`` chooses the paper's equations (:class:`PaperNGCF`, the default) or the authors' code
    (:class:`OfficialNGCF`): the adjacency, the layer form and the step's L2 penalty.

    Args:
        dim: size of the ego embeddings and of every layer.
        n_layers: propagation depth ``L``.
        variant: :class:`PaperNGCF` or :class:`OfficialNGCF` (YAML: ``class_path``).
        node_dropout: the adjacency dropout's probability during training (per non-zero or per node, by
            ``dropout_kind``).
        dropout_kind: ``"edge"`` (each non-zero, the reference codes) or ``"node"`` (each node's outgoing
            messages, the paper's Sec. 2.4.2).
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
                 feed_normalized: bool = False, dropout_kind: GraphDropout = "edge") -> None:
        check_strategy("variant", variant, NGCFVariant)
        check_choice("dropout_kind", dropout_kind, GraphDropout)
        check_size(type(self).__name__, "n_layers", n_layers, minimum=0)
        super().__init__(dim, init=init)
        self.variant, self.node_dropout, self.message_dropout = variant, node_dropout, message_dropout
        self.dropout_kind = dropout_kind
        self.feed_normalized = feed_normalized
        self.norm, self.self_loops = variant.norm, variant.self_loops
        self.out_dim = dim * (n_layers + 1)
        self.layers = nn.ModuleList(variant.layer(dim, dim) for _ in range(n_layers))

    #: a layer before the last runs on the rows within reach of the batch (not on the whole graph) only when
    #: those are at most this fraction of the nodes: its GEMMs and element-wise work shrink with its rows, against
    #: an expansion to the full table and a few gathers. On Gowalla the rows within one hop of a batch of 1024
    #: are ~71 % of the nodes (restricted), of a batch of 2048 ~87 % (not); within two hops, all.
    restrict_below: ClassVar[float] = 0.8

    def row_sets(self, a: Tensor, rows: Tensor) -> list[Tensor | None]:
        """The rows each layer must compute for the final embeddings of ``rows`` (sorted, unique): ``rows`` for
        the last, the rows within ``L - 1 - k`` hops for layer ``k`` (None: all, a full-graph layer).

        Shapes:
            a: [N, N] sparse CSR; rows: [R] -> n_layers × ([R_k] or None)
        """
        sets: list[Tensor | None] = [rows]
        for _ in range(len(self.layers) - 1):
            prev = sets[0]
            hop = None if prev is None else graph_kernels.csr_neighbourhood(a.crow_indices(), a.col_indices(), prev)
            sets.insert(0, hop if hop is not None and len(hop) <= self.restrict_below * a.shape[0] else None)
        return sets

    def propagate_nodes(self, rows: Tensor | None = None) -> Tensor:
        values = None
        if self.training and self.node_dropout > 0:
            values = self.adj.dropout(self.node_dropout, self.dropout_kind)
        a, at = self.adj.matrices(values)
        inverse = None
        if rows is not None:
            rows, inverse = torch.unique(rows, return_inverse=True)  # duplicates share one dropout draw
        ego = self.embedding.weight
        n = ego.shape[0]
        last = len(self.layers) - 1
        # Rows per layer: all (None) for every layer but the last without row restriction, as before it.
        sets: list[Tensor | None] = [None] * last + [rows]
        if rows is not None and last > 0 and rows_restricted(ego, a):
            sets = self.row_sets(a, rows)
        outs = [ego if rows is None else ego.index_select(0, rows)]
        held = None  # the rows ``ego`` holds (None: all)
        for k, layer in enumerate(self.layers):
            need = sets[k]
            if need is None:
                side = spmm(a, at, ego)
            else:
                # A restricted layer: its product reads the previous layer's rows (all of them, or a full-size
                # table holding the rows within reach, zeros elsewhere) and only ``need``'s rows are transformed.
                full = ego if held is None else ego.new_zeros(n, ego.shape[1]).index_copy(0, held, ego)
                side = spmm_rows(a, at, full, need)
                ego = ego.index_select(0, need if held is None else torch.searchsorted(held, need))
            mask = None
            if self.training and self.message_dropout > 0:
                # Drawn at the shape the full computation draws (all rows but in the last layer), then gathered:
                # the same masks, so the same step, as without row restriction.
                shape_rows = n if k < last else ego.shape[0]
                mask = dropout_mask((shape_rows, layer.w_sum.shape[1]), self.message_dropout, ego)
                if need is not None and k < last:
                    mask = mask.index_select(0, need)
            ego = layer(ego, side, mask)
            held = need
            if self.feed_normalized:  # RecBole: the next layer reads the normalised copy
                ego = l2_normalize(ego)
            if rows is None or k == last:
                kept = ego
            else:
                kept = ego.index_select(0, rows if held is None else torch.searchsorted(held, rows))
            outs.append(kept if self.feed_normalized else l2_normalize(kept))
        out = torch.cat(outs, dim=1)
        return out if inverse is None else out.index_select(0, inverse)

    def step_penalty(self, batch, query: Tensor, cands: Tensor) -> Tensor:
        return self.variant.step_penalty(self, batch, query, cands)

    def regularization(self, batch) -> Tensor:
        return self.variant.regularization(self, batch)
