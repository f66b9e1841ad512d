"""Evaluation metrics: top-k ranking accuracy, beyond-accuracy measures and paired significance tests."""

from recsys.metrics.beyond import item_coverage, novelty, popularity_bias
from recsys.metrics.ranking import METRIC_NAMES, hit_matrix, per_user_metrics, ranking_metrics
from recsys.metrics.significance import align_per_user, paired_test

coverage = item_coverage

__all__ = [
    "METRIC_NAMES",
    "align_per_user",
    "coverage",
    "hit_matrix",
    "item_coverage",
    "novelty",
    "paired_test",
    "per_user_metrics",
    "popularity_bias",
    "ranking_metrics",
]
