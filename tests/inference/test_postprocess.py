"""KiTSPostprocess on constructed label maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segzoo.inference import KiTSPostprocess


def three_kidneys() -> np.ndarray:
    """Three separate kidney blobs of 27, 64 and 8 voxels, the largest with a tumour that touches it."""
    a = np.zeros((12, 12, 12), dtype=np.uint8)
    a[0:3, 0:3, 0:3] = 1  # 27
    a[5:9, 5:9, 5:9] = 1  # 64
    a[5:7, 6:8, 9] = 2  # 4 tumour voxels touching the 64-blob along a face
    a[10:12, 0:2, 10:12] = 1  # 8
    return a


def test_keeps_two_largest_kidney_components():
    a = three_kidneys()
    out = KiTSPostprocess()(a)
    assert out.dtype == a.dtype and out.shape == a.shape
    assert (out[10:12, 0:2, 10:12] == 0).all()  # the smallest blob is gone
    assert np.array_equal(out[:9, :, :], a[:9, :, :])  # the two larger ones (and the tumour) are untouched
    assert KiTSPostprocess(max_kidney_components=1)(a)[0:3, 0:3, 0:3].sum() == 0
    assert np.array_equal(KiTSPostprocess(keep_largest=False)(a), a)


def test_tumour_counts_towards_component_size():
    a = np.zeros((10, 10, 10), dtype=np.int64)
    a[0:2, 0:2, 0:2] = 1  # 8 kidney
    a[5, 5, 5:7] = 1  # 2 kidney + 7 tumour = 9
    a[5, 5, 7] = 2
    a[6, 5:8, 5:7] = 2
    a[0, 8:10, 8] = 1  # 2 kidney
    out = KiTSPostprocess(max_kidney_components=2, remove_detached_tumour=False)(a)
    assert out[0, 8:10, 8].sum() == 0 and out[0:2, 0:2, 0:2].all() and (out[6, 5:8, 5:7] == 2).all()


def test_detached_tumour_removed_touching_kept():
    a = np.zeros((10, 10, 10), dtype=np.int32)
    a[2:5, 2:5, 2:5] = 1
    a[5, 3, 3] = 2  # touches kidney along a face
    a[8:10, 8:10, 8:10] = 2  # floats alone
    out = KiTSPostprocess(keep_largest=False)(a)
    assert out[5, 3, 3] == 2
    assert (out[8:10, 8:10, 8:10] == 0).all()
    assert np.array_equal(KiTSPostprocess(remove_detached_tumour=False, keep_largest=False)(a), a)


def test_detached_tumour_does_not_take_a_kidney_slot():
    a = np.zeros((16, 16, 16), dtype=np.uint8)
    a[0:3, 0:3, 0:3] = 1  # kidney 27
    a[10:13, 10:13, 10:13] = 1  # kidney 27
    a[5:9, 12:16, 0:4] = 2  # big detached tumour, 64 voxels
    out = KiTSPostprocess()(a)
    assert out[0:3, 0:3, 0:3].all() and out[10:13, 10:13, 10:13].all() and out[5:9, 12:16, 0:4].sum() == 0


def test_connectivity_diagonal_contact():
    a = np.zeros((6, 6, 6), dtype=np.uint8)
    a[1:3, 1:3, 1:3] = 1
    a[3, 3, 3] = 2  # touches the kidney only through a corner
    assert KiTSPostprocess(connectivity=26)(a)[3, 3, 3] == 2
    assert KiTSPostprocess(connectivity=18)(a)[3, 3, 3] == 0
    assert KiTSPostprocess(connectivity=6)(a)[3, 3, 3] == 0


def test_min_component_size():
    a = three_kidneys()
    out = KiTSPostprocess(keep_largest=False, min_component_size=27)(a)
    assert out[10:12, 0:2, 10:12].sum() == 0 and out[0:3, 0:3, 0:3].all() and out[5:9, 5:9, 5:9].all()
    expected = a.copy()
    expected[0:3, 0:3, 0:3] = 0
    expected[10:12, 0:2, 10:12] = 0
    assert np.array_equal(KiTSPostprocess(min_component_size=28)(a), expected)  # only the 64+4 component is left


def test_torch_in_torch_out():
    a = torch.from_numpy(three_kidneys()).long()
    out = KiTSPostprocess()(a)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.long and out.device == a.device
    assert torch.equal(out, torch.from_numpy(KiTSPostprocess()(three_kidneys())).long())


def test_empty_map_unchanged():
    a = np.zeros((4, 4, 4), dtype=np.uint8)
    assert np.array_equal(KiTSPostprocess()(a), a)


@pytest.mark.parametrize(
    "label_map, match",
    [
        (np.zeros((4, 4), dtype=np.uint8), "3D"),
        (np.zeros((4, 4, 4), dtype=np.float32), "integer"),
        (np.full((4, 4, 4), 3, dtype=np.uint8), "outside"),
        ([[[0]]], "numpy array or torch tensor"),
    ],
)
def test_bad_input(label_map, match):
    with pytest.raises((ValueError, TypeError), match=match):
        KiTSPostprocess()(label_map)


def test_bad_arguments():
    with pytest.raises(ValueError, match="connectivity"):
        KiTSPostprocess(connectivity=8)
    with pytest.raises(ValueError, match="max_kidney_components"):
        KiTSPostprocess(max_kidney_components=0)
    with pytest.raises(ValueError, match="min_component_size"):
        KiTSPostprocess(min_component_size=-1)
