"""KiTS19 training augmentation: exact crops, aligned image/label warps, margins, gamma, flips, worker seeding."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from segzoo.data.augment import AugmentConfig
from segzoo.data.cache import preprocess_dataset
from segzoo.data.datamodule import PatchDataset
from segzoo.data.kits19 import find_kits19_cases
from segzoo.data.preprocessor import CTPreprocessor
from segzoo.data.synthetic.kits19 import write_kits19
from segzoo.data.transforms import RandSpatialAugmentd, augmentation_input_size, build_kits19_transforms

PATCH = (8, 24, 20)


pytestmark = pytest.mark.usefixtures("one_thread")


def _blob(size):
    lab = torch.zeros(1, *size, dtype=torch.uint8)
    d, h, w = size
    lab[:, d // 4 : 3 * d // 4, h // 4 : h // 2, w // 3 : 2 * w // 3] = 1
    lab[:, d // 3 : d // 2, h // 3 : h // 2 + 3, w // 2 : 2 * w // 3 + 2] = 2
    return lab


def test_no_augmentation_is_an_exact_centre_crop():
    t = build_kits19_transforms(
        PATCH, AugmentConfig(rotate_prob=0, scale_prob=0, elastic_prob=0, gamma_prob=0, flip_prob=0)
    )
    size = augmentation_input_size(t, PATCH)
    assert size == PATCH  # nothing spatial can fire: no margin needed
    x = torch.randn(1, *size)
    out = t({"image": x, "label": _blob(size)})
    assert torch.equal(torch.as_tensor(out["image"]), x)


def test_margin_is_even_and_covers_every_sample_point():
    t = RandSpatialAugmentd(("image", "label"), PATCH, AugmentConfig(rotate_prob=1, scale_prob=1, elastic_prob=1))
    size = t.input_size
    assert all(s > p and (s - p) % 2 == 0 for s, p in zip(size, PATCH))
    t.set_random_state(0)
    for _ in range(30):
        t.randomize()
        grid = t._grid(size)
        assert grid.shape == (1, *PATCH, 3)
        assert grid.abs().max() <= 1.0 + 1e-5  # never samples outside the crop: no padding artefacts
        tight = t.draw_input_size()  # what the dataset reads for this draw
        assert all(p <= s <= m and (s - p) % 2 == 0 for p, s, m in zip(PATCH, tight, size))
        assert t._grid(tight).abs().max() <= 1.0 + 1e-5
    t.randomize = lambda data=None: None
    t._matrix, t._displacement = None, None
    assert t.draw_input_size() == PATCH  # no spatial transform drawn: read exactly the patch


def test_identity_warp_matches_crop_and_rotation_is_aligned():
    t = RandSpatialAugmentd(
        ("image", "label"), PATCH, AugmentConfig(rotate_prob=1, scale_prob=0), mode=("nearest", "nearest")
    )
    size = t.input_size
    lab = _blob(size)
    lo = [(s - p) // 2 for s, p in zip(size, PATCH)]
    crop = lab[:, lo[0] : lo[0] + PATCH[0], lo[1] : lo[1] + PATCH[1], lo[2] : lo[2] + PATCH[2]]
    t.randomize = lambda data=None: None  # fix the draw by hand
    t._matrix, t._displacement = np.eye(3), None
    out = t({"image": lab.float(), "label": lab})
    assert torch.equal(out["label"], crop)  # identity grid through grid_sample = the exact crop
    # 180 degrees in-plane: same as flipping both in-plane axes of the crop (patch has an even centre offset)
    c, s = math.cos(math.pi), math.sin(math.pi)
    t._matrix = np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    out = t({"image": lab.float(), "label": lab})
    assert torch.equal(out["label"], crop.flip(2, 3))
    assert torch.equal(out["image"].round().to(torch.uint8), out["label"])  # image and label warped identically
    assert out["label"].dtype == torch.uint8


def test_full_chain_shapes_values_and_determinism():
    t = build_kits19_transforms(
        PATCH, AugmentConfig(rotate_prob=1, scale_prob=1, elastic_prob=1, gamma_prob=1, flip_prob=0.5)
    )
    size = augmentation_input_size(t, PATCH)
    gen = torch.Generator().manual_seed(0)
    x, lab = torch.randn(1, *size, generator=gen) + 3, _blob(size)
    t.set_random_state(1)
    a = t({"image": x, "label": lab})
    t.set_random_state(1)
    b = t({"image": x, "label": lab})
    assert a["image"].shape == (1, *PATCH) and a["label"].shape == (1, *PATCH)
    assert torch.equal(torch.as_tensor(a["image"]), torch.as_tensor(b["image"]))
    assert set(torch.as_tensor(a["label"]).unique().tolist()) <= {0, 1, 2}
    t.set_random_state(2)
    c = t({"image": x, "label": lab})
    assert not torch.equal(torch.as_tensor(a["image"]), torch.as_tensor(c["image"]))


def test_gamma_keeps_mean_and_std_and_flip_mirrors():
    t = build_kits19_transforms(
        PATCH, AugmentConfig(rotate_prob=0, scale_prob=0, elastic_prob=0, gamma_prob=1, flip_prob=0)
    )
    x = torch.rand(1, *PATCH) * 4 - 1
    y = torch.as_tensor(t({"image": x, "label": _blob(PATCH)})["image"])
    assert not torch.allclose(y, x)
    assert y.mean().item() == pytest.approx(x.mean().item(), abs=1e-4)
    assert y.std().item() == pytest.approx(x.std().item(), rel=1e-3)
    f = build_kits19_transforms(
        PATCH, AugmentConfig(rotate_prob=0, scale_prob=0, elastic_prob=0, gamma_prob=0, flip_prob=1)
    )
    out = f({"image": x, "label": _blob(PATCH)})
    assert torch.equal(torch.as_tensor(out["image"]), x.flip(1, 2, 3))
    assert torch.equal(torch.as_tensor(out["label"]), _blob(PATCH).flip(1, 2, 3))


def test_dataloader_workers_draw_different_patches(tmp_path):
    write_kits19(tmp_path / "data", cases=1, seed=0)
    cases = find_kits19_cases(tmp_path / "data")
    preprocess_dataset(cases, tmp_path / "cache", CTPreprocessor(50, 250, 150, 40, (3.0, 2.0, 2.0)), progress=False)
    ds = PatchDataset(tmp_path / "cache", ["case_00000"], PATCH, length=4, transforms=build_kits19_transforms(PATCH))
    loader = DataLoader(ds, batch_size=1, num_workers=2)
    images = [b["image"] for b in loader]
    assert len(images) == 4
    # items 0/1 come from workers 0/1 at the same step of their streams: equal if workers shared a seed
    assert all(not torch.equal(images[i], images[j]) for i in range(4) for j in range(i + 1, 4))
