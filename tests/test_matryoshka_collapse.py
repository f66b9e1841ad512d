"""Matryoshka without collapse: the shipped optimizer keeps every nested prefix's coordinates alive.

Kusupati et al., "Matryoshka Representation Learning", NeurIPS 2022, train every prefix ``d/8, d/4, d/2, d`` of one
embedding. Under Adam's coupled L2 (``torch.optim.Adam(weight_decay=...)``) the coordinates past the first prefix
that fits the data go to zero (the decay is part of the gradient Adam normalises, so once their ranking gradient
is small it shrinks them by ``lr`` a step whatever their size): the model then serves one small prefix at every size.
These known-answer tests train a tiny Matryoshka MF on the checkerboard (two groups: a 2-dim prefix already fits it)
and check that decoupled decay with weights 0.1/0.1/0.1/1 keeps the tail (coordinates 3..16) at the head's scale,
that coupled L2 kills it, that the shipped ``mf_matryoshka`` (plain BPR, prefixes from ``PrincipalAxes``) orders
its coordinates by spread with every full-width score unchanged, and that training logs the headline at each prefix.
"""

from __future__ import annotations

import functools
import importlib

import pytest
import torch
import yaml

from recsys.data.datamodule import Loader
from recsys.encoders import MatrixFactorization, Matryoshka, PrincipalAxes
from recsys.losses import BPRLoss, MatryoshkaLoss
from recsys.model import RecModel
from recsys.packaged_configs import resolve_config
from recsys.testing import checkerboard
from recsys.testing.training import fit_tiny

DIM = 16  # prefixes {2, 4, 8, 16}: the first already separates the checkerboard's two groups
EPOCHS = 20
# The tiny log has 6 batches an epoch; a 25x larger step than P1's 0.002 gives it P1's movement in 20 epochs.
TINY_LR = 0.05


def shipped_optimizer():
    """``mf_matryoshka.yaml``'s optimizer (class and options) at the tiny data's learning rate."""
    spec = yaml.safe_load(open(resolve_config("mf_matryoshka")))["model"]["init_args"]["optimizer"]
    module, name = spec["class_path"].rsplit(".", 1)
    kwargs = {k: v for k, v in spec.get("init_args", {}).items() if k != "fused"}  # fused: CUDA only on old torch
    kwargs["lr"] = TINY_LR
    return functools.partial(getattr(importlib.import_module(module), name), **kwargs)


def train(optimizer, weights=None, validate: bool = False, nested: bool = True, principal: bool = False):
    """A Matryoshka MF-16 trained on the checkerboard (nested BPR loss, or plain BPR); returns (model, trainer)."""
    torch.manual_seed(0)
    inner = MatrixFactorization(dim=DIM, init="normal", init_std=0.1)
    model = RecModel(Matryoshka(PrincipalAxes(inner) if principal else inner),
                     loss=MatryoshkaLoss(weights=weights) if nested else BPRLoss(),
                     optimizer=optimizer)
    trainer = fit_tiny(model, checkerboard(n_users=60, n_items=30), Loader(batch_size=64, num_negatives=4),
                       max_epochs=EPOCHS, validate=validate)
    return model, trainer


def head_tail_rms(model) -> tuple[float, float]:
    """RMS of the first prefix's coordinates and of the rest, over both tables.

    Shapes:
        stacked tables: [n_users + n_items, DIM]; head = [:, :2], tail = [:, 2:]
    """
    w = torch.cat([p.detach() for p in model.encoder.parameters()], 0)
    return w[:, :2].pow(2).mean().sqrt().item(), w[:, 2:].pow(2).mean().sqrt().item()


def shipped_encoder_classes() -> list[str]:
    """The encoder class paths of ``mf_matryoshka.yaml``, outermost first."""
    spec, out = yaml.safe_load(open(resolve_config("mf_matryoshka")))["model"]["init_args"]["encoder"], []
    while spec:
        out.append(spec["class_path"])
        spec = spec.get("init_args", {}).get("encoder")
    return out


@pytest.fixture(scope="module")
def shipped():
    assert shipped_encoder_classes() == ["recsys.encoders.Matryoshka", "recsys.encoders.PrincipalAxes",
                                         "recsys.encoders.MatrixFactorization"]
    return train(shipped_optimizer(), nested=False, principal=True, validate=True)


def test_decoupled_decay_keeps_the_nested_tail_alive():
    model, _ = train(functools.partial(torch.optim.AdamW, lr=TINY_LR, weight_decay=1e-5), [0.1, 0.1, 0.1, 1.0])
    head, tail = head_tail_rms(model)
    # Known answer: with no gradient-normalised decay the tail keeps (and grows from) its init scale 0.1, within a
    # small factor of the head's; collapsed, it is two orders below (next test).
    assert tail > 0.3 * head, (head, tail)
    assert tail > 0.1


def test_coupled_adam_l2_collapses_the_tail():
    # The failure mode: uniform weights 1/4 under a strong coupled L2 (the tiny log fits its first prefix quickly).
    model, _ = train(functools.partial(torch.optim.Adam, lr=TINY_LR, weight_decay=0.01), [0.25] * 4)
    head, tail = head_tail_rms(model)
    assert tail < 0.1 * head, (head, tail)


def test_shipped_prefixes_are_principal_axes(shipped):
    model, _ = shipped
    model.eval()
    axes = model.encoder.encoder
    items = axes.inner_item_table()
    rotated = items @ axes.rotation
    # Known answer: the rotation is orthogonal (full-width scores unchanged) and the rotated coordinates' second
    # moments decrease, so every prefix holds the most of the catalogue's spread a projection of its size can.
    torch.testing.assert_close(axes.rotation.T @ axes.rotation, torch.eye(DIM), atol=1e-5, rtol=0)
    spread = rotated.pow(2).sum(0)
    assert bool((spread[:-1] >= spread[1:] - 1e-5).all()), spread
    torch.testing.assert_close((rotated @ rotated.T), items @ items.T, atol=1e-4, rtol=1e-4)


def test_per_prefix_validation_metrics_are_logged(shipped):
    model, trainer = shipped
    logged = trainer.callback_metrics
    dims = [2, 4, 8, 16]
    for d in dims:
        assert f"valid/ndcg@20_d{d}" in logged, sorted(logged)
    # The full prefix is the headline itself; a smaller one is ranked at its own width (all solve the checkerboard).
    assert float(logged["valid/ndcg@20_d16"]) == pytest.approx(float(logged["valid/ndcg@20"]))
    assert all(0.0 < float(logged[f"valid/ndcg@20_d{d}"]) <= 1.0 for d in dims)


def test_plain_mf_logs_no_prefix_metrics():
    model = RecModel(MatrixFactorization(dim=8), optimizer=functools.partial(torch.optim.Adam, lr=TINY_LR))
    trainer = fit_tiny(model, checkerboard(n_users=60, n_items=30), Loader(batch_size=64, num_negatives=4),
                       max_epochs=1, validate=True)
    assert "valid/ndcg@20" in trainer.callback_metrics
    assert not [k for k in trainer.callback_metrics if "_d" in k.rsplit("@", 1)[-1]]
