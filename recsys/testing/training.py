"""Train on tiny prepared data through the real path: ``RecModel`` and a Lightning ``Trainer``."""

from __future__ import annotations

from recsys.data.datamodule import Loader, RecDataModule
from recsys.data.prepared import PreparedData


class PreparedDataModule(RecDataModule):
    """A ``RecDataModule`` over data that is already prepared (tests' fixtures), with the same loaders.

    Args:
        data: the prepared data.
        loader: batching and negative sampling.
        seed: the sampling seed.
    """

    def __init__(self, data: PreparedData, loader: Loader = Loader(), seed: int = 0) -> None:
        super().__init__(loader=loader)
        self.data, self.seed = data, seed

    def prepare(self) -> PreparedData:
        return self.data


def fit_tiny(model, data: PreparedData, loader: Loader = Loader(), max_epochs: int = 1, seed: int = 0,
             validate: bool = False, callbacks: list | None = None):
    """Fit ``model`` (a ``RecModel``) on ``data`` with a quiet single-process CPU ``Trainer``; returns the trainer.

    Args:
        model: the model to train (its encoder is bound by ``configure_model``, as in ``recsys fit``).
        data: tiny prepared data.
        loader: batching and negative sampling.
        max_epochs: epochs to train.
        seed: the sampling seed.
        validate: run full-ranking validation after each epoch (off: the known-answer checks rank afterwards).
        callbacks: extra Lightning callbacks (e.g. a benchmark's epoch clock).
    """
    import lightning as L

    trainer = L.Trainer(max_epochs=max_epochs, accelerator="cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, limit_val_batches=1.0 if validate else 0, callbacks=callbacks or [])
    trainer.fit(model, datamodule=PreparedDataModule(data, loader, seed))
    model.eval()
    return trainer
