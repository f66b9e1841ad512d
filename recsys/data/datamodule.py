"""The Lightning DataModule: loads a dataset, prepares it once, and serves training and evaluation batches."""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass
from typing import Literal

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from recsys.data.batch import Batch
from recsys.data.examples import ExampleBuilder, Pairs
from recsys.data.prepared import PreparedData, Preprocess, SplitSpec, prepare
from recsys.data.sampling import NegativeSampler
from recsys.data.splits import TRAIN
from recsys.errors import UsageError

#: ``--data.loader.negatives``: how sampled negatives are drawn.
NegativeSampling = Literal["uniform", "popularity"]


@dataclass
class Loader:
    """Batching and negative sampling.

    Args:
        batch_size: training interactions per batch.
        num_negatives: sampled negatives per positive.
        negatives: ``uniform`` or ``popularity`` sampling, always excluding the user's training items.
        eval_batch_size: users per scoring chunk of validation.
        history_len: history items per query for encoders that read histories (0 = the encoder's own length).
        examples: what a training example is (:mod:`recsys.data.examples`): ``Pairs`` (user, positive,
            negatives, one example per training interaction), ``UserUniform`` (uniform users first, the official
            NGCF/LightGCN sampler), ``Prefixes`` (every prefix of a user's chronological training sequence predicts
            its next item; ``per_user: true``: one random prefix per user per epoch, as Recformer's fine-tuning) or
            ``Sequences`` (SASRec's all-positions training); None means ``Pairs``.
    """

    batch_size: int = 2048
    num_negatives: int = 1
    negatives: NegativeSampling = "uniform"
    eval_batch_size: int = 2048
    history_len: int = 0
    # None, not a Pairs() default: a default instance would not serialise into the run's config.yaml.
    examples: ExampleBuilder | None = None

    def __post_init__(self) -> None:
        # Refused when the options are read (exit status 2), before any data is loaded or a run directory made.
        for name, low in (("batch_size", 1), ("eval_batch_size", 1), ("num_negatives", 0), ("history_len", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise UsageError(f"--data.loader.{name} must be an integer >= {low}, got {value!r}")
        if self.negatives not in typing.get_args(NegativeSampling):
            raise UsageError(f"--data.loader.negatives must be one of {', '.join(typing.get_args(NegativeSampling))}"
                             f", got {self.negatives!r}")

    def example_builder(self) -> ExampleBuilder:
        """``examples``, with None meaning ``Pairs``."""
        return self.examples if self.examples is not None else Pairs()


class TrainBatches(Dataset):
    """Training batches of (user, positive, negatives), one dataset index per batch.

    Whole batches are built with vectorised indexing and sampling, so there is no per-sample collation. The
    order and the negatives depend only on (seed, epoch, batch index): runs are reproducible and DDP ranks that
    receive different batch indices never draw the same batch.

    Shapes:
        item: Batch(users [B], items [B, 1 + num_negatives], history [B, L] or None)
    """

    def __init__(self, data: PreparedData, loader: Loader, seed: int, history_len: int = 0) -> None:
        mask = data.labels == TRAIN
        self.users, self.items = data.users[mask], data.items[mask]
        self.data, self.loader, self.seed, self.history_len = data, loader, seed, history_len
        self.sampler = NegativeSampler.for_data(data, loader.negatives)
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.users))

    def __len__(self) -> int:
        return math.ceil(len(self.users) / self.loader.batch_size)

    def __getitem__(self, b: int) -> Batch:
        bs = self.loader.batch_size
        idx = self.perm[b * bs:(b + 1) * bs]
        users = self.users[idx]
        rng = np.random.default_rng([self.seed, self.epoch, b, 1])
        negs = self.sampler.sample(users, self.loader.num_negatives, rng)
        items = np.concatenate([self.items[idx, None], negs], axis=1)
        hist = None
        if self.history_len:
            hist = torch.from_numpy(self.data.history(users, "train", self.history_len))
        return Batch(torch.from_numpy(users), torch.from_numpy(items), hist)


class UserUniformBatches(Dataset):
    """Training batches drawn user-first: a uniform user, then one of the user's training items, then negatives.

    The sampler of the official NGCF and LightGCN codes (``UniformSample_original``; NGCF's ``rd.sample`` of
    existing users): every user with training items is equally likely, whatever their activity, where
    :class:`TrainBatches` (one example per training interaction) weights users by their number of interactions.
    An epoch draws as many examples as there are training interactions, ``ceil(n_train / batch_size)`` batches.
    Draws depend only on (seed, epoch, batch index), as in :class:`TrainBatches`.

    Shapes:
        item: Batch(users [B], items [B, 1 + num_negatives], history [B, L] or None)
    """

    def __init__(self, data: PreparedData, loader: Loader, seed: int, history_len: int = 0) -> None:
        train = data.train
        self.indptr, self.indices = train.indptr.astype(np.int64), train.indices.astype(np.int64)
        self.active = np.flatnonzero(np.diff(self.indptr) > 0)
        if len(self.active) == 0:
            raise ValueError("user-uniform sampling needs at least one user with training interactions")
        self.n_train = int(train.nnz)
        self.data, self.loader, self.seed, self.history_len = data, loader, seed, history_len
        self.sampler = NegativeSampler.for_data(data, loader.negatives)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(self.n_train / self.loader.batch_size)

    def __getitem__(self, b: int) -> Batch:
        bs = self.loader.batch_size
        size = min(bs, self.n_train - b * bs)
        rng = np.random.default_rng([self.seed, self.epoch, b, 2])
        users = self.active[rng.integers(0, len(self.active), size)]
        start, count = self.indptr[users], self.indptr[users + 1] - self.indptr[users]
        pos = self.indices[start + (rng.random(size) * count).astype(np.int64)]
        negs = self.sampler.sample(users, self.loader.num_negatives, rng)
        items = np.concatenate([pos[:, None], negs], axis=1)
        hist = None
        if self.history_len:
            hist = torch.from_numpy(self.data.history(users, "train", self.history_len))
        return Batch(torch.from_numpy(users), torch.from_numpy(items), hist)


class RecDataModule(L.LightningDataModule):
    """Loads a dataset by name, prepares it once, and exposes the sizes and matrices models bind to.

    Args:
        dataset: a registered name (``synthetic``, ``ml-latest-small``, ``ml-100k``, ``ml-1m``, ``ml-20m``,
            ``ml-25m``, ``generic``, ``benchmark-txt``).
        path: where the dataset's files are (MovieLens without a path downloads into a cache).
        options: extra loader options (e.g. generator sizes, or column names for ``generic``).
        preprocess: filtering before the split.
        split: the split protocol.
        loader: batching and negative sampling.
    """

    def __init__(self, dataset: str = "synthetic", path: str | None = None, options: dict | None = None,
                 preprocess: Preprocess = Preprocess(), split: SplitSpec = SplitSpec(),
                 loader: Loader = Loader()) -> None:
        super().__init__()
        self.dataset, self.path, self.options = dataset, path, dict(options or {})
        self.preprocess, self.split, self.loader = preprocess, split, loader
        self.data: PreparedData | None = None
        self.raw = None  # a dataset object given with use_dataset
        self.seed = split.seed
        self.history_len = loader.history_len

    def use_dataset(self, raw) -> None:
        """Prepare this dataset object (a :class:`~recsys.datasets.base.RawDataset`) instead of loading by name.

        The Python API passes DataFrames and Arrow tables this way; the preprocessing and the split still apply.
        """
        self.raw, self.data = raw, None
        self.dataset, self.path = raw.name, None

    def prepare(self) -> PreparedData:
        """Load and prepare the data (idempotent); usable without a Trainer."""
        if self.data is None:
            raw = self.raw
            if raw is None:
                from recsys.datasets import load_dataset

                raw = load_dataset(self.dataset, self.path, **self.options)
            self.data = prepare(raw, self.preprocess, self.split)
        return self.data

    def setup(self, stage: str | None = None) -> None:
        self.prepare()

    def train_dataloader(self) -> DataLoader:
        self.train_set = self.loader.example_builder().dataset(self.prepare(), self.loader, self.seed, self.history_len)
        return DataLoader(self.train_set, batch_size=None, shuffle=False, collate_fn=_identity)

    def val_dataloader(self) -> DataLoader:
        # One placeholder step per validation pass: RecModel ranks every validation user at the pass's end, through
        # the same evaluator as `recsys evaluate`, so per-batch query batches would be built for nothing.
        return DataLoader([0], batch_size=None, shuffle=False)


def _identity(x):
    return x
