"""What a training example is: the builder of the training dataset that ``RecDataModule`` serves.

``data.loader.examples`` takes one of these (YAML: ``class_path``), so the choice is a typed object that builds its
own dataset, not a string checked in several places.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from torch.utils.data import Dataset

from recsys.data.sequences import PrefixBatches
from recsys.errors import UsageError

__all__ = ["ExampleBuilder", "Pairs", "UserUniform", "Prefixes", "SecondHalfPrefixBatches", "Sequences"]


class ExampleBuilder:
    """Builds the training dataset (one index per batch) for a prepared log."""

    def dataset(self, data, loader, seed: int, history_len: int) -> Dataset:
        """The training batches.

        Args:
            data: the ``PreparedData``.
            loader: the ``Loader`` (batch size, negatives).
            seed: the sampling seed.
            history_len: history items per query (0: none).
        """
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Pairs(ExampleBuilder):
    """(user, positive, sampled negatives) per training interaction; the history is the user's training history."""

    def dataset(self, data, loader, seed: int, history_len: int) -> Dataset:
        from recsys.data.datamodule import TrainBatches

        return TrainBatches(data, loader, seed, history_len)


class UserUniform(ExampleBuilder):
    """(user, positive, sampled negatives) drawn user-first: uniform users, then a uniform item of theirs.

    The official NGCF (Wang et al., SIGIR 2019) and LightGCN (He et al., SIGIR 2020) training loops sample this
    way; :class:`Pairs` takes every training interaction once per epoch instead, which weights active users more.
    An epoch has as many examples as training interactions.
    """

    def dataset(self, data, loader, seed: int, history_len: int) -> Dataset:
        from recsys.data.datamodule import UserUniformBatches

        return UserUniformBatches(data, loader, seed, history_len)


class Prefixes(ExampleBuilder):
    """Every prefix of each user's chronological training sequence predicts its next item (sequential models).

    A user's training sequence ``s_0 .. s_{n-1}`` gives the examples (``s_0 .. s_{t-1}`` -> ``s_t``) for
    ``t = 1 .. n - 1`` (``t = 0`` has an empty history and is never an example).

    Args:
        per_user: one random prefix per user per epoch (Recformer) instead of every prefix.
        target_from: which target positions ``t`` are drawn from. ``"any"``: every ``t >= 1``, as Recformer's
            fine-tuning (AaronHeee/RecFormer ``collator.py`` ``FinetuneDataCollatorWithPadding.sample_train_data``:
            ``randint(0, n - 1)``). ``"second_half"``: ``t`` in ``[max(1, (n - 1) // 2), n - 1]``, as Recformer's
            pre-training pairs (``collator.py`` ``PretrainDataCollatorWithPadding.sample_pairs``:
            ``randint((n - 1) // 2, n - 1)``); e.g. ``n = 6`` draws ``t`` from {2, 3, 4, 5}. With ``per_user`` the
            one draw is uniform over those positions, seeded by (seed, epoch) like the order.
    """

    def __init__(self, per_user: bool = False, target_from: Literal["any", "second_half"] = "any") -> None:
        if target_from not in ("any", "second_half"):
            raise UsageError(f"--data.loader.examples.init_args.target_from must be 'any' or 'second_half', got "
                             f"{target_from!r}")
        self.per_user, self.target_from = per_user, target_from

    def dataset(self, data, loader, seed: int, history_len: int) -> Dataset:
        if self.target_from == "second_half":
            return SecondHalfPrefixBatches(data, loader, seed, history_len, per_user=self.per_user)
        return PrefixBatches(data, loader, seed, history_len, per_user=self.per_user)

    def __repr__(self) -> str:
        return f"Prefixes(per_user={self.per_user}, target_from={self.target_from!r})"


def second_half_rows(examples) -> tuple[np.ndarray, np.ndarray]:
    """Each user's second-half examples among ``PrefixExamples``' rows (see ``Prefixes.target_from``).

    Args:
        examples: a ``recsys.data.sequences.PrefixExamples`` (a user's rows are contiguous, in order ``t = 1..``).

    Returns:
        (first, count) per user with examples: their second-half targets are rows ``first .. first + count - 1``.

    Shapes:
        -> first, count: [n users with examples] int64
    """
    counts = np.bincount(examples.users, minlength=len(examples.indptr) - 1)
    row0 = np.concatenate([[0], np.cumsum(counts)[:-1]])
    has = np.flatnonzero(counts > 0)
    n = counts[has] + 1  # the training sequence's length: every position but 0 is an example
    start = np.maximum(1, (n - 1) // 2)  # the official (n - 1) // 2; position 0 (no history) is no example here
    return (row0[has] + start - 1).astype(np.int64), (n - start).astype(np.int64)


class SecondHalfPrefixBatches(PrefixBatches):
    """``PrefixBatches`` whose targets come from each user's second half only (``Prefixes(target_from=
    "second_half")``); order and draws depend only on (seed, epoch, batch index), as in ``PrefixBatches``.

    Args:
        data: ``PreparedData``.
        loader: ``Loader`` (batch size, negatives).
        seed: base seed.
        history_len: the prefix length L (> 0).
        per_user: one second-half target per user per epoch (Recformer's ``sample_pairs``) instead of all of them.

    Shapes:
        item: Batch(users [B], items [B, 1 + num_negatives], history [B, L])
    """

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        rng = np.random.default_rng([self.seed, epoch])
        first, count = second_half_rows(self.examples)
        if self.per_user:
            idx = first + (rng.random(len(first)) * count).astype(np.int64)
        else:
            # Every row first .. first + count - 1 of each user: the k-th kept row overall is its user's
            # first + (k - rows kept before that user).
            before = np.cumsum(count) - count
            idx = np.repeat(first - before, count) + np.arange(int(count.sum()), dtype=np.int64)
        self.order = idx[rng.permutation(len(idx))]


class Sequences(ExampleBuilder):
    """One window per user per epoch, with the next item of every position as a target (SASRec's training).

    Needs ``RecModel(negatives=FullCatalogue())`` and an encoder that declares ``EncodesPositions``; the model checks
    both when it binds.
    """

    def dataset(self, data, loader, seed: int, history_len: int) -> Dataset:
        from recsys.data.sequences import SequenceBatches

        return SequenceBatches(data, loader, seed, history_len)
