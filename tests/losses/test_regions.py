"""nnU-Net region labels: masks from label maps, the region loss on them, and region outputs back to label maps."""

import itertools

import numpy as np
import pytest
import torch
from monai.losses import DiceCELoss

from segzoo.losses import DeepSupervisionLoss, RegionLoss, region_targets
from segzoo.metrics.labels import label_scores
from segzoo.nets.regions import RegionScores, region_class_probabilities

BRATS = [[1, 2, 3], [2, 3], [3]]  # whole tumour, tumour core, enhancing (nnU-Net's BraTS regions)
ORDER = [1, 2, 3]


def test_region_targets_by_hand():
    label = torch.tensor([[[0, 1, 2, 3]]])  # (B=1, 1, 4)
    masks = region_targets(label, BRATS)
    assert masks.shape == (1, 3, 4)
    assert masks[0].tolist() == [[0, 1, 1, 1], [0, 0, 1, 1], [0, 0, 0, 1]]


def paint(p: np.ndarray, order) -> np.ndarray:
    """nnU-Net's painting: regions in order, probability > 0.5, later over earlier."""
    out = np.zeros(p.shape[1:], dtype=np.int64)
    for i, v in enumerate(order):
        out[p[i] > 0.5] = v
    return out


def test_class_distribution_sums_to_one_and_matches_painting_away_from_the_threshold():
    # every combination of confident region probabilities (0.05 or 0.95 per region), in every voxel
    combos = np.array(list(itertools.product([0.05, 0.95], repeat=3)), dtype=np.float32).T  # (3, 8)
    p = torch.from_numpy(combos)[None, :, :, None]  # (1, 3, 8, 1)
    probs = region_class_probabilities(p, ORDER, 4)
    np.testing.assert_allclose(probs.sum(1).numpy(), 1.0, atol=1e-5)
    np.testing.assert_array_equal(probs.argmax(1)[0].numpy(), paint(combos[..., None], ORDER))
    # by hand for one voxel: p = (0.95, 0.95, 0.05): P(bg) = .05*.05*.95, P(3) = .05, P(2) = .95*.95, P(1) = .95*.05*.95
    v = region_class_probabilities(torch.tensor([0.95, 0.95, 0.05]).view(1, 3, 1), ORDER, 4)[0, :, 0].numpy()
    np.testing.assert_allclose(v, [0.05 * 0.05 * 0.95, 0.95 * 0.05 * 0.95, 0.95 * 0.95, 0.05], rtol=1e-5)


def test_region_scores_wraps_a_net_for_softmax_consumers():
    net = torch.nn.Conv3d(2, 3, 1)
    wrapped = RegionScores(net, ORDER, 4).eval()
    x = torch.randn(1, 2, 4, 4, 4)
    out = wrapped(x)
    assert out.shape == (1, 4, 4, 4, 4)
    expected = region_class_probabilities(torch.sigmoid(net(x)), ORDER, 4)
    torch.testing.assert_close(torch.softmax(out, 1), expected, atol=1e-5, rtol=1e-5)


def test_region_loss_inside_deep_supervision_trains_towards_the_masks():
    torch.manual_seed(0)
    label = torch.randint(0, 4, (2, 1, 8, 8, 8))
    loss = DeepSupervisionLoss(RegionLoss(DiceCELoss(sigmoid=True)))
    with pytest.raises(ValueError, match="no regions"):
        loss([torch.zeros(2, 3, 8, 8, 8)], label)
    loss.loss.bind_regions(BRATS)
    perfect = (region_targets(label, BRATS) * 20 - 10).float()  # logits agreeing with the masks
    wrong = -perfect
    outs = [perfect, torch.nn.functional.avg_pool3d(perfect, 2)]
    assert loss(outs, label) < loss([wrong, torch.nn.functional.avg_pool3d(wrong, 2)], label)


def test_label_metric_scores_regions():
    pred = np.array([[[0, 1, 2, 3]]])
    ref = np.array([[[0, 1, 3, 3]]])
    scores = label_scores(pred, ref, {0: "bg", 1: "a", 2: "b", 3: "c"}, hd95=False, regions=dict(zip("WTE", BRATS)))
    assert scores["region W/dice"] == 1.0 and scores["region T/dice"] == 1.0
    assert scores["region E/dice"] == pytest.approx(2 * 1 / (1 + 2))
    assert scores["mean/dice"] == pytest.approx(np.mean([1.0, 1.0, 2 / 3]))
