"""Known answers of the ranking losses on tiny tensors (values chosen so every sigmoid is 1/2, 1/4 or 3/4)."""

import math

import pytest
import torch

from recsys.capabilities import NestedLoss
from recsys.losses import BCELoss, BPRLoss, MatryoshkaLoss, SoftmaxLoss, default_prefix_dims, scale_gradient

LN3 = math.log(3.0)


def t(*rows):
    return torch.tensor(rows, dtype=torch.float64)


def test_bpr_averages_every_pair():
    # s⁺ − s⁻ = 0 and −ln 3: −log σ(0) = ln 2, −log σ(−ln 3) = −log(1/4) = ln 4.
    assert BPRLoss()(t(0.0), t([0.0, LN3])).item() == pytest.approx((math.log(2) + math.log(4)) / 2)
    # two rows of one negative: ln 2 and −log σ(ln 3) = ln(4/3).
    assert BPRLoss()(t(0.0, LN3), t([0.0], [0.0])).item() == pytest.approx((math.log(2) + math.log(4 / 3)) / 2)


def test_softmax_is_cross_entropy_of_the_positive():
    # equal logits over 1 + 3 candidates: ln 4.
    assert SoftmaxLoss()(t(0.0), t([0.0, 0.0, 0.0])).item() == pytest.approx(math.log(4))
    # temperature 2: logits (ln 3, 0, 0), p⁺ = 3/5.
    assert SoftmaxLoss(temperature=2.0)(t(2 * LN3), t([0.0, 0.0])).item() == pytest.approx(math.log(5 / 3))


def test_bce_labels_positives_one_and_negatives_zero():
    # −log σ(0) for the positive plus the mean of −log(1 − σ(0)) over the negatives.
    assert BCELoss()(t(0.0), t([0.0, 0.0])).item() == pytest.approx(2 * math.log(2))
    # positive ln 3: ln(4/3); negatives ln 3 and −ln 3: ln 4 and ln(4/3), averaged.
    want = math.log(4 / 3) + (math.log(4) + math.log(4 / 3)) / 2
    assert BCELoss()(t(LN3), t([LN3, -LN3])).item() == pytest.approx(want)


def test_default_prefix_dims():
    assert default_prefix_dims(64) == [8, 16, 32, 64]
    assert default_prefix_dims(3) == [1, 3]
    assert default_prefix_dims(1) == [1]


def test_matryoshka_nested_is_the_weighted_sum_over_prefixes():
    loss = MatryoshkaLoss(dims=[4, 2], weights=[1.0, 0.5])  # dims are sorted: weights follow the sorted order
    assert isinstance(loss, NestedLoss)
    asked = []

    def scores_at(m):
        asked.append(m)
        return {2: (t(0.0), t([0.0])), 4: (t(LN3), t([0.0]))}[m]

    # BPR ln 2 at prefix 2 (weight 1) and ln(4/3) at prefix 4 (weight 0.5).
    assert loss.nested(scores_at, out_dim=4).item() == pytest.approx(math.log(2) + 0.5 * math.log(4 / 3))
    assert asked == [2, 4]
    # called as a plain loss it is the base loss
    assert loss(t(0.0), t([0.0])).item() == pytest.approx(math.log(2))


def test_matryoshka_default_prefixes_on_dot_scores():
    # q = (ln 3, 0, 0, 0, 0, 0, 0, ln 3); the positive matches the first coordinate, the negative the last one.
    q = t([LN3, 0, 0, 0, 0, 0, 0, LN3])
    pos, neg = t([1.0, 0, 0, 0, 0, 0, 0, 0]), t([[0.0, 0, 0, 0, 0, 0, 0, 1]])

    def scores_at(m):
        return (q[:, :m] * pos[:, :m]).sum(-1), (q[:, None, :m] * neg[:, :, :m]).sum(-1)

    # prefixes 1, 2, 4 see s⁺ − s⁻ = ln 3 (loss ln(4/3)); the full prefix 8 sees 0 (loss ln 2).
    got = MatryoshkaLoss().nested(scores_at, out_dim=8).item()
    assert got == pytest.approx(3 * math.log(4 / 3) + math.log(2))


def test_matryoshka_refuses_bad_prefixes():
    with pytest.raises(ValueError, match="2 prefix dims but 1 weights"):
        MatryoshkaLoss(dims=[2, 4], weights=[1.0])
    with pytest.raises(ValueError, match="exceeds"):
        MatryoshkaLoss(dims=[2, 16]).prefix_dims(8)


def test_balance_divides_each_coordinate_by_the_weight_of_its_prefixes():
    loss = MatryoshkaLoss(dims=[2, 4, 8], weights=[0.5, 1.0, 2.0], balance=True)
    # Coordinates 0-1 sit in all three prefixes (3.5), 2-3 in the last two (3.0), 4-7 in the last (2.0).
    torch.testing.assert_close(loss.gradient_scale(8), 1 / torch.tensor([3.5, 3.5, 3.0, 3.0, 2.0, 2.0, 2.0, 2.0]))
    assert MatryoshkaLoss(dims=[2, 4]).gradient_scale(4) is None
    # Coordinates past the last prefix get no loss gradient: their factor is left at 1.
    torch.testing.assert_close(MatryoshkaLoss(dims=[2], balance=True).gradient_scale(4),
                               torch.tensor([1.0, 1.0, 1.0, 1.0]))


def test_scale_gradient_is_the_identity_forward_and_scales_backward():
    x = torch.randn(3, 4, requires_grad=True)
    scale = torch.tensor([1.0, 0.5, 0.25, 2.0])
    y = scale_gradient(x, scale)
    assert torch.equal(y, x)
    y.sum().backward()
    torch.testing.assert_close(x.grad, scale.expand(3, 4))


def test_recmodel_training_step_applies_the_balanced_gradient():
    """One step of a nested MF: balanced, every embedding gradient is the unbalanced one times its coordinate's
    factor (the loss value is unchanged)."""
    from recsys.data.batch import Batch
    from recsys.encoders import MatrixFactorization
    from recsys.model import RecModel
    from recsys.testing import checkerboard

    grads, losses = [], []
    for balance in (False, True):
        torch.manual_seed(0)
        model = RecModel(MatrixFactorization(dim=4), loss=MatryoshkaLoss(dims=[2, 4], balance=balance))
        model.bind(checkerboard(n_users=8, n_items=6))
        model.log = lambda *a, **k: None  # no trainer attached
        batch = Batch(torch.arange(4), torch.tensor([[0, 1], [2, 3], [4, 5], [1, 0]]))
        loss = model.training_step(batch, 0)
        loss.backward()
        losses.append(loss.detach())
        grads.append(model.encoder.item.table.weight.grad.clone())
    torch.testing.assert_close(losses[0], losses[1])
    torch.testing.assert_close(grads[1], grads[0] * torch.tensor([0.5, 0.5, 1.0, 1.0]))
