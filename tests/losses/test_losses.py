import math

import pytest
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from torch import nn

from segzoo.losses import CELoss, DeepSupervisionLoss, ExpLogLoss, downsample_labels

LN2, LN3, LN4 = math.log(2.0), math.log(3.0), math.log(4.0)


def _tiny():
    """B=1, K=2, two voxels: voxel 0 logits (0, 0) -> p = (1/2, 1/2); voxel 1 logits (ln 3, 0) -> p = (3/4, 1/4).

    Target (0, 1). Soft Dice with smooth 1, sums over the batch and voxels:
      class 0: I = 1/2,  sum p = 1/2 + 3/4 = 5/4, sum g = 1  -> (2*1/2 + 1) / (5/4 + 1 + 1) = 2 / (13/4) = 8/13
      class 1: I = 1/4,  sum p = 1/2 + 1/4 = 3/4, sum g = 1  -> (2*1/4 + 1) / (3/4 + 1 + 1) = (3/2) / (11/4) = 6/11
    -ln p of the true class: voxel 0 -> ln 2, voxel 1 -> -ln(1/4) = ln 4.
    """
    logits = torch.tensor([[[0.0, LN3], [0.0, 0.0]]])  # (B=1, K=2, X=2)
    target = torch.tensor([[[0, 1]]])  # (B=1, 1, X=2)
    return logits, target


def test_explog_matches_hand_computation():
    logits, target = _tiny()
    dice_term = ((-math.log(8 / 13)) ** 0.3 + (-math.log(6 / 11)) ** 0.3) / 2
    ce_term = (LN2**0.3 + LN4**0.3) / 2
    expected = 0.8 * dice_term + 0.2 * ce_term
    assert ExpLogLoss()(logits, target).item() == pytest.approx(expected, rel=1e-5)
    # (B, *spatial) target gives the same value
    assert ExpLogLoss()(logits, target[:, 0]).item() == pytest.approx(expected, rel=1e-5)


def test_explog_class_weights_and_include_background():
    logits, target = _tiny()
    loss = ExpLogLoss(class_weights=[1.0, 3.0], include_background=False)
    # Dice term only over class 1; CE term = mean(1 * (ln 2)^0.3, 3 * (ln 4)^0.3), not renormalised
    expected = 0.8 * (-math.log(6 / 11)) ** 0.3 + 0.2 * (LN2**0.3 + 3 * LN4**0.3) / 2
    assert loss(logits, target).item() == pytest.approx(expected, rel=1e-5)


def test_explog_log_dice_classes_mix_linear_and_log_terms():
    """``log_dice_classes`` picks the classes under the logarithm; with none named the loss is MONAI's Dice + CE."""
    logits, target = _tiny()
    ce = (LN2 + LN4) / 2
    mixed = ExpLogLoss(w_dice=1.0, w_ce=1.0, gamma_dice=1.0, gamma_ce=1.0, log_dice_classes=[1])
    assert mixed(logits, target).item() == pytest.approx(((1 - 8 / 13) + -math.log(6 / 11)) / 2 + ce, rel=1e-6)

    torch.manual_seed(0)
    logits = torch.randn(2, 3, 6, 7, 5)
    target = torch.randint(0, 3, (2, 1, 6, 7, 5))
    monai = DiceCELoss(to_onehot_y=True, softmax=True, batch=True, smooth_nr=1.0, smooth_dr=1.0)
    linear = ExpLogLoss(w_dice=1.0, w_ce=1.0, gamma_dice=1.0, gamma_ce=1.0, log_dice_classes=[])
    assert linear(logits, target).item() == pytest.approx(monai(logits, target).item(), rel=1e-5)
    # the default (None) is every class under the logarithm: the paper's loss
    assert ExpLogLoss(log_dice_classes=[0, 1, 2])(logits, target).item() == pytest.approx(
        ExpLogLoss()(logits, target).item(), rel=1e-6
    )


def test_explog_log_dice_class_keeps_a_collapsed_class_gradient():
    """A class predicted nowhere: under the logarithm its Dice gradient is 1 / Dice times the linear one."""
    target = torch.zeros(1, 1, 64, dtype=torch.long)
    target[..., :8] = 2
    target[..., 8:32] = 1
    logits = torch.zeros(1, 3, 64)
    logits[:, 2] = -6.0  # tumour collapsed: p_2 ~ 0.001 everywhere
    grads = {}
    for name, classes in (("linear", []), ("log", [2])):
        x = logits.clone().requires_grad_(True)
        ExpLogLoss(w_dice=1.0, w_ce=0.0, gamma_dice=1.0, log_dice_classes=classes)(x, target).backward()
        grads[name] = x.grad[0, 2, :8].abs().mean().item()
    assert grads["log"] > 5 * grads["linear"]


def test_explog_log_dice_classes_errors():
    with pytest.raises(ValueError, match="distinct channel indices"):
        ExpLogLoss(log_dice_classes=[1, 1])
    with pytest.raises(ValueError, match="distinct channel indices"):
        ExpLogLoss(log_dice_classes=[-1])
    logits, target = _tiny()
    with pytest.raises(ValueError, match="name a channel >= 2"):
        ExpLogLoss(log_dice_classes=[2])(logits, target)


def test_explog_gamma_one_ce_only_equals_cross_entropy():
    torch.manual_seed(0)
    logits, target = torch.randn(2, 3, 5, 6), torch.randint(0, 3, (2, 1, 5, 6))
    loss = ExpLogLoss(w_dice=0.0, w_ce=1.0, gamma_ce=1.0)
    assert loss(logits, target).item() == pytest.approx(F.cross_entropy(logits, target[:, 0]).item(), rel=1e-5)


def _reference_dice(probs, onehot, dims, smooth=1.0):
    return (2 * (probs * onehot).sum(dims) + smooth) / (probs.sum(dims) + onehot.sum(dims) + smooth)


def test_explog_dice_reduction_batch_vs_sample():
    torch.manual_seed(1)
    logits = torch.randn(2, 3, 4, 4)
    target = torch.zeros(2, 1, 4, 4, dtype=torch.long)
    target[0, 0, :2] = 1  # class 1 only in sample 0, class 2 only in sample 1
    target[1, 0, 2:, 2:] = 2
    probs = logits.softmax(1)
    onehot = F.one_hot(target[:, 0], 3).movedim(-1, 1).float()
    for mode, dims in (("batch", (0, 2, 3)), ("sample", (2, 3))):
        dice = _reference_dice(probs, onehot, dims)
        expected = ((-dice.log()) ** 0.3).mean()
        got = ExpLogLoss(w_dice=1.0, w_ce=0.0, dice_reduction=mode)(logits, target)
        assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    batch = ExpLogLoss(dice_reduction="batch")(logits, target)
    sample = ExpLogLoss(dice_reduction="sample")(logits, target)
    assert not torch.isclose(batch, sample)


def test_explog_gradients_finite_when_class_absent_and_prediction_perfect():
    # all voxels background, logits so confident that softmax gives p = 1 exactly in float32:
    # Dice_0 = 1, -ln p = 0 and absent classes have Dice 1 -> (-ln x)^0.3 would have an infinite slope.
    target = torch.zeros(2, 1, 4, 4, dtype=torch.long)
    logits = (100.0 * F.one_hot(target[:, 0], 3).movedim(-1, 1).float()).requires_grad_()
    loss = ExpLogLoss(include_background=True)(logits, target)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    # and with ordinary logits where class 2 is absent from the target
    logits2 = torch.randn(2, 3, 4, 4, requires_grad=True)
    target2 = torch.randint(0, 2, (2, 1, 4, 4))
    ExpLogLoss(dice_reduction="sample")(logits2, target2).backward()
    assert torch.isfinite(logits2.grad).all() and logits2.grad.abs().sum() > 0


def test_explog_optimisation_fits_target():
    torch.manual_seed(0)
    target = torch.zeros(1, 1, 6, 6, dtype=torch.long)
    target[0, 0, 1:3, 1:4] = 1
    target[0, 0, 4, 4] = 2  # a one-voxel "tumour"
    logits = torch.zeros(1, 3, 6, 6, requires_grad=True)
    loss_fn = ExpLogLoss(class_weights=[1.0, 2.0, 4.0])
    opt = torch.optim.Adam([logits], lr=0.1)
    first = loss_fn(logits, target).item()
    for _ in range(60):
        opt.zero_grad()
        loss = loss_fn(logits, target)
        loss.backward()
        opt.step()
    assert loss.item() < 0.3 * first
    assert torch.equal(logits.argmax(1, keepdim=True), target)


def test_loss_input_errors():
    logits = torch.randn(1, 2, 4, 4)
    with pytest.raises(ValueError, match=r"0\.\.1"):
        ExpLogLoss()(logits, torch.full((1, 1, 4, 4), 2))
    with pytest.raises(ValueError, match="shape"):
        ExpLogLoss()(logits, torch.zeros(1, 1, 4, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="class_weights"):
        ExpLogLoss(class_weights=[1.0, 1.0, 1.0])(logits, torch.zeros(1, 1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        CELoss()(logits, torch.full((1, 1, 4, 4), 0.5))
    with pytest.raises(ValueError, match="dice_reduction"):
        ExpLogLoss(dice_reduction="mean")
    with pytest.raises(ValueError, match="class_weights"):
        CELoss(class_weights=[1.0, -1.0])


def test_celoss_hand_values_and_layouts():
    logits, target = _tiny()
    # unweighted: mean(ln 2, ln 4) = 1.5 ln 2; weighted (1, 3): (1*ln 2 + 3*ln 4) / (1 + 3) = 7/4 ln 2
    assert CELoss()(logits, target).item() == pytest.approx(1.5 * LN2, rel=1e-6)
    assert CELoss(class_weights=[1.0, 3.0])(logits, target).item() == pytest.approx(1.75 * LN2, rel=1e-6)
    torch.manual_seed(0)
    x, y = torch.randn(2, 4, 3, 5), torch.randint(0, 4, (2, 3, 5))
    w = [0.5, 1.0, 2.0, 1.5]
    ref = F.cross_entropy(x, y, weight=torch.tensor(w))
    assert torch.allclose(CELoss(class_weights=w)(x, y.unsqueeze(1)), ref)
    assert torch.allclose(CELoss(class_weights=w)(x, y), ref)


class _Recorder(nn.Module):
    """Returns 1, 2, 3, ... on successive calls and records what it was given."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, logits, target):
        self.calls.append((tuple(logits.shape), target.clone()))
        return torch.tensor(float(len(self.calls)))


def test_deep_supervision_weights():
    ds = DeepSupervisionLoss(_Recorder())
    assert ds.get_weights(3) == pytest.approx([4 / 7, 2 / 7, 1 / 7])
    assert DeepSupervisionLoss(_Recorder(), weight_mode="equal").get_weights(4) == pytest.approx([0.25] * 4)
    assert DeepSupervisionLoss(_Recorder(), weights=[2, 1, 1]).get_weights(3) == pytest.approx([0.5, 0.25, 0.25])
    with pytest.raises(ValueError, match="3 weights but the net returned 2"):
        DeepSupervisionLoss(_Recorder(), weights=[2, 1, 1]).get_weights(2)
    with pytest.raises(ValueError, match="weight_mode"):
        DeepSupervisionLoss(_Recorder(), weight_mode="two")
    with pytest.raises(ValueError, match="weights"):
        DeepSupervisionLoss(_Recorder(), weights=[0.0, 0.0])
    # the recorder returns 1, 2, 3 for the three scales: 4/7*1 + 2/7*2 + 1/7*3 = 11/7
    outs = [torch.zeros(1, 2, 8, 8), torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 2, 2)]
    assert ds(outs, torch.zeros(1, 1, 8, 8, dtype=torch.long)).item() == pytest.approx(11 / 7)


def test_deep_supervision_target_picks_labels_not_averages():
    rec = _Recorder()
    ds = DeepSupervisionLoss(rec)
    target = torch.arange(64).reshape(1, 1, 8, 8)  # every voxel a distinct "label"
    outs = [torch.zeros(1, 2, 8, 8), torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 2, 2)]
    ds(outs, target)
    (s0, t0), (s1, t1), (s2, t2) = rec.calls
    assert [s0, s1, s2] == [(1, 2, 8, 8), (1, 2, 4, 4), (1, 2, 2, 2)]
    assert t0 is not None and torch.equal(t0, target)
    # nearest-exact: output voxel i samples input voxel floor((i + 0.5) * scale) -> 2i + 1 for x2, 4i + 2 for x4
    assert torch.equal(t1, target[..., 1::2, 1::2])
    assert torch.equal(t2, target[..., 2::4, 2::4])
    assert t1.dtype == torch.long and t2.dtype == torch.long
    # a binary map: downsampled values stay in {0, 1} (no 0.5 averages)
    checker = (torch.arange(64).reshape(1, 1, 8, 8) % 2).to(torch.uint8)
    assert set(downsample_labels(checker, (3, 3)).unique().tolist()) <= {0, 1}


def test_deep_supervision_target_layouts_and_anisotropic_scales():
    rec = _Recorder()
    ds = DeepSupervisionLoss(rec, weights=[1.0, 1.0, 0.0])
    target = torch.randint(0, 3, (2, 16, 32, 32))  # (B, *spatial): layout must be kept
    outs = [torch.zeros(2, 3, 16, 32, 32), torch.zeros(2, 3, 16, 16, 16), torch.zeros(2, 3, 8, 8, 8)]
    ds(outs, target)
    assert len(rec.calls) == 2  # zero-weight output skipped
    assert tuple(rec.calls[1][1].shape) == (2, 16, 16, 16)
    assert torch.equal(rec.calls[1][1], target[:, :, 1::2, 1::2])
    # a plain tensor goes straight through with the unchanged target
    rec2 = _Recorder()
    DeepSupervisionLoss(rec2)(outs[1], target)
    assert rec2.calls[0][0] == (2, 3, 16, 16, 16) and torch.equal(rec2.calls[0][1], target)
    with pytest.raises(ValueError, match="target must have shape"):
        ds([torch.zeros(1, 2, 4, 4)], torch.zeros(4))


def test_deep_supervision_with_monai_dicece_and_gradients():
    torch.manual_seed(0)
    inner = DiceCELoss(to_onehot_y=True, softmax=True)
    ds = DeepSupervisionLoss(inner)
    outs = [torch.randn(2, 3, 8, 8, requires_grad=True), torch.randn(2, 3, 4, 4, requires_grad=True)]
    target = torch.randint(0, 3, (2, 1, 8, 8))
    loss = ds(outs, target)
    expected = 2 / 3 * inner(outs[0], target) + 1 / 3 * inner(outs[1], target[..., 1::2, 1::2])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    assert all(o.grad is not None and torch.isfinite(o.grad).all() for o in outs)


def test_deep_supervision_loss_injectable_from_yaml_config():
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(DeepSupervisionLoss, "ds")
    cfg = parser.parse_object(
        {
            "ds": {
                "loss": {"class_path": "segzoo.losses.ExpLogLoss", "init_args": {"class_weights": [1.0, 2.0, 4.0]}},
                "weight_mode": "equal",
            }
        }
    )
    ds = parser.instantiate_classes(cfg).ds
    assert isinstance(ds.loss, ExpLogLoss) and ds.loss.class_weights.tolist() == [1.0, 2.0, 4.0]
    assert ds.get_weights(2) == pytest.approx([0.5, 0.5])


def test_deep_supervision_checks_segzoo_loss_labels_once_and_still_raises(monkeypatch):
    import segzoo.losses._target as target_module

    calls = []
    real = target_module.torch.aminmax
    monkeypatch.setattr(target_module.torch, "aminmax", lambda t: calls.append(1) or real(t))
    ds = DeepSupervisionLoss(ExpLogLoss())
    outs = [torch.randn(2, 3, 8, 16, 16), torch.randn(2, 3, 8, 8, 8), torch.randn(2, 3, 4, 4, 4)]
    target = torch.randint(0, 3, (2, 1, 8, 16, 16))
    loss = ds(outs, target)
    assert len(calls) == 1  # one value-range pass (one device sync on a GPU) for three outputs
    expected = sum(w * ExpLogLoss()(o, downsample_labels(target, o.shape[2:])) for w, o in zip(ds.get_weights(3), outs))
    torch.testing.assert_close(loss, expected)
    with pytest.raises(ValueError, match=r"0\.\.2.*got values in 0\.\.3"):
        ds(outs, target.clamp(max=2) + (target == 2).long())  # a label 3 with 3 classes
    calls.clear()
    ExpLogLoss()(outs[0], target)  # outside deep supervision the check is back on
    assert len(calls) == 1
