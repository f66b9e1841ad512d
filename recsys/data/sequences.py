"""Sequence training examples: every prefix of a user's chronological training sequence predicts the next item.

Sequential recommenders (SASRec, Kang & McAuley, ICDM 2018; Recformer, Li et al., KDD 2023) learn "given items
``s_1 .. s_{t-1}``, the next item is ``s_t``". The pair batches of :class:`recsys.data.datamodule.TrainBatches` give
every positive the user's *whole* training history, which contains the positive itself and later items; the
examples here are prefix-correct: the history of the example at position ``t`` holds only items before ``t``.

Order within a user is (timestamp, log position), the order of :meth:`PreparedData.history`, so the last training
prefix of a user equals the history the evaluator gives that user's validation query.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import Dataset

from recsys.data.batch import Batch
from recsys.data.sampling import NegativeSampler
from recsys.data.splits import TRAIN

__all__ = ["PrefixExamples", "PrefixBatches", "SequenceBatches"]


class PrefixExamples:
    """All (history, target) examples of the training sequences, by sliding prefixes.

    For every training interaction at position ``t > 0`` of its user's chronological training sequence, the target
    is item ``t`` and the history is items ``< t`` (the most recent ``max_len``, right-aligned, left-padded -1).

    Args:
        data: ``PreparedData``; only ``labels == TRAIN`` interactions are used.

    Shapes:
        users, targets: [N] with N = train interactions - users with any
    """

    def __init__(self, data) -> None:
        mask = data.labels == TRAIN
        u, i = data.users[mask], data.items[mask]
        t = data.timestamps[mask] if data.timestamps is not None else np.arange(len(u))
        order = np.lexsort((np.arange(len(u)), t, u))
        self.seq = i[order].astype(np.int64)
        su = u[order].astype(np.int64)
        self.indptr = np.concatenate([[0], np.cumsum(np.bincount(su, minlength=data.n_users))]).astype(np.int64)
        starts = self.indptr[su]
        keep = np.arange(len(su)) > starts  # position 0 has an empty history: no example
        self.ends = np.flatnonzero(keep)  # where each target sits in ``seq``; its history is seq[start:end]
        self.starts = starts[keep]
        self.users = su[keep]
        self.targets = self.seq[keep]

    def __len__(self) -> int:
        return len(self.targets)

    def histories(self, idx: np.ndarray, max_len: int) -> np.ndarray:
        """The prefixes of examples ``idx``: most recent last, right-aligned, left-padded with -1.

        Shapes:
            idx: [B] -> [B, max_len] int64
        """
        idx = np.asarray(idx)
        return self._window(self.ends[idx], self.starts[idx], max_len)

    def next_items(self, idx: np.ndarray, max_len: int) -> np.ndarray:
        """The item following each position of :meth:`histories` (its last column is the example's target).

        Shapes:
            idx: [B] -> [B, max_len] int64, -1 where the history is padding
        """
        idx = np.asarray(idx)
        return self._window(self.ends[idx] + 1, self.starts[idx] + 1, max_len)

    def _window(self, ends: np.ndarray, starts: np.ndarray, max_len: int) -> np.ndarray:
        """``seq[max(start, end - max_len):end]`` per row, right-aligned, left-padded with -1."""
        out = np.full((len(ends), max_len), -1, dtype=np.int64)
        lens = np.minimum(ends - starts, max_len)
        cols = np.arange(max_len)
        valid = cols[None, :] >= (max_len - lens)[:, None]
        src = ends[:, None] - (max_len - cols)[None, :]
        out[valid] = self.seq[src[valid]]
        return out

    def per_user_sample(self, rng: np.random.Generator) -> np.ndarray:
        """One example index per user with at least one example, uniform over that user's prefixes.

        Recformer's fine-tuning draws one random target position per user sequence each epoch.

        Shapes:
            -> [n users with examples] int64
        """
        counts = np.bincount(self.users, minlength=len(self.indptr) - 1)
        first = np.concatenate([[0], np.cumsum(counts)[:-1]])
        has = np.flatnonzero(counts > 0)
        return first[has] + (rng.random(len(has)) * counts[has]).astype(np.int64)


class PrefixBatches(Dataset):
    """Training batches of prefix examples, one dataset index per batch (see :class:`PrefixExamples`).

    Each batch is ``Batch(users, items=[target, negatives...], history=prefix)``. With ``num_negatives = 0`` the
    items are the targets alone (for in-batch or full-catalogue softmax, see ``RecModel(negatives=...)``).
    Negatives are drawn as in :class:`TrainBatches`, excluding the user's training items. Order and negatives depend
    only on (seed, epoch, batch index).

    Args:
        data: ``PreparedData``.
        loader: ``Loader`` (batch size, negatives).
        seed: base seed.
        history_len: the prefix length L (> 0).
        per_user: one random prefix per user per epoch (Recformer) instead of every prefix (SASRec / RecBole).

    Shapes:
        item: Batch(users [B], items [B, 1 + num_negatives], history [B, L])
    """

    def __init__(self, data, loader, seed: int, history_len: int, per_user: bool = False) -> None:
        if history_len <= 0:
            raise ValueError("prefix examples need a history length > 0 (the encoder's history_len or "
                             "data.loader.history_len)")
        self.examples = PrefixExamples(data)
        if len(self.examples) == 0:
            raise ValueError("no prefix examples: every user has fewer than two training interactions")
        self.data, self.loader, self.seed, self.history_len, self.per_user = data, loader, seed, history_len, per_user
        self.sampler = NegativeSampler.for_data(data, loader.negatives) if loader.num_negatives else None
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        rng = np.random.default_rng([self.seed, epoch])
        if self.per_user:
            idx = self.examples.per_user_sample(rng)
            self.order = idx[rng.permutation(len(idx))]
        else:
            self.order = rng.permutation(len(self.examples))

    def __len__(self) -> int:
        return math.ceil(len(self.order) / self.loader.batch_size)

    def __getitem__(self, b: int) -> Batch:
        bs = self.loader.batch_size
        idx = self.order[b * bs:(b + 1) * bs]
        users = self.examples.users[idx]
        items = self.examples.targets[idx, None]
        if self.sampler is not None:
            rng = np.random.default_rng([self.seed, self.epoch, b, 1])
            items = np.concatenate([items, self.sampler.sample(users, self.loader.num_negatives, rng)], axis=1)
        hist = self.examples.histories(idx, self.history_len)
        return Batch(torch.from_numpy(users), torch.from_numpy(items), torch.from_numpy(hist))


class SequenceBatches(Dataset):
    """One window of each user's training sequence per epoch, with the next item of every position as its target.

    The original SASRec training (Kang & McAuley, 2018): a causal model predicts every position of a window in one
    forward pass, so a sequence of L items gives L training signals for the cost of one query. The window of a user
    ends at a target drawn uniformly from their prefixes each epoch (a random crop; the original code always takes
    the last ``L`` items), so long sequences are covered over the epochs.

    Args:
        data: ``PreparedData``.
        loader: ``Loader`` (batch size; negatives are not sampled: train with ``RecModel(negatives=FullCatalogue())``).
        seed: base seed.
        history_len: the window length L (> 0).

    Shapes:
        item: Batch(users [B], items [B, L] next-item targets (-1 on padding), history [B, L])
    """

    def __init__(self, data, loader, seed: int, history_len: int) -> None:
        if history_len <= 0:
            raise ValueError("sequence examples need a history length > 0 (the encoder's history_len or "
                             "data.loader.history_len)")
        self.examples = PrefixExamples(data)
        if len(self.examples) == 0:
            raise ValueError("no sequence examples: every user has fewer than two training interactions")
        self.loader, self.seed, self.history_len = loader, seed, history_len
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        rng = np.random.default_rng([self.seed, epoch])
        idx = self.examples.per_user_sample(rng)
        self.order = idx[rng.permutation(len(idx))]

    def __len__(self) -> int:
        return math.ceil(len(self.order) / self.loader.batch_size)

    def __getitem__(self, b: int) -> Batch:
        bs = self.loader.batch_size
        idx = self.order[b * bs:(b + 1) * bs]
        hist = self.examples.histories(idx, self.history_len)
        targets = self.examples.next_items(idx, self.history_len)
        return Batch(torch.from_numpy(self.examples.users[idx]), torch.from_numpy(targets), torch.from_numpy(hist))
