"""Training-time strategies that the one LightningModule (``recsys.model.RecModel``) composes."""

from recsys.training.negatives import FullCatalogue, InBatchNegatives, NegativeStrategy, SampledNegatives, Step

__all__ = ["FullCatalogue", "InBatchNegatives", "NegativeStrategy", "SampledNegatives", "Step"]
