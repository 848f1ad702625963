"""Body crop and coarse-to-fine in SlidingWindowTTAInferer: exact equality with the whole-case sliding window."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from segzoo.inference import SlidingWindowTTAInferer
from segzoo.inference.crop import (
    body_box,
    expand_box,
    fit_box,
    foreground_boxes,
    intersects,
    merge_boxes,
    region_mask,
)

ROI = (10, 12, 12)  # one window along the slices: 7 x 7 windows on the whole case
FLOOR = -2.0  # the clip floor of a z-scored CT: air (and fat) sit exactly here


def phantom(kidney_at_border: bool = False, seed: int = 0) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """A (1, 1, 10, 48, 44) case: air at FLOOR, a box-shaped body with noisy tissue, one bright "kidney" blob.

    Returns the case and the body's bounding box. With ``kidney_at_border`` the kidney lies on the body's edge, so
    it touches the crop border when the margin is 0.
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.full((1, 1, 10, 48, 44), FLOOR)
    body = (slice(0, 10), slice(14, 33), slice(9, 31))
    x[(0, 0, *body)] = 0.2 * torch.randn(10, 19, 22, generator=g)
    x[0, 0, 3, 5, 40] = 1.0  # a speck in the air: not the largest component, must not widen the box
    if kidney_at_border:
        x[0, 0, 3:7, 14:19, 20:25] = 3.0  # first body rows: the kidney touches the box's upper border
    else:
        x[0, 0, 3:7, 20:25, 18:23] = 3.0
    return x, body


def detector(seed: int = 0) -> nn.Module:
    """Conv net with zero padding (window-position dependent) whose argmax marks the bright blob as class 1/2."""
    torch.manual_seed(seed)
    conv1 = nn.Conv3d(1, 4, 3, padding=1)
    conv2 = nn.Conv3d(4, 3, 3, padding=1)
    with torch.no_grad():
        conv1.weight.mul_(0.2).add_(1.0 / 27)  # a smoothed intensity plus some random texture
        conv1.bias.zero_()
        conv2.weight.mul_(0.1)
        conv2.weight[0].sub_(0.15)  # background logit falls with intensity
        conv2.weight[1].add_(0.1)
        conv2.bias.copy_(torch.tensor([2.0, -1.5, -2.5]))
    return nn.Sequential(conv1, nn.LeakyReLU(0.1), conv2).eval()


class NoAirWindows(nn.Module):
    """Wraps a net and fails when a window holds nothing but air (a window entirely outside the body ran)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.windows = 0
        self.out_channels = 3  # as MONAI nets say it: the inferer needs no probe window to learn it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(x.shape[0], -1)
        assert bool((flat > FLOOR).any(dim=1).all()), "a window entirely in the air was run"
        self.windows += x.shape[0]
        return self.net(x)


def dice(a: torch.Tensor, b: torch.Tensor) -> float:
    inter = (a & b).sum().item()
    return 1.0 if a.sum() + b.sum() == 0 else 2 * inter / (a.sum() + b.sum()).item()


def test_body_box_largest_component_and_margin():
    x, body = phantom()
    assert body_box(x[0]) == body  # the speck at (3, 5, 40) is smaller than the body
    assert body_box(x[0], margin=(1, 2, 3)) == (slice(0, 10), slice(12, 35), slice(6, 34))
    assert body_box(x[0], margin=100) == (slice(0, 10), slice(0, 48), slice(0, 44))
    assert body_box(torch.full((1, 4, 5, 6), 3.0)) == (slice(0, 4), slice(0, 5), slice(0, 6))  # nothing above
    assert body_box(x[0], threshold=2.5) == (slice(3, 7), slice(20, 25), slice(18, 23))  # only the kidney
    # numpy input and a second channel that adds a voxel far away (kept: it joins no component, but channel 0's
    # body stays the largest)
    two = np.concatenate([x[0].numpy(), np.full_like(x[0].numpy(), FLOOR)])
    assert body_box(two) == body


def test_box_helpers():
    shape = (10, 20, 30)
    assert expand_box((slice(2, 4), slice(0, 5), slice(25, 30)), 3, shape) == (slice(0, 7), slice(0, 8), slice(22, 30))
    assert fit_box((slice(4, 6), slice(0, 2), slice(28, 30)), (4, 6, 8), shape) == (
        slice(3, 7),
        slice(0, 6),
        slice(22, 30),
    )
    assert fit_box((slice(0, 10),), (16,), (10,)) == (slice(0, 10),)  # never beyond the case
    assert intersects((slice(0, 4), slice(0, 4)), (slice(3, 9), slice(3, 9)))
    assert not intersects((slice(0, 4), slice(0, 4)), (slice(4, 9), slice(0, 9)))  # half-open: touching is not
    labels = torch.zeros(8, 8, 8, dtype=torch.long)
    labels[1:3, 1:3, 1:3] = 1
    labels[6, 6, 6] = 2
    labels[2, 3, 3] = 1  # diagonal neighbour: same component (26-connectivity)
    boxes = foreground_boxes(labels, margin=1, offset=(10, 0, 0), shape=(20, 8, 8))
    assert boxes == [(slice(10, 14), slice(0, 5), slice(0, 5)), (slice(15, 18), slice(5, 8), slice(5, 8))]
    assert foreground_boxes(torch.zeros(3, 3, 3), 1) == []
    a, b, c = (slice(0, 4), slice(0, 4)), (slice(3, 6), slice(2, 9)), (slice(10, 12), slice(0, 2))
    assert merge_boxes([a, c, b]) == [(slice(0, 6), slice(0, 9)), c]
    assert merge_boxes([a, (slice(5, 8), slice(5, 8)), (slice(3, 6), slice(3, 6))]) == [(slice(0, 8), slice(0, 8))]
    mask = region_mask(boxes, (20, 8, 8))
    assert mask.sum().item() == 4 * 5 * 5 + 3 * 3 * 3


@pytest.mark.parametrize("kidney_at_border", [False, True])
@pytest.mark.parametrize("output", ["probabilities", "logits"])
def test_crop_is_exact_inside_the_box_and_background_outside(kidney_at_border, output):
    x, body = phantom(kidney_at_border)
    net = detector()
    common = dict(sw_batch_size=3, overlap=0.5, mirror_axes=(0, 2), output=output)
    full = SlidingWindowTTAInferer(ROI, **common)(x, net)
    counted = NoAirWindows(net)
    inferer = SlidingWindowTTAInferer(ROI, crop=True, crop_margin=0, **common)
    ours = inferer(x, counted)
    inside = (slice(None), slice(None), *body)
    torch.testing.assert_close(ours[inside], full[inside], atol=1e-6, rtol=1e-6)
    outside = ~region_mask([body], x.shape[2:])
    background = torch.tensor([1.0, 0.0, 0.0] if output == "probabilities" else [0.0, -1e4, -1e4])
    assert torch.equal(ours[0][:, outside].T, background.expand(int(outside.sum()), 3))
    stats = inferer.last_stats[0]
    assert stats["body_box"] == body
    assert 0 < stats["windows_run"] < stats["windows_total"]
    assert counted.windows == stats["windows_run"] * 4  # every flip of every window that ran, nothing else
    # the kidney (label > 0) of the whole-case result: inside the box voxel for voxel, border or not
    kidney = full.argmax(1) > 0
    assert kidney.sum() > 20
    assert torch.equal((ours.argmax(1) > 0)[(slice(None), *body)], kidney[(slice(None), *body)])
    if kidney_at_border:
        assert kidney[0, :, body[1].start].any()  # really on the crop border
        assert kidney[0, :, body[1].start - 1].any()  # and the net's kidney bleeds into the air beyond it:
        assert not torch.equal(ours.argmax(1) > 0, kidney)  # margin 0 loses those voxels,
    # the default margin keeps every kidney voxel of the whole-case result
    ours = SlidingWindowTTAInferer(ROI, crop=True, **common)(x, net)
    assert torch.equal(ours.argmax(1) > 0, kidney)


def test_crop_labels_output_and_batch():
    a, _ = phantom(seed=1)
    b, _ = phantom(kidney_at_border=True, seed=2)
    x = torch.cat([a, b])
    net = detector(1)
    full = SlidingWindowTTAInferer(ROI, sw_batch_size=2, output="labels", mirror_axes=(1, 2))(x, net)
    inferer = SlidingWindowTTAInferer(ROI, sw_batch_size=2, output="labels", mirror_axes=(1, 2), crop=True)
    ours = inferer(x, net)
    assert ours.shape == (2, 1, 10, 48, 44) and ours.dtype == torch.long
    assert torch.equal(ours, full)
    assert len(inferer.last_stats) == 2


def test_crop_regrid_pastes_at_the_right_place():
    """Re-placed windows: a pointwise net gives the same answer wherever the windows lie, so the crop's result must
    equal the whole case's inside the box; fewer windows run than with the whole case's grid."""
    x, body = phantom()
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv3d(1, 3, 1)).eval()
    full = SlidingWindowTTAInferer(ROI)(x, net)
    regrid = SlidingWindowTTAInferer(ROI, crop=True, crop_grid="crop")
    exact = SlidingWindowTTAInferer(ROI, crop=True)
    ours = regrid(x, net)
    exact(x, net)
    inside = (slice(None), slice(None), *body)
    torch.testing.assert_close(ours[inside], full[inside], atol=1e-5, rtol=1e-5)
    assert torch.equal(ours[0, 0, :, :, :5], torch.ones(10, 48, 5))  # body from column 9, margin 4
    assert regrid.last_stats[0]["windows_total"] < exact.last_stats[0]["windows_total"]
    assert regrid.last_stats[0]["windows_run"] < exact.last_stats[0]["windows_run"]


@pytest.mark.parametrize("kidney_at_border", [False, True])
def test_coarse_to_fine_exact_inside_its_boxes(kidney_at_border):
    x, body = phantom(kidney_at_border)
    net = detector()
    full = SlidingWindowTTAInferer(ROI, sw_batch_size=2)(x, net)
    inferer = SlidingWindowTTAInferer(ROI, sw_batch_size=2, crop=True, coarse_to_fine=True, coarse_margin=(1, 3, 3))
    ours = inferer(x, net)
    stats = inferer.last_stats[0]
    boxes, cropped = stats["boxes"], stats["body_box"]
    assert boxes and all(all(b.start >= s.start and b.stop <= s.stop for b, s in zip(box, cropped)) for box in boxes)
    inside = region_mask(boxes, x.shape[2:])
    torch.testing.assert_close(ours[0][:, inside], full[0][:, inside], atol=1e-6, rtol=1e-6)
    assert (ours[0, 0][~inside] == 1).all()
    assert dice(ours.argmax(1) > 0, full.argmax(1) > 0) == 1.0
    crop_only = SlidingWindowTTAInferer(ROI, sw_batch_size=2, crop=True)
    crop_only(x, net)
    assert stats["windows_run"] < crop_only.last_stats[0]["windows_run"]
    assert stats["coarse_windows"] < stats["windows_total"]


def test_coarse_to_fine_select_drops_what_the_postprocessing_drops():
    """``coarse_select`` (what ``segzoo infer`` sets to the checkpoint's post-processing): a small false positive far
    from the kidney makes no fine box, fewer windows run, and the post-processed answer equals the full one's."""
    from segzoo.inference.postprocess import KiTSPostprocess

    x, _ = phantom()
    x[0, 0, 2:4, 29:31, 10:12] = 3.0  # a small bright speck in the body, far from the kidney: a false positive
    net = detector()
    full = SlidingWindowTTAInferer(ROI, sw_batch_size=2)(x, net).argmax(1)[0].numpy()
    post = KiTSPostprocess(min_relative_size=0.25)
    runs = {}
    for name, select in (("all", None), ("select", post)):
        inferer = SlidingWindowTTAInferer(
            ROI, sw_batch_size=2, crop=True, coarse_to_fine=True, coarse_margin=(1, 3, 3), coarse_select=select
        )
        labels = inferer(x, net).argmax(1)[0].numpy()
        runs[name] = inferer.last_stats[0]
        assert np.array_equal(post(labels), post(full))
    assert len(runs["all"]["boxes"]) == 2 and len(runs["select"]["boxes"]) == 1  # the speck's box is gone
    assert runs["select"]["windows_run"] < runs["all"]["windows_run"]


def test_coarse_to_fine_regrid_pastes_each_box():
    """Re-placed windows around the coarse boxes: equal to the whole case inside them for a pointwise net."""
    x, _ = phantom()
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv3d(1, 3, 1)).eval()
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([-1.0, 1.0, 0.5]).view(3, 1, 1, 1, 1))
        net[0].bias.copy_(torch.tensor([1.0, -1.5, -2.0]))  # class 1 where the intensity is above 1.25
    full = SlidingWindowTTAInferer(ROI, mirror_axes=None)(x, net)
    inferer = SlidingWindowTTAInferer(ROI, mirror_axes=None, crop=True, crop_grid="crop", coarse_to_fine=True)
    ours = inferer(x, net)
    boxes = inferer.last_stats[0]["boxes"]
    inside = region_mask(boxes, x.shape[2:])
    torch.testing.assert_close(ours[0][:, inside], full[0][:, inside], atol=1e-5, rtol=1e-5)
    assert torch.equal(ours.argmax(1), full.argmax(1))
    assert inferer.last_stats[0]["windows_total"] < 49


def test_coarse_to_fine_without_foreground_falls_back_to_the_crop():
    x, body = phantom()
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv3d(1, 3, 3, padding=1)).eval()
    with torch.no_grad():
        net[0].weight.zero_()
        net[0].bias.copy_(torch.tensor([5.0, 0.0, 0.0]))  # background everywhere
    c2f = SlidingWindowTTAInferer(ROI, crop=True, coarse_to_fine=True)
    crop = SlidingWindowTTAInferer(ROI, crop=True)
    assert torch.equal(c2f(x, net), crop(x, net))
    assert c2f.last_stats[0]["boxes"] == [body_box(x[0], margin=4)] == [crop.last_stats[0]["body_box"]]


def test_crop_arguments_are_checked():
    with pytest.raises(ValueError, match="crop_grid"):
        SlidingWindowTTAInferer(ROI, crop_grid="box")
    with pytest.raises(ValueError, match="crop_margin"):
        SlidingWindowTTAInferer(ROI, crop_margin=(1, 2))
    with pytest.raises(ValueError, match="coarse_overlap"):
        SlidingWindowTTAInferer(ROI, coarse_overlap=1.0)


@pytest.mark.parametrize("output", [pytest.param("probabilities", marks=pytest.mark.slow), "logits"])
def test_crop_exact_equals_full_inside_the_box_for_a_random_net(output):
    """Exactness by construction, whatever the net: an untrained segzoo net (instance norm, so every window's output
    depends on the whole window), 8 flips, a body box with a kidney-bright blob on its border. Every voxel inside the
    box gets the whole-case value (float tolerance), windows that miss the box never run, background outside."""
    import segzoo

    torch.manual_seed(3)
    net = segzoo.create_net("mss_unet3d_small", base_features=4, max_features=16, deep_supervision=False).eval()
    roi = (8, 32, 32)
    g = torch.Generator().manual_seed(1)
    x = torch.full((1, 1, 20, 120, 112), FLOOR)
    body = (slice(0, 20), slice(40, 83), slice(30, 79))
    x[(0, 0, *body)] = 0.3 * torch.randn(20, 43, 49, generator=g)  # never down to the floor
    x[0, 0, 5:12, 40:48, 50:60] = 3.0  # on the box's upper border
    common = dict(sw_batch_size=2, overlap=0.5, mirror_axes=(0, 1, 2), output=output)
    full = SlidingWindowTTAInferer(roi, **common)(x, net)
    inferer = SlidingWindowTTAInferer(roi, crop=True, crop_margin=0, **common)
    ours = inferer(x, net)
    inside = (slice(None), slice(None), *body)
    torch.testing.assert_close(ours[inside], full[inside], atol=1e-5, rtol=1e-5)
    assert torch.equal(ours.argmax(1)[(slice(None), *body)], full.argmax(1)[(slice(None), *body)])
    outside = ~region_mask([body], x.shape[2:])
    assert (ours[0, 0][outside] == (1.0 if output == "probabilities" else 0.0)).all()
    stats = inferer.last_stats[0]
    assert stats["body_box"] == body and 0 < stats["windows_run"] < stats["windows_total"]


def test_regrid_boxes_whose_grown_grids_overlap_each_keep_their_own_result():
    """Two coarse boxes close together: each is predicted on its own grid (grown to the window size, so the grids
    overlap) and only the box itself is pasted; a pointwise net gives the whole-case result in both boxes."""
    x = torch.full((1, 1, 10, 48, 60), FLOOR)
    x[0, 0, :, 10:40, 5:55] = 0.1
    x[0, 0, 3:7, 20:26, 12:18] = 3.0
    x[0, 0, 3:7, 20:26, 22:28] = 3.0  # 4 columns apart: the boxes (margin 1) stay apart, their 12-wide grids overlap
    net = nn.Sequential(nn.Conv3d(1, 3, 1)).eval()
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([-1.0, 1.0, 0.5]).view(3, 1, 1, 1, 1))
        net[0].bias.copy_(torch.tensor([1.0, -1.5, -2.0]))
    full = SlidingWindowTTAInferer(ROI, mirror_axes=None)(x, net)
    inferer = SlidingWindowTTAInferer(
        ROI, mirror_axes=None, crop=True, crop_grid="crop", coarse_to_fine=True, coarse_margin=1
    )
    ours = inferer(x, net)
    boxes = inferer.last_stats[0]["boxes"]
    assert len(boxes) == 2 and not intersects(boxes[0], boxes[1])
    assert inferer.last_stats[0]["windows_run"] == 2  # one window per box
    inside = region_mask(boxes, x.shape[2:])
    torch.testing.assert_close(ours[0][:, inside], full[0][:, inside], atol=1e-5, rtol=1e-5)
    assert torch.equal(ours.argmax(1), full.argmax(1))
