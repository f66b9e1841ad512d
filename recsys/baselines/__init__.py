"""Classic baselines fitted outside Lightning: implicit's ALS / BPR / item-kNN, EASE and popularity."""

from recsys.baselines.base import Baseline

__all__ = ["Baseline"]
