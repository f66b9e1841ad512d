"""What a training example is: the builder of the training dataset that ``RecDataModule`` serves.

``data.loader.examples`` takes one of these (YAML: ``class_path``), so the choice is a typed object that builds its
own dataset, not a string checked in several places.
"""

from __future__ import annotations

from torch.utils.data import Dataset

__all__ = ["ExampleBuilder", "Pairs", "UserUniform", "Prefixes", "Sequences"]


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

    Args:
        per_user: one random prefix per user per epoch (Recformer's fine-tuning) instead of every prefix.
    """

    def __init__(self, per_user: bool = False) -> None:
        self.per_user = per_user

    def dataset(self, data, loader, seed: int, history_len: int) -> Dataset:
        from recsys.data.sequences import PrefixBatches

        return PrefixBatches(data, loader, seed, history_len, per_user=self.per_user)

    def __repr__(self) -> str:
        return f"Prefixes(per_user={self.per_user})"


class Sequences(ExampleBuilder):
    """One window per user per epoch, with the next item of every position as a target (SASRec's training).

    Needs ``RecModel(negatives=FullCatalogue())`` and an encoder that declares ``EncodesPositions``; the model checks
    both when it binds.
    """

    def dataset(self, data, loader, seed: int, history_len: int) -> Dataset:
        from recsys.data.sequences import SequenceBatches

        return SequenceBatches(data, loader, seed, history_len)
