"""Unified Embedding: every categorical feature of a side multiplexed into shared hashed tables, with baselines.

Coleman et al., "Unified Embedding: Battle-Tested Feature Representations for Web-Scale ML Systems", NeurIPS 2023.
Instead of one table per feature, all features share ``num_tables`` tables of ``B`` buckets × ``d``; feature ``f``
gets ``num_chunks`` lookups, chunk ``c`` hashed by its own salted function into table ``(global chunk counter) mod
num_tables`` (the round robin of TensorFlow Recommenders' ``UnifiedEmbeddingConfig.add_feature``), and the chunks
are concatenated into a ``num_chunks·d`` embedding. Capacity then flows to whichever feature values are frequent,
whatever feature they belong to, and a parameter budget is one number instead of a per-feature vocabulary plan.

One implementation (:class:`FeatureEmbedding`) takes the layout as a strategy (:class:`TableLayout`), so layouts
differ only in where lookups land:

* :class:`UnifiedTables`: ``num_tables`` shared tables, one salted hash per (feature, chunk);
* :class:`PerFeatureTables`: one table per feature, ``num_chunks·d`` wide; collision-free (vocabulary index) where
  the feature's share of the budget holds its vocabulary, hashed otherwise;
* :class:`SingleHashTable`: one shared table, one hashed probe per feature (feature hashing without chunks).

A :class:`FeatureEmbedding` is an :class:`~recsys.encoders.base.SideEncoder` (rows → embeddings), so any pair plugs
into ``TwoTower``; :class:`FeatureTwoTower` builds the user-features + user-ID and item-features + item-ID towers of
the paper's retrieval experiments. Multi-valued features are pooled (mean or sum) with ``embedding_bag``; the
per-feature outputs are concatenated or summed and projected to ``out_dim``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recsys.data.features import FeatureSpec, JaggedFeature, as_specs, default_features, encode_features
from recsys.encoders.base import SideEncoder, TwoTower
from recsys.encoders.choices import check_choice, check_size, check_strategy
from recsys.encoders.hashing import UniversalHash
from recsys.errors import UsageError

__all__ = ["FeatureEmbedding", "FeatureTwoTower", "PerFeatureTables", "SingleHashTable", "TableLayout", "TablePlan",
           "UnifiedTables", "full_size"]

#: how a multi-valued feature's values are pooled.
Pooling = Literal["mean", "sum"]
#: how a side's per-feature embeddings are combined.
Combine = Literal["concat", "sum"]
#: how per-feature tables split a budget (see :class:`PerFeatureTables`).
Allocation = Literal["water_filling", "proportional"]

# Above this many rows per forward, embed the distinct rows once and gather: a sampled-softmax batch repeats items.
_DEDUP_MIN_ROWS = 4096


def full_size(features: dict[str, JaggedFeature], dim_per_table: int) -> int:
    """Parameters of collision-free per-feature tables: Σ_f vocabulary_f × num_chunks_f × dim_per_table."""
    return sum(len(f.vocab) * f.spec.num_chunks * dim_per_table for f in features.values())


@dataclass
class TablePlan:
    """A side's lookup tables and where each feature's probes land in them.

    Args:
        tables: (rows, width) of each table.
        probes: per feature, (table index, table row of each token per probe ``[P, V]``).
        rows: per feature, the table rows its probes spread over (its buckets, or its table's size).
    """

    tables: list[tuple[int, int]]
    probes: dict[str, tuple[int, np.ndarray]]
    rows: dict[str, int]


class TableLayout:
    """Where a side's feature lookups land (which table, which row): the layout strategy of a
    :class:`FeatureEmbedding`.

    A layout holds only its own arguments (no state), so one instance may serve both towers of a model.
    """

    def plan(self, features: dict[str, JaggedFeature], budget: int | None, dim_per_table: int,
             seed: int) -> TablePlan:
        """The tables and probes for a side's encoded features.

        Args:
            features: the side's encoded features, in order.
            budget: embedding parameters the side may use (None: the layout's own size arguments).
            dim_per_table: d, the width of one chunk.
            seed: the hash family's seed.
        """
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class UnifiedTables(TableLayout):
    """Unified Embedding (feature multiplexing): every feature's chunks hashed into ``num_tables`` shared tables.

    Coleman et al., NeurIPS 2023. Chunk c of feature f uses the hash salted by (f's name, c) and the table that a
    round robin over all chunks assigns; the chunks are concatenated, so feature f's embedding is
    ``num_chunks_f · dim_per_table`` wide.

    Args:
        num_tables: T, the number of shared tables.
        buckets_per_table: B (used when neither ``budget`` nor ``compression`` is given).
    """

    def __init__(self, num_tables: int = 1, buckets_per_table: int = 10000) -> None:
        if num_tables < 1 or buckets_per_table < 1:
            raise ValueError("num_tables and buckets_per_table must be >= 1")
        self.num_tables, self.buckets_per_table = num_tables, buckets_per_table

    def plan(self, features, budget, dim_per_table, seed):
        t_count, d = self.num_tables, dim_per_table
        b = max(1, budget // (t_count * d)) if budget is not None else self.buckets_per_table
        probes, counter = {}, 0
        for name, f in features.items():
            keys = f.keys()
            rows = []
            for c in range(f.spec.num_chunks):
                t = counter % t_count
                counter += 1
                rows.append(t * b + UniversalHash(b, seed, (name, c))(keys))
            probes[name] = (0, np.stack(rows)) if rows else (0, np.zeros((0, len(keys)), np.int64))
        # The T tables are stored stacked in one matrix (table t owns rows [t·B, (t+1)·B)): one gather per feature.
        return TablePlan([(t_count * b, d)], probes, dict.fromkeys(features, b))


class PerFeatureTables(TableLayout):
    """One table per feature (the usual layout): collision-free where the vocabulary fits its share, else hashed.

    ``allocation`` splits the budget: ``water_filling`` (max-min fairness: features whose whole vocabulary fits an
    equal share get exactly their vocabulary, the rest split what remains equally and hash into it) or
    ``proportional`` (every feature compressed by the same factor, at least one row each). Feature f's table is
    ``num_chunks_f · dim_per_table`` wide, as wide as its unified embedding. Without a budget every table holds its
    whole vocabulary.

    Args:
        allocation: ``water_filling`` or ``proportional``.
    """

    def __init__(self, allocation: Allocation = "water_filling") -> None:
        check_choice("allocation", allocation, Allocation)
        self.allocation = allocation

    def allocate(self, features: dict[str, JaggedFeature], budget: int | None, dim_per_table: int) -> dict[str, int]:
        """Rows per feature under ``budget`` parameters (see ``allocation``); whole vocabularies without one."""
        width = {n: f.spec.num_chunks * dim_per_table for n, f in features.items()}
        need = {n: len(f.vocab) * width[n] for n, f in features.items()}
        if budget is None:
            return {n: len(f.vocab) for n, f in features.items()}
        if self.allocation == "proportional":
            factor = min(1.0, budget / sum(need.values()))
            return {n: max(1, int(factor * len(f.vocab))) for n, f in features.items()}
        alloc, left, order = {}, float(budget), sorted(need, key=need.get)
        for k, n in enumerate(order):
            share = left / (len(order) - k)
            alloc[n] = min(need[n], share)
            left -= alloc[n]
        return {n: max(1, min(len(features[n].vocab), int(alloc[n] // width[n]))) for n in features}

    def plan(self, features, budget, dim_per_table, seed):
        rows = self.allocate(features, budget, dim_per_table)
        tables, probes = [], {}
        for t, (name, f) in enumerate(features.items()):
            v = len(f.vocab)
            if rows[name] >= v:
                token_rows = np.arange(v, dtype=np.int64)[None, :]  # collision-free: the vocabulary index
            else:
                token_rows = UniversalHash(rows[name], seed, (name, 0))(f.keys())[None, :]
            tables.append((rows[name], f.spec.num_chunks * dim_per_table))
            probes[name] = (t, token_rows)
        return TablePlan(tables, probes, rows)


class SingleHashTable(TableLayout):
    """One shared hashed table, one probe per feature (feature hashing without chunks).

    The table is ``dim_per_table × max_f num_chunks_f`` wide, so each feature's embedding is as wide as its
    unified embedding when all features have the same number of chunks.

    Args:
        buckets: table rows (used when neither ``budget`` nor ``compression`` is given).
    """

    def __init__(self, buckets: int = 10000) -> None:
        if buckets < 1:
            raise ValueError(f"buckets must be >= 1, got {buckets}")
        self.buckets = buckets

    def plan(self, features, budget, dim_per_table, seed):
        width = dim_per_table * max(f.spec.num_chunks for f in features.values())
        b = max(1, budget // width) if budget is not None else self.buckets
        probes = {name: (0, UniversalHash(b, seed, (name, 0))(f.keys())[None, :]) for name, f in features.items()}
        return TablePlan([(b, width)], probes, dict.fromkeys(features, b))


class FeatureEmbedding(SideEncoder):
    """Embeds a side's features through lookup tables; the layout strategy chooses which table and which row.

    ``bind`` encodes the side's features once (:func:`recsys.data.features.encode_features`), asks the layout
    (:class:`TableLayout`) for its tables and for each feature's probes (a table and, per probe, the table row of
    every vocabulary token), and stores the row of every (probe, row value) as a buffer. ``forward`` gathers the
    requested rows' values, pools each feature's bag per probe (``embedding_bag``), concatenates probes, combines
    features and projects.

    The parameter budget is ``budget`` (embedding parameters of this side), or ``compression`` × the size of
    collision-free per-feature tables (:func:`full_size`), or the layout's own size argument. After ``bind``,
    ``rows`` holds, per feature, the table rows its probes spread over (:attr:`TablePlan.rows`).

    Args:
        layout: :class:`UnifiedTables`, :class:`PerFeatureTables` or :class:`SingleHashTable` (YAML:
            ``class_path``).
        features: :class:`~recsys.data.features.FeatureSpec` list (or dicts); None uses
            :func:`~recsys.data.features.default_features` with ``num_chunks`` chunks each.
        dim_per_table: d, the width of one chunk.
        num_chunks: chunks per feature, for default features and specs that leave ``num_chunks`` unset.
        budget: embedding parameters for this side (overrides the layout's size argument).
        compression: budget as a fraction of the collision-free size (used when ``budget`` is None).
        pooling: ``mean`` or ``sum`` over a multi-valued feature's values.
        combine: ``concat`` (widths add up) or ``sum`` (every feature must have the same width) over features.
        out_dim: output size; a projection maps the combined features to it unless ``project`` is False.
        hidden: hidden sizes of an MLP (ReLU) before the output projection; empty for a linear projection.
        project: False to output the combined features as they are (their width must equal ``out_dim``).
        seed: seed of the hash family (fixed per model so every process hashes alike).
        init_std: standard deviation of the tables' normal initialisation.

    Shapes:
        rows: [...] int64 -> [..., out_dim]
    """

    def __init__(self, layout: TableLayout = UnifiedTables(), features: Sequence[FeatureSpec | dict] | None = None,
                 dim_per_table: int = 16, num_chunks: int = 1, budget: int | None = None,
                 compression: float | None = None, pooling: Pooling = "mean", combine: Combine = "concat",
                 out_dim: int = 64, hidden: Sequence[int] = (), project: bool = True, seed: int = 0,
                 init_std: float = 0.05) -> None:
        super().__init__()
        check_strategy("layout", layout, TableLayout)
        check_choice("pooling", pooling, Pooling)
        check_choice("combine", combine, Combine)
        for name, value in (("out_dim", out_dim), ("dim_per_table", dim_per_table), ("num_chunks", num_chunks)):
            check_size(type(self).__name__, name, value)
        if (budget is not None and budget < 1) or (compression is not None and compression <= 0):
            raise UsageError("budget and compression must be positive")
        self.layout = layout
        self.specs = as_specs(features) if features is not None else None
        self.dim_per_table, self.num_chunks = dim_per_table, num_chunks
        self.budget, self.compression = budget, compression
        self.pooling, self.combine, self.out_dim = pooling, combine, out_dim
        self.hidden, self.project, self.seed, self.init_std = tuple(hidden), project, seed, init_std
        self.tables = nn.ModuleList()
        self.head: nn.Module | None = None
        self.features: dict[str, JaggedFeature] = {}
        self._probes: dict[str, tuple[int, np.ndarray]] = {}  # name -> (table index, token rows [P, V])
        self.rows: dict[str, int] = {}
        self._single: dict[str, bool] = {}
        self._encoded_for: tuple[int, str] | None = None

    # ------------------------------------------------------------------------------------------------ binding
    def encode(self, data, side: str) -> dict[str, JaggedFeature]:
        """The side's encoded features (computed once per prepared data and side)."""
        if self._encoded_for != (id(data), side):
            specs = self.specs
            if specs is None:
                specs = default_features(data, side, num_chunks=self.num_chunks)
            specs = [s if s.num_chunks else replace(s, num_chunks=self.num_chunks) for s in specs]
            self.features = encode_features(data, side, specs)
            self._encoded_for = (id(data), side)
        return self.features

    def target_budget(self) -> int | None:
        """Embedding parameters this side may use, from ``budget`` or ``compression`` (None: the layout's own)."""
        if self.budget is not None:
            return int(self.budget)
        if self.compression is not None:
            return max(1, int(self.compression * full_size(self.features, self.dim_per_table)))
        return None

    def bind(self, data, side: str) -> None:
        feats = self.encode(data, side)
        if not feats:
            raise ValueError(f"the {side} side has no features to embed")
        plan = self.layout.plan(feats, self.target_budget(), self.dim_per_table, self.seed)
        tables, probes, self.rows = plan.tables, plan.probes, plan.rows
        self.tables = nn.ModuleList()
        for rows, width in tables:
            emb = nn.Embedding(rows, width)
            nn.init.normal_(emb.weight, std=self.init_std)
            self.tables.append(emb)
        self._probes = probes
        widths = []
        for i, (name, f) in enumerate(feats.items()):
            t, token_rows = probes[name]
            self._single[name] = f.single
            # Per (probe, value) table rows, composed once: forward is a gather, never a hash.
            self.register_buffer(f"_lookup{i}", torch.from_numpy(token_rows[:, f.values].copy()), persistent=False)
            self.register_buffer(f"_offsets{i}", torch.from_numpy(f.offsets.copy()), persistent=False)
            widths.append(token_rows.shape[0] * tables[t][1])
        if self.combine == "sum" and len(set(widths)) > 1:
            raise ValueError(f"combine='sum' needs equal feature widths, got {dict(zip(feats, widths, strict=True))}")
        in_dim = sum(widths) if self.combine == "concat" else widths[0]
        self.feature_dim = in_dim
        if not self.project:
            if self.hidden or in_dim != self.out_dim:
                raise ValueError(f"project=False needs no hidden layers and a feature width equal to out_dim "
                                 f"({in_dim} != {self.out_dim})")
            self.head = nn.Identity()
        else:
            layers, prev = [], in_dim
            for h in self.hidden:
                layers += [nn.Linear(prev, h), nn.ReLU()]
                prev = h
            layers.append(nn.Linear(prev, self.out_dim, bias=False))
            self.head = nn.Sequential(*layers)

    # ------------------------------------------------------------------------------------------------ forward
    def _feature(self, i: int, name: str, rows: Tensor) -> Tensor:
        lookup: Tensor = getattr(self, f"_lookup{i}")
        table: nn.Embedding = self.tables[self._probes[name][0]]
        n_probes = lookup.shape[0]
        if self._single[name]:
            emb = table(lookup[:, rows])  # one value per row: a plain lookup
        else:
            offsets: Tensor = getattr(self, f"_offsets{i}")
            starts = offsets[rows]
            lens = offsets[rows + 1] - starts
            bag_starts = torch.cumsum(lens, 0) - lens
            total = int(lens.sum())
            # Gather every requested row's values without a Python loop (each row has at least one token).
            pos = (torch.arange(total, device=rows.device)
                   + torch.repeat_interleave(starts - bag_starts, lens, output_size=total))
            idx = lookup[:, pos]
            bags = (torch.arange(n_probes, device=rows.device)[:, None] * total + bag_starts[None, :]).reshape(-1)
            emb = F.embedding_bag(idx.reshape(-1), table.weight, bags, mode=self.pooling)
            emb = emb.view(n_probes, len(rows), -1)
        return emb.permute(1, 0, 2).reshape(len(rows), -1)  # chunks concatenated: [n, P·width]

    def embed_features(self, rows: Tensor) -> Tensor:
        """The combined feature embeddings before the projection.

        Shapes:
            rows: [N] -> [N, feature_dim]
        """
        parts = [self._feature(i, name, rows) for i, name in enumerate(self.features)]
        return torch.cat(parts, dim=-1) if self.combine == "concat" else torch.stack(parts).sum(0)

    def forward(self, rows: Tensor) -> Tensor:
        flat = rows.reshape(-1)
        if flat.numel() > _DEDUP_MIN_ROWS:
            uniq, inverse = torch.unique(flat, return_inverse=True)
            out = self.head(self.embed_features(uniq))[inverse]
        else:
            out = self.head(self.embed_features(flat))
        return out.view(*rows.shape, -1)

    def regularization(self, rows: Tensor) -> Tensor:
        """Squared L2 norm of the pooled feature embeddings of ``rows`` (the table rows they touch)."""
        return self.embed_features(rows.reshape(-1)).pow(2).sum()

    # ------------------------------------------------------------------------------------------------ inspection
    @property
    def embedding_params(self) -> int:
        """Parameters in the lookup tables (the budget; the projection is the same for every layout)."""
        return sum(t.weight.numel() for t in self.tables)

    def collision_stats(self) -> dict[str, dict[str, float]]:
        """Per feature, how many distinct values share table rows with other values.

        A value's probe collides when another (feature, probe, value) of any feature lands on the same row of the
        same table. Returns per feature ``values`` (distinct tokens), ``collided`` (share of values colliding, mean
        over probes: the share that shares a bucket with another value), ``all_probes`` (share colliding in every
        probe) and ``identical`` (share whose whole probe tuple equals another value's of the same feature, so its
        embedding cannot be told apart).
        """
        occupancy = [np.zeros(t.num_embeddings, dtype=np.int64) for t in self.tables]
        for t, token_rows in self._probes.values():
            np.add.at(occupancy[t], token_rows.ravel(), 1)
        out = {}
        for name, (t, token_rows) in self._probes.items():
            hit = occupancy[t][token_rows] > 1  # [P, V]
            _, inv, counts = np.unique(token_rows.T, axis=0, return_inverse=True, return_counts=True)
            out[name] = {"values": float(token_rows.shape[1]), "collided": float(hit.mean()),
                         "all_probes": float(hit.all(axis=0).mean()),
                         "identical": float((counts[inv.ravel()] > 1).mean())}
        return out

    def collision_rates(self) -> dict[str, float]:
        """Per feature, the share of distinct values that share a bucket with another value (mean over probes)."""
        return {k: v["collided"] for k, v in self.collision_stats().items()}


class FeatureTwoTower(TwoTower):
    """A two-tower retrieval model over features: user features + user ID, item features + item ID.

    Both towers use the same layout (:class:`UnifiedTables`, :class:`PerFeatureTables` or :class:`SingleHashTable`)
    and embed into ``out_dim``; scores are inner products (train with sampled softmax, ``recsys.losses.SoftmaxLoss``).
    A user without training history still has features (its ID's buckets, an activity bucket of zero, its
    side-table row), so it gets a query embedding: user-side cold start.

    ``budget`` (embedding parameters of both towers) is split between the towers in proportion to their
    collision-free sizes, i.e. both are compressed by the same factor; ``compression`` sets that factor directly.

    Args:
        layout: the tables of each tower (:class:`TableLayout`; YAML: ``class_path``), with the layout's own size
            arguments: ``UnifiedTables(num_tables, buckets_per_table)``, ``PerFeatureTables(allocation)`` or
            ``SingleHashTable(buckets)``; a budget or compression overrides their sizes.
        user_features: user-side specs (None: :func:`~recsys.data.features.default_features`).
        item_features: item-side specs (None: defaults).
        out_dim: embedding size of both towers.
        dim_per_table: d, the width of one chunk.
        num_chunks: chunks per feature (default features and specs without ``num_chunks``).
        budget: embedding parameters of both towers together.
        compression: the budget as a fraction of collision-free per-feature tables.
        pooling: ``mean`` or ``sum`` over multi-valued features.
        combine: ``concat`` or ``sum`` over features.
        hidden: MLP hidden sizes before each tower's output projection.
        seed: hash family seed.
        init_std: table initialisation standard deviation.

    Shapes:
        batch.users: [B]; batch.items: [B, C] -> (query [B, out_dim], items [B, C, out_dim])
    """

    def __init__(self, layout: TableLayout = UnifiedTables(num_tables=2),
                 user_features: list[FeatureSpec] | None = None, item_features: list[FeatureSpec] | None = None,
                 out_dim: int = 64, dim_per_table: int = 16, num_chunks: int = 2, budget: int | None = None,
                 compression: float | None = None, pooling: Pooling = "mean", combine: Combine = "concat",
                 hidden: Sequence[int] = (), seed: int = 0, init_std: float = 0.05) -> None:
        for name, value in (("out_dim", out_dim), ("dim_per_table", dim_per_table), ("num_chunks", num_chunks)):
            check_size(type(self).__name__, name, value)
        common = dict(dim_per_table=dim_per_table, num_chunks=num_chunks, compression=compression, pooling=pooling,
                      combine=combine, out_dim=out_dim, hidden=hidden, seed=seed, init_std=init_std)
        super().__init__(*(FeatureEmbedding(layout, features=f, **common) for f in (user_features, item_features)))
        self.layout, self.budget = layout, budget

    def bind(self, data) -> None:
        if self.budget is not None:
            # Same compression for both towers: each side's share follows its collision-free size.
            sizes = []
            for tower, side in ((self.user, "user"), (self.item, "item")):
                sizes.append(full_size(tower.encode(data, side), tower.dim_per_table))
            for tower in (self.user, self.item):
                tower.compression = self.budget / sum(sizes)
            self.user.bind(data, "user")
            self.item.bind(data, "item")
            self._n_items = data.n_items
        else:
            super().bind(data)

    @property
    def embedding_params(self) -> int:
        return self.user.embedding_params + self.item.embedding_params

    def collision_stats(self) -> dict[str, dict[str, dict[str, float]]]:
        """``{"user": ..., "item": ...}`` of :meth:`FeatureEmbedding.collision_stats`."""
        return {"user": self.user.collision_stats(), "item": self.item.collision_stats()}

