"""Classic baselines fitted outside Lightning: implicit's ALS / BPR / item-kNN, EASE, GF-CF and popularity.

Importing this package is cheap: ``implicit`` is imported only when a model is fitted.
"""

from recsys.baselines.base import Baseline
from recsys.baselines.ease import EASE
from recsys.baselines.gfcf import GFCF
from recsys.baselines.implicit_models import ALS, BPR, ItemKNN
from recsys.baselines.popularity import MostPopular
from recsys.baselines.text_mean import TextHistoryMean

__all__ = ["ALS", "BPR", "EASE", "GFCF", "Baseline", "ItemKNN", "MostPopular", "TextHistoryMean"]
