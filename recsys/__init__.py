"""recsys: a composable recommender-systems framework (encoders, scorers, losses, one LightningModule)."""

__version__ = "0.1.0"
