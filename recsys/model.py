"""RecModel: the one LightningModule. It composes an encoder, a scorer and a loss; it holds no model logic."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import lightning as L
import numpy as np
import torch
from torch import Tensor

from recsys.data.batch import Batch
from recsys.encoders.base import RecEncoder
from recsys.losses import BPRLoss, Loss
from recsys.metrics.ranking import ranking_metrics
from recsys.scorers import DotScorer, Scorer
from recsys.scoring.topk import mask_rows_

OptimizerFactory = Callable[[Iterable], torch.optim.Optimizer]


class RecModel(L.LightningModule):
    """Trains any encoder with any scorer and loss, and validates by full ranking.

    Training: ``encoder(batch)`` gives query and candidate embeddings, ``scorer`` scores them (column 0 is the
    positive), ``loss`` compares positive and negative scores, plus ``reg_weight`` × the encoder's L2 penalty on
    the ego parameters the batch touched, divided by the batch size (the LightGCN convention).

    ``negatives`` chooses what the positive competes with: ``sampled`` (the batch's negative columns), ``in_batch``
    (the other rows' positives, plus any sampled columns; duplicates of the row's own positive are masked) or
    ``full`` (every item of ``encoder.item_table()``, the full-catalogue softmax of SASRec's CE loss and Recformer's
    fine-tuning; column 0 of ``batch.items`` is the target). Masked scores are -inf, so ``SoftmaxLoss`` is the exact
    softmax cross-entropy over the remaining candidates. With ``full`` and ``batch.items`` as wide as
    ``batch.history`` (``data.loader.examples: sequences``), every history position predicts its own target
    (-1 = none) from ``encoder.encode_query_positions(batch)`` [B, L, D]: SASRec's original all-positions training.

    A nested loss (``MatryoshkaLoss``, anything with a ``nested(scores_at, out_dim)`` method) gets the embeddings of
    the step computed once and a function scoring them at any prefix size, under any ``negatives`` setting.

    Encoder hooks, both optional: ``encoder.on_train_epoch_start(epoch)`` (e.g. re-encode a frozen item table each
    epoch) and ``encoder.auxiliary_loss(batch)`` (an extra, already weighted loss term such as Recformer's MLM, or
    None), added to the ranking loss and logged as ``train/aux``.

    Validation: embeddings are computed once per pass, every item is ranked for each validation user (training
    items excluded), and ``ranking_metrics`` is logged as ``valid/<metric>@<k>``.

    Args:
        encoder: the two-sided encoder (MF, a graph encoder, a text encoder, ...).
        scorer: how queries and items are scored (dot by default).
        loss: the training loss (BPR by default).
        optimizer: a factory ``params -> Optimizer`` (YAML: ``class_path: torch.optim.Adam``); Adam(lr=1e-3) if None.
        reg_weight: weight of the encoder's L2 regulariser.
        eval_ks: cut-offs for validation metrics.
        negatives: ``sampled``, ``in_batch`` or ``full`` (see above).
    """

    def __init__(self, encoder: RecEncoder, scorer: Scorer | None = None, loss: Loss | None = None,
                 optimizer: OptimizerFactory | None = None, reg_weight: float = 0.0,
                 eval_ks: tuple[int, ...] = (10, 20), negatives: str = "sampled") -> None:
        super().__init__()
        self.encoder = encoder
        self.scorer = scorer if scorer is not None else DotScorer()
        self.loss = loss if loss is not None else BPRLoss()
        self.optimizer_factory = optimizer
        self.reg_weight = reg_weight
        self.eval_ks = tuple(eval_ks)
        if negatives not in ("sampled", "in_batch", "full"):
            raise ValueError(f"negatives must be 'sampled', 'in_batch' or 'full', not {negatives!r}")
        self.negatives = negatives
        self.data = None
        self._bound = False
        self._outputs: list[tuple[Tensor, Tensor]] = []
        self.epoch_times: list[float] = []

    # Data binding: sizes and graphs come from the data, never from configuration.
    def bind(self, data) -> None:
        """Bind the encoder to prepared data (allocates tables, builds graphs); done once."""
        self.data = data
        if not self._bound:
            self.encoder.bind(data)
            self._bound = True

    def configure_model(self) -> None:
        dm = self.trainer.datamodule
        if dm is None or not hasattr(dm, "prepare"):
            raise RuntimeError("RecModel needs a RecDataModule (trainer.fit(model, datamodule=...))")
        self.bind(dm.prepare())
        if not dm.history_len:
            dm.history_len = self.encoder.history_len

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        if self.optimizer_factory is None:
            return torch.optim.Adam(params, lr=1e-3)
        return self.optimizer_factory(params)

    # Training.
    def on_train_epoch_start(self) -> None:
        ds = getattr(self.trainer.train_dataloader, "dataset", None)
        if hasattr(ds, "set_epoch"):
            ds.set_epoch(self.current_epoch)
        hook = getattr(self.encoder, "on_train_epoch_start", None)
        if callable(hook):
            hook(self.current_epoch)
        self._epoch_t0 = time.perf_counter()

    def on_train_epoch_end(self) -> None:
        # Training time only (validation excluded), the number RecBole reports per epoch.
        self.epoch_times.append(time.perf_counter() - self._epoch_t0)

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        nested = getattr(self.loss, "nested", None)
        if callable(nested):
            # A nested loss (Matryoshka) scores one set of embeddings at several prefix sizes: embed once.
            emb = self.embed(batch)
            loss = nested(lambda dim: self.scores(batch, emb, dim), self.encoder.out_dim)
        else:
            loss = self.loss(*self.scores(batch))
        self.log("train/loss", loss, prog_bar=True, on_step=False, on_epoch=True, batch_size=len(batch))
        if self.reg_weight:
            reg = self.encoder.regularization(batch) / len(batch)
            loss = loss + self.reg_weight * reg
        aux_fn = getattr(self.encoder, "auxiliary_loss", None)
        aux = aux_fn(batch) if callable(aux_fn) else None
        if aux is not None:
            self.log("train/aux", aux, on_step=False, on_epoch=True, batch_size=len(batch))
            loss = loss + aux
        return loss

    def embed(self, batch: Batch) -> tuple[Tensor, Tensor, Tensor | None]:
        """The embeddings a training step scores, under the ``negatives`` setting.

        Shapes:
            sampled / in_batch: -> (query [B, D], candidates [B, C, D], None)
            sampled, scored against the table: -> (query [B, D], item table [N, D], candidates [B, C])
            full: -> (query [Q, D], item table [N, D], target [Q, 1]); Q = B, or the valid positions
        """
        if self.negatives == "full":
            if batch.history is not None and batch.items.shape[1] > 1 and batch.items.shape == batch.history.shape:
                per_position = self.encoder.encode_query_positions(batch)
                valid = batch.items >= 0
                query, target = per_position[valid], batch.items[valid][:, None]
            else:
                query, target = self.encoder.encode_queries(batch), batch.items[:, :1]
            return query, self.encoder.item_table(), target
        if self.negatives == "sampled" and self._table_scoring(batch):
            query, table = self.encoder.training_tables(batch)
            return query, table, batch.items
        query, cands = self.encoder(batch)
        return query, cands, None

    def _table_scoring(self, batch: Batch) -> bool:
        # Many sampled negatives (AlphaRec's 256) against a small catalogue, from an encoder that computes the whole
        # item table each step anyway (graphs): scoring all items with one GEMM and picking the candidates' columns
        # is exact and ~6x cheaper on CPU than gathering a [B, C, D] candidate tensor and reducing it, forward and
        # backward. The gather costs ~1 µs per candidate, the GEMM ~5 ns per score: the GEMM wins below ~100 x C.
        fn = getattr(self.encoder, "training_tables", None)
        return callable(fn) and self.encoder.n_items <= 100 * batch.items.shape[1]

    def scores(self, batch: Batch, emb: tuple | None = None, dim: int | None = None) -> tuple[Tensor, Tensor]:
        """Positive and negative training scores under the ``negatives`` setting.

        Args:
            batch: the training batch.
            emb: the output of :meth:`embed` for this batch (computed when None).
            dim: score the first ``dim`` embedding dimensions only (a Matryoshka prefix); all when None.

        Shapes:
            batch.items: [B, C] -> (pos [B], neg [B, K])
        """
        query, cands, target = emb if emb is not None else self.embed(batch)
        if dim is not None:
            query, cands = query[..., :dim], cands[..., :dim]
        if self.negatives == "full":
            logits = self.scorer.score_all(query, cands)
            pos = logits.gather(1, target).squeeze(1)
            return pos, logits.scatter(1, target, float("-inf"))
        if self.negatives == "sampled" and target is not None:  # cands is the item table, target the candidates
            scores = self.scorer.score_all(query, cands).gather(1, target)
            return scores[:, 0], scores[:, 1:]
        if self.negatives == "sampled":
            scores = self.scorer(query, cands)
            return scores[:, 0], scores[:, 1:]
        # In-batch: row b's negatives are the other rows' positives; a duplicate of its own positive is no negative.
        logits = self.scorer.score_all(query, cands[:, 0])
        pos = logits.diagonal()
        same = batch.items[:, :1] == batch.items[:, 0][None, :]
        neg = logits.masked_fill(same, float("-inf"))
        if cands.shape[1] > 1:
            neg = torch.cat([neg, self.scorer(query, cands[:, 1:])], dim=1)
        return pos, neg

    # Full-ranking validation and test (the same code path as recsys evaluate).
    def on_validation_epoch_start(self) -> None:
        self._start_eval()

    def on_test_epoch_start(self) -> None:
        self._start_eval()

    def _start_eval(self) -> None:
        self.encoder.precompute()
        self._items = self.scorer.prepare_items(self.encoder.item_table())
        self._outputs = []

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch, "valid")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def _eval_step(self, batch: Batch, split: str) -> None:
        q = self.scorer.prepare_queries(self.encoder.encode_queries(batch))
        scores = q @ self._items.T
        rows = batch.users.cpu().numpy()
        mask_rows_(scores, self.data.exclude_for(split), rows)
        k = min(max(self.eval_ks), scores.shape[1])
        self._outputs.append((batch.users, torch.topk(scores, k, dim=1).indices))

    def on_validation_epoch_end(self) -> None:
        self._end_eval("valid")

    def on_test_epoch_end(self) -> None:
        self._end_eval("test")

    def _end_eval(self, split: str) -> None:
        self.encoder.clear_cache()
        k = max(self.eval_ks)
        users = torch.cat([u for u, _ in self._outputs]) if self._outputs else torch.zeros(0, dtype=torch.long)
        ranked = torch.cat([r for _, r in self._outputs]) if self._outputs else torch.zeros(0, k, dtype=torch.long)
        self._outputs = []
        if self.trainer.world_size > 1:
            # Each rank ranked a share of the users, chunks of unequal size, and the distributed sampler may pad
            # with repeats: gather as objects, then de-duplicate so every user counts exactly once.
            import torch.distributed as dist

            parts: list = [None] * self.trainer.world_size
            dist.all_gather_object(parts, (users.cpu(), ranked.cpu()))
            users = torch.cat([u for u, _ in parts])
            ranked = torch.cat([r for _, r in parts])
        if len(users) == 0:
            return
        users_np, first = np.unique(users.cpu().numpy(), return_index=True)
        ranked_np = ranked.cpu().numpy()[first]
        metrics = ranking_metrics(ranked_np, self.data.csr(split)[users_np], self.eval_ks)
        headline = f"ndcg@{max(self.eval_ks)}"
        self.log_dict({f"{split}/{k}": v for k, v in metrics.items() if k != headline}, sync_dist=False)
        self.log(f"{split}/{headline}", metrics[headline], prog_bar=True, sync_dist=False)
