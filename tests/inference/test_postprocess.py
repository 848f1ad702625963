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


PAPER = dict(keep_largest=True, min_relative_size=0.0, fragment_gap=0)  # the paper's rule alone


def test_keeps_two_largest_kidney_components():
    a = three_kidneys()
    out = KiTSPostprocess(**PAPER)(a)
    assert out.dtype == a.dtype and out.shape == a.shape
    assert (out[10:12, 0:2, 10:12] == 0).all()  # the smallest blob is gone
    assert np.array_equal(out[:9, :, :], a[:9, :, :])  # the two larger ones (and the tumour) are untouched
    assert KiTSPostprocess(**{**PAPER, "max_kidney_components": 1})(a)[0:3, 0:3, 0:3].sum() == 0
    assert np.array_equal(KiTSPostprocess(**{**PAPER, "keep_largest": False})(a), a)


def test_tumour_counts_towards_component_size():
    a = np.zeros((10, 10, 10), dtype=np.int64)
    a[0:2, 0:2, 0:2] = 1  # 8 kidney
    a[5, 5, 5:7] = 1  # 2 kidney + 7 tumour = 9
    a[5, 5, 7] = 2
    a[6, 5:8, 5:7] = 2
    a[0, 8:10, 8] = 1  # 2 kidney
    out = KiTSPostprocess(**PAPER, remove_detached_tumour=False)(a)
    assert out[0, 8:10, 8].sum() == 0 and out[0:2, 0:2, 0:2].all() and (out[6, 5:8, 5:7] == 2).all()


def test_small_detached_tumour_removed_touching_kept():
    a = np.zeros((12, 12, 12), dtype=np.int32)
    a[2:6, 2:6, 2:6] = 1  # 64 kidney
    a[6, 3, 3] = 2  # touches kidney along a face
    a[10:12, 10:12, 10:12] = 2  # 8 voxels of tumour alone: 1/8 of the kidney
    out = KiTSPostprocess(min_relative_size=0.0)(a)
    assert out[6, 3, 3] == 2
    assert (out[10:12, 10:12, 10:12] == 0).all()
    assert np.array_equal(KiTSPostprocess(remove_detached_tumour=False, min_relative_size=0.0)(a), a)


def test_tumour_touching_tumour_of_the_kidney_is_kept():
    """Tumour is judged with the kidney+tumour component it belongs to, not by touching label-1 voxels."""
    a = np.zeros((12, 12, 12), dtype=np.uint8)
    a[2:6, 2:6, 2:6] = 1
    a[6:10, 2:6, 2:6] = 2  # a tumour layer on the kidney ...
    a[6:10, 2:6, 2] = 2
    a[6:10, 6, 2:6] = 2  # ... and tumour that touches only that tumour
    assert np.array_equal(KiTSPostprocess(keep_largest=True)(a), a)


# ------------------------------------------------------- the three ways the old rules deleted a whole structure
def test_kidney_predicted_entirely_as_tumour_is_kept():
    a = np.zeros((16, 16, 24), dtype=np.uint8)
    a[2:8, 2:8, 2:8] = 1  # left kidney, 216 voxels
    a[2:8, 2:8, 14:20] = 2  # right kidney predicted entirely as tumour: no label-1 voxel in it
    a[12:14, 12:14, 12:14] = 2  # a small tumour false positive floating alone
    for post in (KiTSPostprocess(), KiTSPostprocess(keep_largest=True)):
        out = post(a)
        assert (out[2:8, 2:8, 14:20] == 2).all(), post
        assert out[12:14, 12:14, 12:14].sum() == 0
        assert (out[2:8, 2:8, 2:8] == 1).all()


def test_fragmented_kidney_does_not_push_out_the_other_kidney():
    a = np.zeros((20, 20, 24), dtype=np.uint8)
    a[2:8, 2:8, 2:8] = 1  # fragment 1 of the left kidney, 216 voxels
    a[9:15, 2:8, 2:8] = 1  # fragment 2, 216 voxels, one background slice away
    a[4:9, 4:8, 16:20] = 1  # right kidney, 80 voxels: smaller than either fragment ...
    a[9, 4:8, 16:20] = 2  # ... with its tumour
    out = KiTSPostprocess(keep_largest=True)(a)
    assert np.array_equal(out, a)
    # without fragment grouping the paper's rule deletes the right kidney and its tumour (the old behaviour)
    old = KiTSPostprocess(**PAPER)(a)
    assert old[4:10, 4:8, 16:20].sum() == 0


def test_large_false_positive_does_not_delete_a_kidney():
    a = np.zeros((24, 24, 30), dtype=np.uint8)
    a[0:10, 0:10, 0:10] = 1  # a liver predicted as kidney, 1000 voxels
    a[14:20, 2:8, 14:20] = 1  # left kidney, 216
    a[14:19, 14:19, 22:27] = 1  # right kidney, 125 ...
    a[19, 14:19, 22:27] = 2  # ... with its tumour
    out = KiTSPostprocess()(a)
    assert np.array_equal(out, a)  # the default removes nothing here: no organ is small next to the largest
    # the paper's cap keeps the false positive and deletes the right kidney: why it is off by default
    old = KiTSPostprocess(**PAPER)(a)
    assert old[14:20, 14:19, 22:27].sum() == 0


def test_small_false_positive_removed_by_relative_size():
    a = np.zeros((16, 16, 16), dtype=np.uint8)
    a[1:7, 1:7, 1:7] = 1  # 216
    a[9:15, 9:15, 1:7] = 1  # 216
    a[12:14, 1:3, 12:14] = 1  # 8 voxels: < 0.1 x 216
    out = KiTSPostprocess()(a)
    assert out[12:14, 1:3, 12:14].sum() == 0
    assert out[1:7, 1:7, 1:7].all() and out[9:15, 9:15, 1:7].all()
    assert np.array_equal(KiTSPostprocess(min_relative_size=0.0)(a), a)


# --------------------------------------------------------------------------------------------- validated decision
def test_steps_and_with_steps():
    post = KiTSPostprocess(keep_largest=True)
    assert post.steps == ("remove_detached_tumour", "remove_small", "keep_largest")
    assert KiTSPostprocess().steps == ("remove_detached_tumour", "remove_small")
    off = post.with_steps(())
    assert off.steps == () and np.array_equal(off(three_kidneys()), three_kidneys())
    assert post.with_steps(["keep_largest"]).min_relative_size == 0.0
    with pytest.raises(ValueError, match="not enabled"):
        KiTSPostprocess().with_steps(["keep_largest"])
    assert len(post.subsets()) == 8 and post.subsets()[0] == ()


def test_decide_keeps_only_steps_that_improve():
    post = KiTSPostprocess(keep_largest=True)
    d, s, k = post.steps
    table = {(): 0.80, (d,): 0.82, (s,): 0.90, (k,): 0.70, (d, s): 0.82, (d, k): 0.81, (s, k): 0.95, (d, s, k): 0.90}
    decided = post.decide(table, num_cases=5)
    # d: 0.80 -> 0.82 kept; s: 0.82 -> 0.82 (a tie) dropped; k: 0.82 -> 0.81 dropped
    assert decided.steps == (d,)
    assert decided.validation["kept"] == [d] and decided.validation["num_cases"] == 5
    assert [r["kept"] for r in decided.validation["decisions"]] == [True, False, False]
    # the decision lives in the constructor arguments: rebuilding from them gives the same object
    rebuilt = KiTSPostprocess(**decided.init_args())
    assert rebuilt.steps == decided.steps and rebuilt.validation == decided.validation


def test_score_subsets_on_a_case():
    from segzoo.inference.postprocess import score_subsets
    from segzoo.metrics.kits19 import kits19_scores

    truth = np.zeros((16, 16, 16), dtype=np.uint8)
    truth[1:7, 1:7, 1:7] = 1
    pred = truth.copy()
    pred[12:14, 12:14, 12:14] = 1  # small false positive
    scores = score_subsets(KiTSPostprocess(), pred, lambda p: kits19_scores(p, truth)["composite/dice"])
    assert scores[()] < 1.0 and scores[("remove_small",)] == 1.0
    decided = KiTSPostprocess().decide(scores)
    assert decided.steps == ("remove_small",)


def test_connectivity_diagonal_contact():
    a = np.zeros((6, 6, 6), dtype=np.uint8)
    a[1:3, 1:3, 1:3] = 1
    a[3, 3, 3] = 2  # touches the kidney only through a corner
    kw = dict(fragment_gap=0, detached_tumour_fraction=0.5)
    assert KiTSPostprocess(connectivity=26, **kw)(a)[3, 3, 3] == 2
    assert KiTSPostprocess(connectivity=18, **kw)(a)[3, 3, 3] == 0
    assert KiTSPostprocess(connectivity=6, **kw)(a)[3, 3, 3] == 0


def test_min_component_size():
    a = three_kidneys()
    out = KiTSPostprocess(min_relative_size=0.0, fragment_gap=0, min_component_size=27)(a)
    assert out[10:12, 0:2, 10:12].sum() == 0 and out[0:3, 0:3, 0:3].all() and out[5:9, 5:9, 5:9].all()
    expected = a.copy()
    expected[0:3, 0:3, 0:3] = 0
    expected[10:12, 0:2, 10:12] = 0
    assert np.array_equal(
        KiTSPostprocess(**PAPER, min_component_size=28)(a), expected
    )  # only the 64+4 component is left


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
    with pytest.raises(ValueError, match="min_relative_size"):
        KiTSPostprocess(min_relative_size=1.5)
    with pytest.raises(ValueError, match="fragment_gap"):
        KiTSPostprocess(fragment_gap=-1)
