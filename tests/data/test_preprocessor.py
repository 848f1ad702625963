"""CTPreprocessor: clip, z-score, resample, restore; serialisation; constant intensities stay finite."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from segzoo.data.fingerprint import compute_fingerprint
from segzoo.data.io import DataError, save_nifti
from segzoo.data.kits19 import KiTS19Case
from segzoo.data.preprocessor import CTPreprocessor, _resample_linear

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE = (6, 8, 8)
AFFINE = np.diag([3.0, 0.8, 0.8, 1.0])


def test_clip_and_zscore_values():
    pre = CTPreprocessor(-10.0, 10.0, mean=2.0, std=4.0, target_spacing=(1.0, 1.0, 1.0))
    image = np.array([-100, -10, 0, 2, 6, 10, 50, 7], np.int16).reshape(2, 2, 2)
    out = pre.preprocess(image, (1.0, 1.0, 1.0))
    expected = (np.clip(image, -10, 10) - 2.0) / 4.0
    assert out.shape == (1, 2, 2, 2) and out.dtype == np.float32
    np.testing.assert_allclose(out[0], expected, rtol=1e-6)
    flat = CTPreprocessor(0.0, 0.0, mean=0.0, std=0.0, target_spacing=(1.0, 1.0, 1.0))
    assert np.isfinite(flat.preprocess(image, (1, 1, 1))).all()  # std 0 guarded


@pytest.mark.parametrize("order", [0, 1, 3])
def test_resampling_shape_and_constant_preservation(order):
    pre = CTPreprocessor(-1000, 1000, 0.0, 1.0, target_spacing=(3.0, 2.0, 2.0), image_order=order)
    image = np.full((10, 20, 30), 7.0)
    out = pre.preprocess(image, (1.5, 1.0, 1.0))  # 10*1.5/3 = 5, 20/2 = 10, 30/2 = 15
    assert out.shape == (1, 5, 10, 15)
    np.testing.assert_allclose(out, 7.0, atol=1e-4)
    assert pre.new_shape((100, 512, 512), (3.0, 0.78125, 0.78125)) == (100, 200, 200)


def test_label_resampling_and_restore_round_trip():
    pre = CTPreprocessor(-1000, 1000, 0.0, 1.0, target_spacing=(2.0, 2.0, 2.0))
    label = np.zeros((12, 30, 31), np.uint8)
    label[2:10, 5:25, 6:20] = 1
    label[4:8, 10:18, 8:14] = 2
    spacing = (1.0, 1.2, 0.9)
    seg = pre.preprocess_label(label, spacing)
    assert seg.dtype == np.uint8 and seg.shape == (1, *pre.new_shape(label.shape, spacing)) == (1, 6, 18, 14)
    assert set(np.unique(seg).tolist()) == {0, 1, 2}  # nearest: no new values
    onehot = np.eye(3, dtype=np.float32)[seg[0]].transpose(3, 0, 1, 2)  # (K, *pre_shape)
    restored = pre.restore(torch.from_numpy(onehot), label.shape)
    assert restored.shape == label.shape and restored.dtype == np.uint8
    assert (restored == label).mean() > 0.93
    assert pre.restore(onehot, (5, 7, 9)).shape == (5, 7, 9)  # exact shape, arrays accepted too
    with pytest.raises(ValueError, match="K, \\*spatial"):
        pre.restore(onehot[0], label.shape)


def test_preprocessor_dict_round_trip_and_hash():
    pre = CTPreprocessor(-50.0, 300.0, 100.0, 60.0, (3.0, 0.78125, 0.78125), image_order=3)
    again = CTPreprocessor.from_dict(json.loads(json.dumps(pre.to_dict())))
    assert again.to_dict() == pre.to_dict() and again.params_hash() == pre.params_hash()
    assert CTPreprocessor(-50.0, 300.0, 100.0, 61.0, (3.0, 0.78125, 0.78125), 3).params_hash() != pre.params_hash()
    fp = {
        "median_spacing": [2.0, 1.0, 1.0],
        "foreground": {"percentile_00_5": 1, "percentile_99_5": 2, "mean": 3, "std": 4},
    }
    assert CTPreprocessor.from_fingerprint(fp, target_spacing=None).target_spacing == (2.0, 1.0, 1.0)
    assert CTPreprocessor.from_fingerprint(fp).target_spacing == (3.0, 0.78125, 0.78125)
    with pytest.raises(DataError, match="lacks key"):
        CTPreprocessor.from_dict({"clip_low": 0})


@pytest.mark.parametrize("classes, shape", [(3, (9, 20, 17)), (5, (4, 6, 20)), (3, (7, 11, 13)), (1, (9, 20, 17))])
def test_restore_equals_argmax_of_resampled_channels_and_leaves_input(classes, shape):
    pre = CTPreprocessor(clip_low=-100, clip_high=300, mean=50, std=30, target_spacing=(3, 1, 1))
    torch.manual_seed(classes)
    probs = torch.rand(classes, 7, 11, 13)
    probs[:, 0] = 0.5  # a slab of exact ties: the lower class wins, as with argmax
    kept = probs.clone()
    out = pre.restore(probs, shape)
    expected = _resample_linear(probs, shape).argmax(0).to(torch.uint8).numpy()
    assert out.dtype == np.uint8 and out.shape == shape
    np.testing.assert_array_equal(out, expected)
    assert torch.equal(probs, kept)  # the running maximum never writes into the caller's scores


def test_ct_preprocessor_constant_intensity_fingerprint(tmp_path):
    folder = tmp_path / "case_00000"
    label = np.zeros(SHAPE, np.uint8)
    label[2:4, 2:6, 2:6] = 1
    save_nifti(np.full(SHAPE, 40.0, np.float32), AFFINE, folder / "imaging.nii.gz")  # std 0 everywhere
    save_nifti(label, AFFINE, folder / "segmentation.nii.gz")
    fp = compute_fingerprint([KiTS19Case("case_00000", folder / "imaging.nii.gz", folder / "segmentation.nii.gz")])
    assert fp["foreground"]["std"] == 0.0
    pre = CTPreprocessor.from_fingerprint(fp, target_spacing=(3.0, 0.8, 0.8))
    for image in (np.full(SHAPE, 40.0), np.full(SHAPE, -1000.0), np.linspace(-500, 500, 384).reshape(SHAPE)):
        out = pre.preprocess(image, (3.0, 0.8, 0.8))
        assert out.shape == (1, *SHAPE) and np.isfinite(out).all()
        assert np.array_equal(out, np.zeros_like(out))  # clipped to the one value, which is the mean


def test_ct_preprocessor_std_zero_and_resampling_stay_finite():
    pre = CTPreprocessor(-100.0, 300.0, 120.0, 0.0, target_spacing=(2.0, 1.0, 1.0))
    out = pre.preprocess(np.full((5, 9, 9), 120.0), (3.0, 0.8, 0.8))
    assert out.shape == (1, *pre.new_shape((5, 9, 9), (3.0, 0.8, 0.8))) and np.isfinite(out).all()
    assert np.abs(out).max() == 0.0
