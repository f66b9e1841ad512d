"""RecModel: the one LightningModule. It composes an encoder, a scorer, a loss and a negatives strategy."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import replace

import lightning as L
import torch
from torch import Tensor

from recsys.capabilities import EpochAware, NestedLoss
from recsys.data.batch import Batch
from recsys.encoders.base import TwoSidedEncoder
from recsys.errors import UsageError
from recsys.losses import BPRLoss, Loss, scale_gradient
from recsys.recommender import EmbeddingModel, LightningFit
from recsys.scorers import DotScorer, Scorer
from recsys.training.negatives import NegativeStrategy, SampledNegatives
from recsys.training.schedules import LRSchedule

OptimizerFactory = Callable[[Iterable], torch.optim.Optimizer]


class RecModel(L.LightningModule, EmbeddingModel):
    """Trains any encoder with any scorer, loss and negatives strategy, and validates by full ranking.

    Training: the ``negatives`` strategy embeds the batch through the encoder (one
    :class:`~recsys.capabilities.StepOutput`: embeddings, penalty, extra loss terms) and scores the positive against
    its negatives; ``loss`` compares them; ``reg_weight`` × the step's L2 penalty divided by the batch size (the
    LightGCN convention) and every extra loss term of the step (Recformer's MLM, a code or compatibility loss,
    SESA's sparsity; each logged as ``train/<name>``) are added.

    A nested loss (:class:`~recsys.capabilities.NestedLoss`, e.g. ``MatryoshkaLoss``) gets the step's embeddings
    computed once and a function scoring them at any prefix size, under any negatives strategy. An encoder that
    declares :class:`~recsys.capabilities.EpochAware` is told when each epoch starts.

    Validation: embeddings are computed once per pass, every item is ranked for each validation user (training
    items excluded) by the same evaluator as ``recsys evaluate`` (:func:`recsys.metrics.evaluate.evaluate`), and
    its metrics are logged as ``valid/<metric>@<k>``. Data without a validation part (a train/test benchmark such
    as the NGCF/LightGCN Gowalla files) is monitored on test instead, as the papers' training loops do, logged as
    ``test_monitor/<metric>@<k>``: a learning curve, never a model-selection signal (``recsys fit`` then trains a
    fixed number of epochs).

    Args:
        encoder: the two-sided encoder (MF, a graph encoder, a text encoder, ...).
        scorer: how queries and items are scored (dot by default).
        loss: the training loss (BPR by default).
        optimizer: a factory ``params -> Optimizer`` (YAML: ``class_path: torch.optim.Adam``); Adam(lr=1e-3) if None.
        reg_weight: weight of the encoder's L2 regulariser.
        eval_ks: cut-offs for validation metrics.
        negatives: what the positive competes with (:mod:`recsys.training.negatives`; sampled when None).
        lr_schedule: the learning-rate schedule, stepped once per optimizer step (YAML: ``class_path:
            recsys.training.schedules.WarmupLinear``); its total steps are the trainer's
            ``estimated_stepping_batches``. A constant lr if None.
    """

    def __init__(self, encoder: TwoSidedEncoder, scorer: Scorer | None = None, loss: Loss | None = None,
                 optimizer: OptimizerFactory | None = None, reg_weight: float = 0.0,
                 eval_ks: tuple[int, ...] = (10, 20), negatives: NegativeStrategy | None = None,
                 lr_schedule: LRSchedule | None = None) -> None:
        super().__init__()
        ks = list(eval_ks) if isinstance(eval_ks, (list, tuple)) else [eval_ks]
        if not ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks):
            raise UsageError(f"RecModel eval_ks must be cut-offs >= 1, got {list(ks)}")
        if not (isinstance(reg_weight, (int, float)) and math.isfinite(reg_weight) and reg_weight >= 0):
            raise UsageError(f"RecModel reg_weight must be a finite number >= 0, got {reg_weight!r}")
        self.encoder = encoder
        self.scorer = scorer if scorer is not None else DotScorer()
        self.loss = loss if loss is not None else BPRLoss()
        self.optimizer_factory = optimizer
        self.lr_schedule = lr_schedule
        self.reg_weight = reg_weight
        self.eval_ks = tuple(eval_ks)
        self.negatives = negatives if negatives is not None else SampledNegatives()
        self.data = None
        self.eval_chunk: int | None = None
        # Bound from the data in ``configure_model``: what validation passes rank ("valid", or "test" to monitor).
        self.monitor_split = "valid"
        self._bound = False
        self.epoch_times: list[float] = []
        self._fit_t0 = time.perf_counter()

    def check_setup(self, loader) -> None:
        """Refuse a data loader or an optimizer this model cannot train with, before any data is read.

        The same checks as at the start of training (the negatives strategy against the loader), plus a sampled
        strategy with no negatives and an optimizer whose options torch refuses, so that they fail before a run
        directory exists rather than after its data were prepared.

        Args:
            loader: ``data.loader`` (:class:`recsys.data.datamodule.Loader`).

        Raises:
            UsageError: the combination is refused (one line, naming the option).
        """
        try:
            self.negatives.check(self.encoder, loader.example_builder(), loader.num_negatives)
        except ValueError as e:
            raise UsageError(str(e)) from None
        if isinstance(self.negatives, SampledNegatives) and loader.num_negatives < 1:
            raise UsageError(f"--data.loader.num_negatives must be >= 1 for model.init_args.negatives "
                             f"{type(self.negatives).__name__} (the positive needs negatives to compete with), got "
                             f"{loader.num_negatives}")
        if self.optimizer_factory is not None:
            try:
                self.optimizer_factory([torch.nn.Parameter(torch.zeros(1))])
            except (ValueError, TypeError, RuntimeError) as e:
                raise UsageError(f"--model.init_args.optimizer is refused by torch: {e}") from None

    def fit(self, data, trainer: LightningFit | None = None) -> None:
        """Fit by Lightning: ``trainer(self)`` runs ``Trainer.fit`` on this module (``configure_model`` binds data)."""
        if trainer is None:
            raise ValueError("RecModel is fitted by a Lightning Trainer: pass "
                             "trainer=lambda m: L.Trainer(...).fit(m, datamodule=dm)")
        trainer(self)

    # Data binding: sizes and graphs come from the data, never from configuration.
    def bind(self, data) -> None:
        """Bind the encoder to prepared data (allocates tables, builds graphs); done once."""
        self.data = data
        self.negatives.bind(data)
        if not self._bound:
            self.encoder.bind(data)
            self._bound = True

    def configure_model(self) -> None:
        from recsys.data.datamodule import RecDataModule

        dm = self.trainer.datamodule
        if not isinstance(dm, RecDataModule):
            raise RuntimeError("RecModel needs a RecDataModule (trainer.fit(model, datamodule=...))")
        self.negatives.check(self.encoder, dm.loader.example_builder(), dm.loader.num_negatives)
        data = dm.prepare()
        self.bind(data)
        self.monitor_split = "valid" if data.has_split("valid") else "test"
        self.eval_chunk = dm.loader.eval_batch_size
        if not dm.history_len:
            dm.history_len = self.encoder.history_len

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=1e-3) if self.optimizer_factory is None else self.optimizer_factory(params)
        if self.lr_schedule is None:
            return opt
        # The run's length is a size bound from the trainer (epochs × batches / accumulation), never configured.
        total = self.trainer.estimated_stepping_batches
        if not math.isfinite(total) or total < 1:
            raise UsageError(f"--model.init_args.lr_schedule needs a finite run (--trainer.max_epochs or "
                             f"--trainer.max_steps), got {total} optimizer steps")
        return {"optimizer": opt, "lr_scheduler": {"scheduler": self.lr_schedule.build(opt, int(total)),
                                                   "interval": "step", "frequency": 1}}

    # Resume: the random streams that are not derived from (seed, epoch) travel in the full checkpoint.
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["recsys_rng"] = _rng_state()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "recsys_rng" in checkpoint:
            _set_rng_state(checkpoint["recsys_rng"])

    # Training.
    def on_fit_start(self) -> None:
        self._fit_t0 = time.perf_counter()

    def on_train_epoch_start(self) -> None:
        # The training dataset is ours (recsys.data.datamodule.TrainBatches or SequenceExamples): both reshuffle
        # and redraw negatives per epoch through set_epoch.
        self.trainer.train_dataloader.dataset.set_epoch(self.current_epoch)
        if isinstance(self.encoder, EpochAware):
            self.encoder.on_train_epoch_start(self.current_epoch)
        self._epoch_t0 = time.perf_counter()

    def on_train_epoch_end(self) -> None:
        # Training time only (validation excluded), the number RecBole reports per epoch.
        self.epoch_times.append(time.perf_counter() - self._epoch_t0)

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        step = self.negatives.embed(self.encoder, batch)
        if isinstance(self.loss, NestedLoss):
            # A nested loss (Matryoshka) scores one set of embeddings at several prefix sizes: embed once.
            scale = self.loss.gradient_scale(self.encoder.out_dim)
            if scale is not None:
                scale = scale.to(step.out.query)
                step.out = replace(step.out, query=scale_gradient(step.out.query, scale),
                                   candidates=scale_gradient(step.out.candidates, scale))
            loss = self.loss.nested(lambda dim: self.negatives.score(self.scorer, batch, step, dim),
                                    self.encoder.out_dim)
        else:
            loss = self.loss(*self.negatives.score(self.scorer, batch, step))
        self.log("train/loss", loss, prog_bar=True, on_step=False, on_epoch=True, batch_size=len(batch))
        if self.reg_weight and step.out.penalty is not None:
            loss = loss + self.reg_weight * (step.out.penalty / len(batch))
        if step.out.losses:
            aux = sum(step.out.losses.values())
            for name, term in step.out.losses.items():
                self.log(f"train/{name}", term, on_step=False, on_epoch=True, batch_size=len(batch))
            self.log("train/aux", aux, on_step=False, on_epoch=True, batch_size=len(batch))
            loss = loss + aux
        return loss

    # Full-ranking validation: the same evaluator as `recsys evaluate`, once per validation pass.
    def validation_step(self, batch, batch_idx: int) -> None:
        """Nothing per batch (the loader has one placeholder): :meth:`on_validation_epoch_end` ranks every
        validation user in one pass."""

    def on_validation_epoch_end(self) -> None:
        from recsys.metrics.evaluate import evaluate

        if self.trainer.sanity_checking:
            return
        metrics = evaluate(self, self.data, self.monitor_split, self.eval_ks, chunk_size=self.eval_chunk)
        if not metrics:
            return
        prefix = "valid" if self.monitor_split == "valid" else "test_monitor"
        headline = f"ndcg@{max(self.eval_ks)}"
        self.log_dict({f"{prefix}/{k}": v for k, v in metrics.items() if k != headline}, sync_dist=False)
        self.log(f"{prefix}/{headline}", metrics[headline], prog_bar=True, sync_dist=False)
        # A nested model is served at its prefixes too: their curves show a prefix that stops learning (or a tail
        # that collapses, the full-dim curve then equal to a prefix's) while training, not only after it.
        for dim, value in self._prefix_metrics(headline, metrics).items():
            self.log(f"{prefix}/{headline}_d{dim}", value, sync_dist=False)
        # Wall seconds since training started, this evaluation included: quality per hour, read off the log.
        self.log("time/elapsed_s", time.perf_counter() - self._fit_t0, sync_dist=False)

    def _prefix_metrics(self, name: str, full: dict[str, float]) -> dict[int, float]:
        """One validation metric at each nested (Matryoshka) prefix; empty for a model without prefixes.

        The prefixes are the nested loss's (``MatryoshkaLoss.prefix_dims``), or ``{d/8, d/4, d/2, d}`` for a
        :class:`~recsys.encoders.Matryoshka` encoder trained otherwise; each is ranked through a
        :class:`~recsys.scoring.index.PrefixSpec` index over the served tables, exactly as ``recsys evaluate
        --index prefix:dim=D`` ranks it (Kusupati et al., "Matryoshka Representation Learning", NeurIPS 2022).

        Args:
            name: the metric to report (the headline ``ndcg@<max k>``).
            full: this pass's metrics at every served dimension (the largest prefix is read from here, not ranked
                again).

        Returns:
            ``{prefix dim: metric}``, the served dimension ``d`` included.

        Shapes:
            served tables: queries [n_users, d], items [n_items, d]; each prefix ranks on their first ``dim``
            columns.
        """
        from recsys.encoders.matryoshka import Matryoshka
        from recsys.losses import MatryoshkaLoss, default_prefix_dims
        from recsys.metrics.evaluate import evaluate
        from recsys.scoring.index import PrefixSpec

        d = self.encoder.out_dim
        if isinstance(self.loss, MatryoshkaLoss):
            dims = self.loss.prefix_dims(d)
        elif isinstance(self.encoder, Matryoshka):
            dims = default_prefix_dims(d)
        else:
            return {}
        out = {}
        for dim in dims:
            if dim >= d:
                out[d] = full[name]
            else:
                out[dim] = evaluate(self, self.data, self.monitor_split, self.eval_ks, chunk_size=self.eval_chunk,
                                    index=PrefixSpec(dim=dim))[name]
        return out


def _rng_state() -> dict:
    """Python's, numpy's and torch's global random states as tensors and lists (``weights_only``-loadable)."""
    import random

    import numpy as np

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, state, gauss = random.getstate()
    out = {"torch": torch.get_rng_state(), "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss,
                                                     cached], "python": [version, list(state), gauss]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def _set_rng_state(state: dict) -> None:
    """Restore :func:`_rng_state`'s output."""
    import random

    import numpy as np

    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    version, py_state, gauss = state["python"]
    random.setstate((version, tuple(py_state), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
