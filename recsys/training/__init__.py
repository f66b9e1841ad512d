"""Training-time strategies that the one LightningModule (``recsys.model.RecModel``) composes."""

from recsys.training.hard_negatives import HardNegatives
from recsys.training.layer_sampling import SampledLayer
from recsys.training.negatives import FullCatalogue, InBatchNegatives, NegativeStrategy, SampledNegatives, Step
from recsys.training.optim import RowSparseRMSprop
from recsys.training.schedules import LRSchedule, WarmupLinear

__all__ = ["FullCatalogue", "HardNegatives", "InBatchNegatives", "LRSchedule", "NegativeStrategy",
           "RowSparseRMSprop", "SampledLayer", "SampledNegatives", "Step", "WarmupLinear"]
