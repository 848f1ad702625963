import math
import warnings

import numpy as np
import pytest
import torch
from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance
from scipy import ndimage

from segzoo.metrics import BraTSMetric, CHAOSMetric, KiTS19Metric, brats_scores, chaos_scores, kits19_scores
from segzoo.metrics._common import border_voxels


def _squares():
    """Reference: 4x4 square rows 2-5, cols 2-5 in a 10x10 image; prediction: the same square one row lower.

    With spacing (2 mm rows, 1 mm cols), cross-shaped erosion, each border has 12 voxels.
    pred -> ref: row 3 (0, 1, 1, 0), sides of rows 4-5 (4 x 0), row 6 (4 x 2 mm)       -> sum 10, max 2
    ref -> pred: row 2 (4 x 2 mm), sides of rows 3-5 (6 x 0), row 5 cols 3-4 (2 x 1)  -> sum 10, max 2
    ASSD = 20 / 24, MSSD = 2; Dice = 2 * 12 / (16 + 16) = 0.75; RAVD = 0.
    HD95: each direction's sorted distances (0 x 6, 1 x 2, 2 x 4), 95th percentile -> 2.
    """
    ref = np.zeros((10, 10), dtype=np.int64)
    ref[2:6, 2:6] = 1
    pred = np.zeros_like(ref)
    pred[3:7, 2:6] = 1
    return pred, ref


def _monai(pred_mask, ref_mask, spacing):
    p = torch.from_numpy(pred_mask.astype(np.float32))[None, None]
    r = torch.from_numpy(ref_mask.astype(np.float32))[None, None]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        asd = compute_average_surface_distance(p, r, include_background=True, symmetric=True, spacing=spacing)
        hd = compute_hausdorff_distance(p, r, include_background=True, spacing=spacing)
        hd95 = compute_hausdorff_distance(p, r, include_background=True, percentile=95, spacing=spacing)
    return float(asd[0, 0]), float(hd[0, 0]), float(hd95[0, 0])


# ---------------------------------------------------------------- KiTS19


def test_kits19_hand_values():
    target = np.zeros((4, 4), dtype=np.int64)
    target[0, :] = 1  # 4 kidney
    target[1, :2] = 2  # 2 tumour -> kidney region (label > 0) has 6 voxels
    pred = np.zeros_like(target)
    pred[0, :3] = 1
    pred[1, :] = 2  # kidney region: 3 + 4 = 7 voxels, overlap with target's 6: 3 + 2 = 5
    # kidney: 2*5 / (7 + 6) = 10/13; tumour: pred 4, target 2, overlap 2 -> 4/6
    scores = kits19_scores(pred, target)
    assert scores["kidney/dice"] == pytest.approx(10 / 13)
    assert scores["tumour/dice"] == pytest.approx(2 / 3)
    assert scores["composite/dice"] == pytest.approx((10 / 13 + 2 / 3) / 2)


def test_kits19_empty_conventions_and_errors():
    empty = np.zeros((3, 4, 4), dtype=np.int64)
    assert kits19_scores(empty, empty) == {"kidney/dice": 1.0, "tumour/dice": 1.0, "composite/dice": 1.0}
    kidney_only = empty.copy()
    kidney_only[1, 1:3, 1:3] = 1
    s = kits19_scores(kidney_only, kidney_only)
    assert s["kidney/dice"] == 1.0 and s["tumour/dice"] == 1.0  # no tumour anywhere: perfect
    tumour_missed = kidney_only.copy()
    tumour_missed[1, 1, 1] = 2
    assert kits19_scores(kidney_only, tumour_missed)["tumour/dice"] == 0.0
    assert math.isnan(kits19_scores(empty, empty, empty_value=float("nan"))["tumour/dice"])
    with pytest.raises(ValueError, match=r"KiTS19 metric: target values must be class indices in 0\.\.2"):
        kits19_scores(empty, empty + 3)
    with pytest.raises(ValueError, match="differs"):
        kits19_scores(empty, empty[0])


def test_kits19_metric_accumulates_cases():
    metric = KiTS19Metric()
    target = torch.zeros(2, 1, 2, 4, 4, dtype=torch.long)
    target[:, 0, 0, :2, :2] = 1
    target[0, 0, 0, 0, 0] = 2
    pred = target.clone()
    pred[1] = 0  # case b misses everything: kidney 0, tumour empty in both -> 1
    rows = metric.update(pred, target, case_ids=["a", "b"])
    assert [r["case_id"] for r in rows] == ["a", "b"]
    assert rows[1]["kidney/dice"] == 0.0 and rows[1]["tumour/dice"] == 1.0
    mean = metric.compute()
    assert mean["kidney/dice"] == pytest.approx(0.5)
    assert mean["composite/dice"] == pytest.approx((1.0 + 0.5) / 2)
    assert metric.summary()["cases"] == metric.per_case() and len(metric.per_case()) == 2
    metric.reset()
    assert metric.per_case() == []


# ---------------------------------------------------------------- CHAOS


def test_chaos_surface_distances_hand_values_and_monai():
    pred, ref = _squares()
    s = chaos_scores(pred, ref, spacing=(2.0, 1.0), organs=("liver",))
    assert s["liver/dice"] == pytest.approx(0.75)
    assert s["liver/ravd"] == 0.0
    assert s["liver/assd"] == pytest.approx(20 / 24)
    assert s["liver/mssd"] == pytest.approx(2.0)
    asd, hd, _ = _monai(pred == 1, ref == 1, [2.0, 1.0])
    assert s["liver/assd"] == pytest.approx(asd, rel=1e-6)
    assert s["liver/mssd"] == pytest.approx(hd, rel=1e-6)


def test_chaos_agrees_with_monai_on_3d_blobs_with_anisotropic_spacing():
    rng = np.random.default_rng(0)
    spacing = (3.0, 0.8, 0.7)
    for _ in range(3):
        a = ndimage.gaussian_filter(rng.standard_normal((12, 14, 14)), 1.5) > 0.05
        b = ndimage.gaussian_filter(rng.standard_normal((12, 14, 14)), 1.5) > 0.05
        a[[0, -1]] = a[:, [0, -1]] = a[:, :, [0, -1]] = False  # MONAI treats the image edge as surface, CHAOS
        b[[0, -1]] = b[:, [0, -1]] = b[:, :, [0, -1]] = False  # does not: keep objects off the edge to compare
        pred = a.astype(np.int64) * 2
        ref = b.astype(np.int64) * 2
        s = chaos_scores(pred, ref, spacing=spacing)
        asd, hd, _ = _monai(a, b, list(spacing))
        assert s["right_kidney/assd"] == pytest.approx(asd, rel=1e-5)
        assert s["right_kidney/mssd"] == pytest.approx(hd, rel=1e-5)
        assert s["right_kidney/dice"] == pytest.approx(2 * (a & b).sum() / (a.sum() + b.sum()))
        assert s["right_kidney/ravd"] == pytest.approx(abs(int(a.sum()) - int(b.sum())) / b.sum() * 100)
        assert s["liver/dice"] == 1.0 and s["liver/assd"] == 0.0  # absent in both


def test_chaos_border_follows_official_definition_at_image_edge():
    mask = np.zeros((5, 5), dtype=bool)
    mask[:3, :] = True  # touches the top, left and right image edges
    # border_value=1: only the row facing the background is surface
    assert sorted(map(tuple, border_voxels(mask))) == [(2, c) for c in range(5)]
    full = np.ones((3, 3), dtype=bool)  # no background at all: falls back to the image edge (8 voxels)
    assert len(border_voxels(full)) == 8


def test_chaos_ravd_and_empty_conventions():
    ref = np.zeros((10, 10), dtype=np.int64)
    ref[2:6, 2:6] = 3  # left kidney, 16 voxels
    pred = np.zeros_like(ref)
    pred[2:7, 2:6] = 3  # 20 voxels -> RAVD = |20 - 16| / 16 * 100 = 25
    s = chaos_scores(pred, ref)
    assert s["left_kidney/ravd"] == pytest.approx(25.0)
    empty = np.zeros_like(ref)
    diagonal = math.sqrt((9 * 2.0) ** 2 + (9 * 1.0) ** 2)  # 10x10 voxels at (2, 1) mm
    missed = chaos_scores(empty, ref, spacing=(2.0, 1.0))  # prediction empty
    assert missed["left_kidney/dice"] == 0.0 and missed["left_kidney/ravd"] == 100.0
    assert missed["left_kidney/assd"] == pytest.approx(diagonal) and missed["left_kidney/mssd"] == pytest.approx(
        diagonal
    )
    spurious = chaos_scores(ref, empty, spacing=(2.0, 1.0), empty_distance=50.0)  # reference empty
    assert spurious["left_kidney/dice"] == 0.0 and math.isnan(spurious["left_kidney/ravd"])
    assert spurious["left_kidney/assd"] == 50.0 and spurious["left_kidney/mssd"] == 50.0
    both = chaos_scores(empty, empty)
    assert both["spleen/dice"] == 1.0 and both["spleen/ravd"] == 0.0 and both["spleen/mssd"] == 0.0
    assert both["mean/dice"] == 1.0


def test_chaos_metric_spacing_per_case_nan_skipped_and_errors():
    pred, ref = _squares()
    metric = CHAOSMetric(organs=("liver",))
    empty = np.zeros_like(ref)
    # case 0: the squares at (2, 1) mm; case 1: spurious liver with empty reference (RAVD NaN)
    metric.update(np.stack([pred, ref]), np.stack([ref, empty]), ["c0", "c1"], torch.tensor([[2.0, 1.0], [1.0, 1.0]]))
    rows = metric.per_case()
    assert rows[0]["liver/assd"] == pytest.approx(20 / 24)
    mean = metric.compute()
    assert mean["liver/ravd"] == 0.0  # the NaN of case 1 is skipped
    assert mean["liver/dice"] == pytest.approx((0.75 + 0.0) / 2)
    with pytest.raises(ValueError, match=r"CHAOS metric: prediction values must be class indices in 0\.\.1"):
        metric.update(pred[None] * 2, ref[None])
    with pytest.raises(ValueError, match="spacing must be 2"):
        chaos_scores(pred, ref, spacing=(1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="organs"):
        CHAOSMetric(organs=())


# ---------------------------------------------------------------- BraTS


def test_brats_label_map_regions_hand_values():
    # class indices: 1 -> label 1 (necrosis), 2 -> label 2 (oedema), 3 -> label 4 (enhancing)
    target = np.zeros((6, 6), dtype=np.int64)
    target[0, :4] = 2  # 4 oedema
    target[1, :2] = 1  # 2 necrosis
    target[1, 2:4] = 3  # 2 enhancing
    pred = np.zeros_like(target)
    pred[0, :4] = 2
    pred[1, :4] = 3  # necrosis predicted as enhancing
    # WT {1,2,4}: pred 8, target 8, overlap 8 -> 1
    # TC {1,4}: pred row 1 (4), target row 1 (4) -> 1
    # ET {4}: pred 4, target 2, overlap 2 -> 4/6
    s = brats_scores(pred, target)
    assert s["WT/dice"] == pytest.approx(1.0) and s["TC/dice"] == pytest.approx(1.0)
    assert s["ET/dice"] == pytest.approx(2 / 3)
    assert s["WT/hd95"] == 0.0 and s["TC/hd95"] == 0.0
    # index 3 read as label 3 (not in any region) when label_map says so: ET empty in both
    s3 = brats_scores(pred, target, label_map=(0, 1, 2, 3))
    assert s3["ET/dice"] == 1.0 and s3["ET/hd95"] == 0.0
    assert s3["TC/dice"] == pytest.approx(0.0)  # target TC = 2 necrosis voxels, pred TC empty
    assert s3["TC/hd95"] == pytest.approx(373.13)
    # binary ET-only model: index 1 means label 4 -> all three regions are the same mask
    b = brats_scores((pred == 3).astype(int), (target == 3).astype(int), label_map=(0, 4))
    assert b["WT/dice"] == b["TC/dice"] == b["ET/dice"] == pytest.approx(2 / 3)


def test_brats_hd95_hand_value_monai_and_spacing_scale():
    pred, ref = _squares()
    s = brats_scores(pred * 3, ref * 3, spacing=(2.0, 1.0))
    assert s["ET/hd95"] == pytest.approx(2.0)
    assert s["ET/hd95"] == pytest.approx(_monai(pred == 1, ref == 1, [2.0, 1.0])[2])
    rng = np.random.default_rng(1)
    a = ndimage.gaussian_filter(rng.standard_normal((10, 16, 16)), 1.5) > 0
    c = ndimage.gaussian_filter(rng.standard_normal((10, 16, 16)), 1.5) > 0
    one = brats_scores(a * 2, c * 2, spacing=(2.5, 1.0, 1.0))["WT/hd95"]
    two = brats_scores(a * 2, c * 2, spacing=(5.0, 2.0, 2.0))["WT/hd95"]
    assert one > 0 and two == pytest.approx(2 * one, rel=1e-5)


def test_brats_empty_conventions_metric_and_errors():
    empty = np.zeros((2, 8, 8), dtype=np.int64)
    lesion = empty.copy()
    lesion[1, 2:5, 2:5] = 3
    metric = BraTSMetric(hd95_penalty=100.0)
    metric.update(np.stack([empty, empty]), np.stack([empty, lesion]), ["none", "missed"])
    none, missed = metric.per_case()
    assert all(none[f"{r}/dice"] == 1.0 and none[f"{r}/hd95"] == 0.0 for r in ("WT", "TC", "ET"))
    assert all(missed[f"{r}/dice"] == 0.0 and missed[f"{r}/hd95"] == 100.0 for r in ("WT", "TC", "ET"))
    assert metric.compute()["ET/hd95"] == pytest.approx(50.0)
    assert BraTSMetric().hd95_penalty == pytest.approx(373.13)
    with pytest.raises(ValueError, match=r"BraTS metric: target values must be class indices in 0\.\.3"):
        brats_scores(empty, np.where(lesion == 3, 4, 0))  # raw BraTS label 4 passed as a class index
    with pytest.raises(ValueError, match="label_map"):
        BraTSMetric(label_map=(1, 2, 4))


def test_surface_distances_crop_changes_nothing_even_at_the_image_edge():
    from segzoo.metrics._common import surface_distances

    rng = np.random.default_rng(3)
    spacing = (1.5, 0.5, 0.8)
    for _ in range(3):
        a = ndimage.gaussian_filter(rng.standard_normal((9, 11, 10)), 1.2) > 0.1  # touches the image edges
        b = np.zeros_like(a)
        b[3:7, 1:11, 2:6] = True  # touches one edge
        # brute force on the uncropped arrays: all pairwise distances between border voxels
        pa, pb = border_voxels(a) * spacing, border_voxels(b) * spacing
        pairwise = np.linalg.norm(pa[:, None, :] - pb[None, :, :], axis=-1)
        a_to_b, b_to_a = surface_distances(a, b, spacing)
        assert np.allclose(np.sort(a_to_b), np.sort(pairwise.min(1)))
        assert np.allclose(np.sort(b_to_a), np.sort(pairwise.min(0)))


# ---------------------------------------------------------------- BraTS: slice selections, HD95 definitions
def _medpy_style_hd95(pred, ref, spacing):
    """Reference: medpy.metric.binary.hd95 (pooled), only used if medpy is missing (written from scipy here)."""
    from scipy import ndimage

    def surface(m):
        return m & ~ndimage.binary_erosion(m, structure=ndimage.generate_binary_structure(m.ndim, 1))

    p, r = surface(pred), surface(ref)
    d1 = ndimage.distance_transform_edt(~r, sampling=spacing)[p]
    d2 = ndimage.distance_transform_edt(~p, sampling=spacing)[r]
    return float(np.percentile(np.hstack((d1, d2)), 95))


def _reference_hd95(pred, ref, spacing):
    try:
        from medpy.metric.binary import hd95 as medpy_hd95
    except ImportError:  # pragma: no cover - medpy is a dev dependency
        return _medpy_style_hd95(pred, ref, spacing)
    return float(medpy_hd95(pred, ref, voxelspacing=spacing))


def test_swapped_lesions_of_two_non_adjacent_slices_score_per_slice():
    # the paper's protocol keeps the 2 largest-lesion slices: stacked, they look adjacent although they are not
    target = np.zeros((2, 64, 64), dtype=np.int64)
    target[0, 5:15, 5:15] = 2  # a lesion top left on slice 0
    target[1, 40:60, 40:60] = 2  # another one bottom right on slice 1
    pred = target[::-1].copy()  # the prediction swaps the two slices' lesions
    per_slice = brats_scores(pred, target, spacing=(float("nan"), 1.0, 1.0))
    assert per_slice["WT/dice"] == 0.0
    # per slice the lesions are far apart: the 2D HD95 of each slice (MONAI, directed max), averaged
    expected = np.mean([_monai(pred[s] > 0, target[s] > 0, [1.0, 1.0])[2] for s in range(2)])
    assert per_slice["WT/hd95"] == pytest.approx(expected) and per_slice["WT/hd95"] > 30.0
    # scored as one volume the two slices would be 1 mm apart: what the stacked protocol got wrong
    assert brats_scores(pred, target, spacing=(1.0, 1.0, 1.0))["WT/hd95"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="selection"):
        brats_scores(pred, target, spacing=(float("nan"), 1.0, 1.0), per_slice=False)
    # the metric object decides from the spacing the datamodule sends
    metric = BraTSMetric()
    metric.update(pred[None], target[None], ["a"], np.array([[np.nan, 1.0, 1.0]]))
    assert metric.compute()["WT/hd95"] == pytest.approx(expected)
    pooled = brats_scores(pred, target, spacing=(float("nan"), 1.0, 1.0), hd95_definition="pooled")["WT/hd95"]
    assert pooled == pytest.approx(np.mean([_reference_hd95(pred[s] > 0, target[s] > 0, (1, 1)) for s in range(2)]))


def test_per_slice_scores_are_the_mean_of_2d_scores_with_in_plane_spacing():
    target = np.zeros((3, 32, 40), dtype=np.int64)
    pred = np.zeros_like(target)
    for s in range(3):
        target[s, 4 + s : 20 + s, 6:30] = 1 + s  # labels 1, 2, 3 (index 3 = ET)
        pred[s, 6 + s : 22 + s, 8 + 2 * s : 28] = 1 + s
    pred[1, 25:28, 2:5] = 3  # an ET false positive on a slice without ET
    spacing = (float("nan"), 0.8, 1.3)
    got = brats_scores(pred, target, spacing=spacing)
    rows = [brats_scores(pred[s], target[s], spacing=spacing[1:]) for s in range(3)]
    for key in got:
        assert got[key] == pytest.approx(np.mean([r[key] for r in rows]))
    # forcing per-slice on a complete stack gives the same numbers; the volume ones differ
    forced = brats_scores(pred, target, spacing=(3.0, 0.8, 1.3), per_slice=True)
    assert forced == pytest.approx(got)
    assert brats_scores(pred, target, spacing=(3.0, 0.8, 1.3))["WT/hd95"] != pytest.approx(got["WT/hd95"])


@pytest.mark.parametrize("spacing", [(1.0, 1.0), (0.7, 1.9), (2.0, 1.0, 1.5)])
def test_pooled_hd95_matches_medpy(spacing):
    rng = np.random.default_rng(len(spacing) + int(10 * spacing[0]))
    shape = (40, 48) if len(spacing) == 2 else (12, 30, 34)
    pred = np.zeros(shape, dtype=bool)
    ref = np.zeros(shape, dtype=bool)
    core = tuple(slice(n // 4, 3 * n // 4) for n in shape)
    ref[core] = True
    ref &= rng.random(shape) > 0.1  # ragged surfaces
    pred[tuple(slice(n // 4 + 2, 3 * n // 4 + 1) for n in shape)] = True
    pred[(0,) * len(shape)] = True  # an outlier at the image corner (the image edge is surface there)
    label = lambda m: m.astype(np.int64)  # noqa: E731
    pooled = brats_scores(label(pred), label(ref), spacing=spacing, label_map=(0, 2), hd95_definition="pooled")
    assert pooled["WT/hd95"] == pytest.approx(_reference_hd95(pred, ref, spacing), rel=1e-9)
    assert pooled["WT/hd95"] == pytest.approx(_medpy_style_hd95(pred, ref, spacing), rel=1e-9)
    directed = brats_scores(label(pred), label(ref), spacing=spacing, label_map=(0, 2))["WT/hd95"]
    assert directed == pytest.approx(_monai(pred, ref, list(spacing))[2])


def test_pooled_and_directed_max_differ_as_defined():
    # ref: a 10x10 square; pred: the same square plus a far blob. Directed pred->ref has a heavy tail, ref->pred none
    ref = np.zeros((60, 60), dtype=np.int64)
    ref[10:20, 10:20] = 1
    pred = ref.copy()
    pred[45:55, 45:55] = 1
    directed = brats_scores(pred, ref, label_map=(0, 2))["WT/hd95"]
    pooled = brats_scores(pred, ref, label_map=(0, 2), hd95_definition="pooled")["WT/hd95"]
    assert directed > pooled  # pooling dilutes the tail with the zero distances of the other direction
    with pytest.raises(ValueError, match="hd95 must be one of"):
        BraTSMetric(hd95="max")


def test_chaos_refuses_a_slice_selection():
    pred = np.zeros((2, 16, 16), dtype=np.int64)
    pred[:, 4:8, 4:8] = 1
    with pytest.raises(ValueError, match="volumetric"):
        chaos_scores(pred, pred, spacing=(float("nan"), 1.0, 1.0))
    assert chaos_scores(pred, pred, spacing=(5.0, 1.0, 1.0))["liver/dice"] == 1.0
