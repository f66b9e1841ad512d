"""Batch scoring on Lightning's ``trainer.predict``: DDP over devices and nodes, one user shard per predict step.

Each predict step scores one shard of users (its top-k, on the module's device); a ``BasePredictionWriter`` on the
rank that scored it writes the shard exactly as ``recsys score --shard-users`` does (same Parquet bytes, same
``.json`` sidecar), and rank 0 writes ``manifest.json`` once every rank is done. Lightning's predict sampler gives
shard ``p`` to rank ``p % world_size`` without padding, so no shard is written twice. A rerun verifies and skips
complete shards, like the plain path. This module imports Lightning; ``recsys score`` imports it only when a
``--trainer.*`` option is given.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader, Dataset

from recsys.scoring.batch import ScoringReport, ShardSet, _check_options, _exclude_mode, _ScoringJob

#: users per shard when ``--shard-users`` is not given (independent of the world size, so a rerun on another
#: number of devices still finds and verifies the same shards).
DEFAULT_SHARD_USERS = 50_000


class _ShardIndex(Dataset):
    """The shard numbers ``0..n-1``: one predict step each."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def _first(batch: list[int]) -> int:
    return batch[0]


class ScoringModule(L.LightningModule):
    """The scoring pass as a LightningModule: ``predict_step(p)`` is shard ``p``'s top-k (None if already done).

    Stored GEMM-ready tables are buffers, so Lightning moves them to the rank's device; other models score with
    their rebuilt score function on the CPU.

    Args:
        job: the loaded scoring job (vocabularies, exclusions, score function).
        layout: the shards (:class:`recsys.scoring.batch.ShardSet`).
        tables: ``(queries, items)`` of the job (the run's, with any folded-in users appended), or None.
        precision: ``auto`` (bf16 on CUDA with bf16 support, else float32), ``32`` or ``bf16``.

    Shapes:
        tables: queries [U, D], items [N, D]
    """

    def __init__(self, job: _ScoringJob, layout: ShardSet, tables=None, precision: str = "auto") -> None:
        super().__init__()
        self.job, self.layout, self.precision_option = job, layout, precision
        self.has_tables = tables is not None
        if self.has_tables:
            self.register_buffer("queries", tables[0], persistent=False)
            self.register_buffer("items", tables[1], persistent=False)

    def predict_step(self, batch: int, batch_idx: int):
        from recsys.scoring.topk import gemm_score_fn, scoring_dtype

        p = int(batch)
        if p >= self.layout.n_parts:  # padding, so that every rank has a step
            return None
        users = self.layout.users(p)
        if self.layout.is_complete(p):
            return None
        job = self.job
        device = self.device if self.has_tables else torch.device("cpu")
        score_fn = gemm_score_fn(self.queries, self.items) if self.has_tables else job.score_fn
        dtype = scoring_dtype(self.precision_option, device)
        return p, users, list(job.topk_chunks(users, score_fn, device, dtype))


class ShardWriter(BasePredictionWriter):
    """Writes each predicted shard atomically, with its sidecar, on the rank that scored it.

    Args:
        job: the scoring job (its ``write`` streams the Parquet file).
        layout: the shards (:class:`recsys.scoring.batch.ShardSet`); set before the predict loop starts when None
            here.
    """

    def __init__(self, job: _ScoringJob, layout: ShardSet | None) -> None:
        super().__init__(write_interval="batch")
        self.job, self.layout, self.rows_written = job, layout, 0

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
        if prediction is None:
            return
        p, users, chunks = prediction
        path = self.layout.path(p)
        n = self.job.write(path, users, chunks, sweep=False)
        self.layout.write_sidecar(p, n)
        self.rows_written += n
        self.job.report.shards_written += 1


def predict_run(run_dir: str | Path, out: str | Path, *, k: int = 100, users_file: str | Path | None = None,
                exclude: str = "all", chunk_size: int | None = None, shard_users: int | None = None,
                precision: str = "auto", trainer: dict | None = None, unknown_users: str = "error",
                histories: str | Path | None = None, keep_seen: bool = False) -> int:
    """Score a run with ``trainer.predict`` into a directory of Parquet shards; returns rows written by this rank.

    :func:`predict_report` returning only ``report.rows``.
    """
    return predict_report(run_dir, out, k=k, users_file=users_file, exclude=exclude, chunk_size=chunk_size,
                          shard_users=shard_users, precision=precision, trainer=trainer, unknown_users=unknown_users,
                          histories=histories, keep_seen=keep_seen).rows


def predict_report(run_dir: str | Path, out: str | Path, *, k: int = 100, users_file: str | Path | None = None,
                   exclude: str = "all", chunk_size: int | None = None, shard_users: int | None = None,
                   precision: str = "auto", trainer: dict | None = None, unknown_users: str = "error",
                   histories: str | Path | None = None, keep_seen: bool = False) -> ScoringReport:
    """Score a run with ``trainer.predict`` into a directory of Parquet shards; what this rank did.

    The output equals ``score_run(..., shard_users=shard_users)`` shard for shard. Run it once per process as
    Lightning expects (``recsys score ... --trainer.strategy ddp --trainer.devices N``, or under torchrun / SLURM
    with ``--trainer.num_nodes``).

    Args:
        run_dir: a finished ``recsys fit`` run.
        out: the output directory of ``part-NNNNN.parquet`` shards, sidecars and ``manifest.json``.
        k: list length.
        users_file: external user IDs to score (all users when None).
        exclude: ``all``, ``train`` or ``none`` (see :func:`recsys.scoring.batch.run_scoring`).
        chunk_size: users per GEMM chunk (from a memory budget when None).
        shard_users: users per shard (:data:`DEFAULT_SHARD_USERS` when None).
        precision: ``auto`` (bf16 on CUDA with bf16 support, float32 elsewhere), ``32`` or ``bf16``.
        trainer: keyword arguments of ``lightning.Trainer`` (strategy, devices, accelerator, num_nodes, ...).
        unknown_users: ``error``, ``skip`` or ``popular`` (see :func:`recsys.scoring.batch.run_scoring`).
        histories: users scored from their item histories (see :func:`recsys.scoring.batch.run_scoring`).
        keep_seen: deprecated alias of ``exclude="none"``.
    """
    _check_options(k=k, chunk_size=chunk_size, shard_users=shard_users, exclude=exclude,
                   unknown_users=unknown_users, precision=precision)
    from recsys.io_utils import check_output_path

    out = check_output_path(out, directory=True, inputs={"--users": users_file, "--histories": histories})
    job = _ScoringJob(run_dir, k, users_file, _exclude_mode(exclude, keep_seen), chunk_size,
                      unknown_users=unknown_users, histories=histories)
    # The writer is the trainer's callback; its shards are known once the trainer says which device scores.
    writer = ShardWriter(job, None)
    targs = dict(trainer or {})
    targs["callbacks"] = [*list(targs.get("callbacks") or []), writer]
    if targs.get("logger") in (None, True):
        targs["logger"] = False
    targs.setdefault("default_root_dir", str(out))
    targs["enable_checkpointing"] = False
    pl_trainer = L.Trainer(**targs)
    from recsys.scoring.topk import scoring_dtype

    # The fingerprint records the precision this rank's device resolves to (auto: bf16 on CUDA, float32 on CPU).
    job.dtype = scoring_dtype(precision, pl_trainer.strategy.root_device)
    per = shard_users or DEFAULT_SHARD_USERS
    layout = ShardSet(out, job.rows, per, job.fingerprint(users_file=users_file, histories=histories,
                                                          shard_users=per), job.report)
    # Temp files of killed writers are unlocked (a rank writing now holds its lock), so every rank may sweep.
    layout.prepare()
    writer.layout = layout
    module = ScoringModule(job, layout, job.tables, precision)
    # Lightning's predict sampler needs at least one index per rank: pad with no-op steps when shards are fewer.
    loader = DataLoader(_ShardIndex(max(layout.n_parts, pl_trainer.world_size)), batch_size=1, shuffle=False,
                        collate_fn=_first)
    import warnings

    # A skipped (already complete) shard predicts None on purpose.
    warnings.filterwarnings("ignore", message=".*predict returned None.*")
    pl_trainer.predict(module, dataloaders=loader, return_predictions=False)
    # Every rank's shards are on disk before rank 0 lists them for the manifest.
    pl_trainer.strategy.barrier("recsys-scoring-manifest")
    if pl_trainer.is_global_zero:
        layout.write_manifest()
    job.report.rows = writer.rows_written
    return job.report


def read_manifest(out: str | Path) -> dict:
    """The ``manifest.json`` of a sharded scoring directory."""
    return json.loads((Path(out) / "manifest.json").read_text())
