"""SlidingWindowTTAInferer against MONAI's sliding_window_inference run once per flip."""

from __future__ import annotations

import pytest
import torch
from monai.inferers import sliding_window_inference
from torch import nn

from segzoo.inference import SlidingWindowTTAInferer, flip_combinations

ROI = (8, 8, 8)


def small_net(seed: int = 0, out_channels: int = 3) -> nn.Module:
    """A tiny conv net with zero padding, so a window's prediction depends on where the window lies."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv3d(1, 4, 3, padding=1), nn.LeakyReLU(0.1), nn.Conv3d(4, out_channels, 3, padding=1)
    ).eval()


def monai_probs(x, net, flip=(), per_window=False, roi=ROI, sw_batch_size=2, activation=True):
    """One MONAI pass for one flip: flip each window (per_window) or the whole volume, predict, flip back."""
    dims = [a + 2 for a in flip]

    def act(y):
        return torch.softmax(y, dim=1) if activation else y

    if per_window:
        predictor = (lambda w: act(net(w.flip(dims))).flip(dims)) if dims else (lambda w: act(net(w)))
        return sliding_window_inference(x, roi, sw_batch_size, predictor, overlap=0.5, mode="gaussian")
    xf = x.flip(dims) if dims else x
    out = sliding_window_inference(xf, roi, sw_batch_size, lambda w: act(net(w)), overlap=0.5, mode="gaussian")
    return out.flip(dims) if dims else out


def test_flip_combinations():
    assert flip_combinations(None) == [()]
    assert flip_combinations((0, 2)) == [(), (0,), (2,), (0, 2)]
    assert len(flip_combinations((0, 1, 2))) == 8


def test_no_tta_matches_plain_monai():
    net = small_net()
    x = torch.randn(2, 1, 11, 14, 13)  # irregular sizes: the last window is shifted back, overlaps differ
    for axes in (None, ()):
        ours = SlidingWindowTTAInferer(ROI, mirror_axes=axes)(x, net)
        with torch.no_grad():
            ref = monai_probs(x, net)
        assert ours.shape == (2, 3, 11, 14, 13)
        torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ours.sum(1), torch.ones(2, 11, 14, 13), atol=1e-5, rtol=0)


def test_tta_equals_monai_once_per_window_flip():
    net = small_net(1)
    x = torch.randn(1, 1, 11, 14, 13)
    ours = SlidingWindowTTAInferer(ROI, sw_batch_size=3, mirror_axes=(0, 1, 2))(x, net)
    with torch.no_grad():
        ref = torch.stack([monai_probs(x, net, f, per_window=True) for f in flip_combinations((0, 1, 2))]).mean(0)
        no_tta = monai_probs(x, net)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-5)
    assert (ours - no_tta).abs().max() > 1e-3  # the flips really changed something


def test_tta_equals_monai_whole_volume_flips_on_symmetric_grid():
    # sizes 16, 12, 20 with roi 8 and step 4 give mirror-symmetric window grids, so flipping the whole volume
    # and flipping each window place the same windows
    net = small_net(2)
    x = torch.randn(1, 1, 16, 12, 20)
    ours = SlidingWindowTTAInferer(ROI, mirror_axes=(0, 2))(x, net)
    with torch.no_grad():
        ref = torch.stack([monai_probs(x, net, f) for f in flip_combinations((0, 2))]).mean(0)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-5)


def test_flip_equivariant_net_tta_equals_no_tta():
    net = small_net(3)
    with torch.no_grad():  # symmetrise every kernel over the 8 flips: net(flip(x)) == flip(net(x))
        for m in net:
            if isinstance(m, nn.Conv3d):
                m.weight.copy_(sum(m.weight.flip([a + 2 for a in f]) for f in flip_combinations((0, 1, 2))) / 8)
    x = torch.randn(1, 1, 11, 14, 13)
    tta = SlidingWindowTTAInferer(ROI, mirror_axes=(0, 1, 2))(x, net)
    plain = SlidingWindowTTAInferer(ROI, mirror_axes=None)(x, net)
    torch.testing.assert_close(tta, plain, atol=1e-6, rtol=1e-5)


def test_small_input_is_padded_and_cropped_back():
    net = small_net(4)
    x = torch.randn(1, 1, 5, 8, 11)  # smaller than the roi along the first axis
    ours = SlidingWindowTTAInferer(ROI, mirror_axes=(1,))(x, net)
    with torch.no_grad():
        ref = torch.stack([monai_probs(x, net, f, per_window=True) for f in flip_combinations((1,))]).mean(0)
    assert ours.shape == (1, 3, 5, 8, 11)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-5)


def test_outputs_logits_and_labels_and_batch_size_independence():
    net = small_net(5)
    x = torch.randn(1, 1, 12, 12, 12)
    probs = SlidingWindowTTAInferer(ROI, sw_batch_size=1, mirror_axes=(0, 1))(x, net)
    probs4 = SlidingWindowTTAInferer(ROI, sw_batch_size=4, mirror_axes=(0, 1))(x, net)
    torch.testing.assert_close(probs, probs4, atol=1e-6, rtol=1e-5)
    labels = SlidingWindowTTAInferer(ROI, mirror_axes=(0, 1), output="labels")(x, net)
    assert labels.shape == (1, 1, 12, 12, 12) and labels.dtype == torch.long
    assert torch.equal(labels, probs.argmax(1, keepdim=True))
    logits = SlidingWindowTTAInferer(ROI, mirror_axes=(0, 1), output="logits")(x, net)
    with torch.no_grad():
        ref = torch.stack(
            [monai_probs(x, net, f, per_window=True, activation=False) for f in flip_combinations((0, 1))]
        ).mean(0)
    torch.testing.assert_close(logits, ref, atol=1e-5, rtol=1e-5)


class DeepSupervised(nn.Module):
    """Returns a list like a deeply supervised net in training mode: full resolution first."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        y = self.net(x)
        return [y, y[:, :, ::2, ::2, ::2] * 0]


def test_list_output_uses_first_element_and_2d_works():
    net = small_net(6)
    x = torch.randn(1, 1, 12, 12, 12)
    inferer = SlidingWindowTTAInferer(ROI, mirror_axes=(2,))
    torch.testing.assert_close(inferer(x, DeepSupervised(net)), inferer(x, net))
    torch.manual_seed(0)
    net2d = nn.Conv2d(2, 4, 3, padding=1)
    x2 = torch.randn(1, 2, 20, 9)
    ours = SlidingWindowTTAInferer((8, 8), mirror_axes=(0, 1))(x2, net2d)
    with torch.no_grad():
        ref = torch.stack([monai_probs(x2, net2d, f, True, roi=(8, 8)) for f in flip_combinations((0, 1))]).mean(0)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-5)


def test_importance_map_cached_and_gaussian():
    inferer = SlidingWindowTTAInferer((8, 6, 4))
    m = inferer.importance_map("cpu")
    assert m.shape == (8, 6, 4)
    assert inferer.importance_map("cpu") is m
    assert m[4, 3, 2] == m.max() and m[0, 0, 0] < m.max()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(mirror_axes=(0, 3)), "mirror_axes"),
        (dict(mirror_axes=(1, 1)), "mirror_axes"),
        (dict(overlap=1.0), "overlap"),
        (dict(mode="linear"), "mode"),
        (dict(output="mask"), "output"),
        (dict(sw_batch_size=0), "sw_batch_size"),
        (dict(padding_mode="zeros"), "padding_mode"),
        (dict(max_batch=0), "max_batch"),
        (dict(max_batch="all"), "max_batch"),
        (dict(amp_dtype="float8"), "amp_dtype"),
        (dict(memory_budget_gb=0), "memory_budget_gb"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SlidingWindowTTAInferer(ROI, **kwargs)


def test_bad_input_shape():
    with pytest.raises(ValueError, match=r"\(B, C, \*spatial\)"):
        SlidingWindowTTAInferer(ROI)(torch.zeros(1, 12, 12, 12), small_net())
    with pytest.raises(ValueError, match="roi_size"):
        SlidingWindowTTAInferer((8, 0, 8))


# ------------------------------------------------------------------------------------------- fast / low-memory paths
class CountingNet(nn.Module):
    """Wraps a net and records the batch size of every forward pass."""

    def __init__(self, net):
        super().__init__()
        self.net, self.batches = net, []

    def forward(self, x):
        self.batches.append(x.shape[0])
        return self.net(x)


@pytest.mark.parametrize("max_batch", [1, 3, 6, 16, 100])
def test_max_batch_splits_flips_and_gives_the_same_result(max_batch):
    net = CountingNet(small_net(4))
    x = torch.randn(1, 1, 11, 14, 13)
    full = SlidingWindowTTAInferer(ROI, sw_batch_size=2, mirror_axes=(0, 1, 2), max_batch=None)(x, net)
    assert max(net.batches) == 16  # 2 windows x 8 flips per pass
    net.batches.clear()
    chunked = SlidingWindowTTAInferer(ROI, sw_batch_size=2, mirror_axes=(0, 1, 2), max_batch=max_batch)(x, net)
    assert max(net.batches) <= max(max_batch, 2)  # at least the windows of one flip go together
    if max_batch < 16:
        assert len(net.batches) > 4  # really split
    torch.testing.assert_close(chunked, full, atol=1e-6, rtol=1e-5)


def test_amp_bf16_close_to_float32_and_output_float32():
    net = small_net(5)
    x = torch.randn(1, 1, 12, 12, 12)
    ref = SlidingWindowTTAInferer(ROI, mirror_axes=(0, 1))(x, net)
    dtypes = []
    handle = net[0].register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    out = SlidingWindowTTAInferer(ROI, mirror_axes=(0, 1), amp=True)(x, net)
    handle.remove()
    assert set(dtypes) == {torch.bfloat16}  # the convolutions really ran in bf16
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, atol=2e-2, rtol=0)
    assert (out - ref).abs().max() > 0  # and it is not the float32 path


def test_output_device_plan():
    inferer = SlidingWindowTTAInferer(ROI, device="auto")
    cuda = torch.device("cuda")
    x = torch.zeros(1, 1, 600, 512, 512, device="meta")  # no memory is allocated for a meta tensor
    # 3 classes + count map + input, float32: 5 x 4 B x 157 M voxels = 2.9 GiB
    assert inferer.output_device(x, 3, cuda, free_bytes=8 * 2**30) == cuda  # fits in half of 8 GiB free
    assert inferer.output_device(x, 3, cuda, free_bytes=4 * 2**30) == torch.device("cpu")  # streamed
    assert inferer.output_device(x, 3, torch.device("cpu"), free_bytes=0) == torch.device("cpu")
    budget = SlidingWindowTTAInferer(ROI, device="auto", memory_budget_gb=3.0)
    assert budget.output_device(x, 3, cuda, free_bytes=0) == cuda  # an explicit budget wins over free memory
    assert budget.output_device(x, 4, cuda, free_bytes=0) == torch.device("cpu")


def test_device_auto_on_cpu_equals_default():
    net = small_net(6)
    x = torch.randn(1, 1, 11, 14, 13)
    ref = SlidingWindowTTAInferer(ROI, mirror_axes=(0,))(x, net)
    out = SlidingWindowTTAInferer(ROI, mirror_axes=(0,), device="auto")(x, net)
    assert out.device == x.device
    torch.testing.assert_close(out, ref, atol=0, rtol=0)


def test_max_batch_auto_is_one_flip_per_pass_on_cpu():
    net = CountingNet(small_net(7))
    x = torch.randn(1, 1, 11, 14, 13)
    out = SlidingWindowTTAInferer(ROI, sw_batch_size=2, mirror_axes=(0, 1, 2))(x, net)  # default "auto"
    assert max(net.batches) == 2  # CPU windows: the sw_batch_size windows of one flip per pass
    ref = SlidingWindowTTAInferer(ROI, sw_batch_size=2, mirror_axes=(0, 1, 2), max_batch=None)(x, small_net(7))
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)
