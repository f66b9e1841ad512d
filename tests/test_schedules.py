"""Learning-rate schedules: WarmupLinear against transformers' schedule and Recformer's optimization.py, its options,
and a Lightning fit that steps it per optimizer step over the trainer's total (gradient accumulation counted)."""

from functools import partial

import lightning as L
import pytest
import torch

from recsys.data.datamodule import Loader
from recsys.encoders import MatrixFactorization
from recsys.errors import UsageError
from recsys.model import RecModel
from recsys.testing.fixtures import tiny_synthetic
from recsys.testing.training import PreparedDataModule
from recsys.training import WarmupLinear


def _lrs(schedule, total, steps=None):
    """The lr (base 1.0) used by each optimizer step 0 .. steps - 1."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = schedule.build(opt, total)
    out = []
    for _ in range(total if steps is None else steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_known_answers_for_both_decays():
    assert _lrs(WarmupLinear(warmup_steps=2), 6) == pytest.approx([0.0, 0.5, 1.0, 0.75, 0.5, 0.25])
    # Recformer's optimization.py: after warm-up the line 1 - s / T from step 0 (a drop to 1 - 2/6 at step 2).
    assert _lrs(WarmupLinear(warmup_steps=2, decay_from="start"), 6) == pytest.approx(
        [0.0, 0.5, 4 / 6, 3 / 6, 2 / 6, 1 / 6])
    assert _lrs(WarmupLinear(), 4) == _lrs(WarmupLinear(decay_from="start"), 4) == pytest.approx(
        [1.0, 0.75, 0.5, 0.25])
    assert _lrs(WarmupLinear(warmup_ratio=0.25), 8)[:3] == pytest.approx([0.0, 0.5, 1.0])  # W = ceil(2.0)


def test_matches_transformers_get_linear_schedule_with_warmup():
    transformers = pytest.importorskip("transformers")
    for warmup, total in [(0, 7), (3, 10), (10, 10), (12, 10)]:
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        ref = transformers.get_linear_schedule_with_warmup(opt, warmup, total)
        want = []
        for _ in range(total + 2):
            want.append(opt.param_groups[0]["lr"])
            opt.step()
            ref.step()
        assert _lrs(WarmupLinear(warmup_steps=warmup), total, total + 2) == pytest.approx(want)


@pytest.mark.parametrize(("kwargs", "option"), [({"warmup_steps": -1}, "warmup_steps"),
                                                ({"warmup_steps": 1.5}, "warmup_steps"),
                                                ({"warmup_ratio": 1.0}, "warmup_ratio"),
                                                ({"warmup_steps": 2, "warmup_ratio": 0.1}, "warmup_ratio"),
                                                ({"decay_from": "end"}, "decay_from")])
def test_bad_options_are_one_line_usage_errors(kwargs, option):
    with pytest.raises(UsageError, match=f"lr_schedule.init_args.{option}") as e:
        WarmupLinear(**kwargs)
    assert "\n" not in str(e.value)


class _LrLog(L.Callback):
    """The lr each optimizer step used (read before the step's scheduler update)."""

    def __init__(self):
        self.lrs = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.lrs.append(optimizer.param_groups[0]["lr"])


def test_fit_steps_the_schedule_per_optimizer_step_over_the_trainers_total(one_thread):
    data = tiny_synthetic(n_users=40, n_items=30, n_interactions=600)
    warmup, accumulate = 3, 2
    model = RecModel(MatrixFactorization(dim=8), optimizer=partial(torch.optim.Adam, lr=0.01),
                     lr_schedule=WarmupLinear(warmup_steps=warmup))
    log = _LrLog()
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0, accumulate_grad_batches=accumulate, callbacks=[log])
    trainer.fit(model, datamodule=PreparedDataModule(data, Loader(batch_size=64, num_negatives=1)))
    total = trainer.estimated_stepping_batches
    assert total == 2 * -(-len(trainer.train_dataloader) // accumulate)  # accumulated batches are one step
    assert len(log.lrs) == trainer.global_step == total
    assert log.lrs[0] == 0.0 and log.lrs[warmup] == pytest.approx(0.01) == max(log.lrs)
    assert log.lrs[-1] == pytest.approx(0.01 / (total - warmup))  # the last step's lr: one step from 0
    assert trainer.lr_scheduler_configs[0].interval == "step"
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    # What a full checkpoint keeps (and ``recsys fit --resume`` restores): the scheduler's step count.
    assert trainer.lr_scheduler_configs[0].scheduler.state_dict()["last_epoch"] == total


def test_an_unbounded_run_is_refused():
    data = tiny_synthetic(n_users=20, n_items=16, n_interactions=120)
    model = RecModel(MatrixFactorization(dim=4), lr_schedule=WarmupLinear())
    trainer = L.Trainer(max_epochs=-1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    with pytest.raises(UsageError, match="lr_schedule needs a finite run"):
        trainer.fit(model, datamodule=PreparedDataModule(data, Loader(batch_size=64, num_negatives=1)))


def test_killed_fit_with_a_schedule_resumes_to_identical_metrics(tmp_path):
    """``recsys fit --resume`` restores the scheduler's step count from last.ckpt (the lr continues its line)."""
    import json
    import subprocess
    import sys

    from conftest import fit_args

    from recsys.cli import main

    sched = ["--model.init_args.lr_schedule", json.dumps({"class_path": "recsys.training.schedules.WarmupLinear",
                                                           "init_args": {"warmup_steps": 2}}),
             "--trainer.accumulate_grad_batches", "2"]
    kill = json.dumps([{"class_path": "recsys.testing.faults.KillAt", "init_args": {"epoch": 1, "batch": 1}}])
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert main(fit_args("mf_bpr.yaml", whole, *sched, epochs=3)) == 0
    proc = subprocess.run([sys.executable, "-m", "recsys", *fit_args("mf_bpr.yaml", killed, *sched,
                                                                      "--trainer.callbacks", kill, epochs=3)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert main(["fit", "--resume", str(killed), "--trainer.callbacks", "[]"]) == 0
    got, want = (json.loads((d / "metrics.json").read_text()) for d in (killed, whole))
    assert got == want
