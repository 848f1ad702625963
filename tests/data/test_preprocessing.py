"""Fingerprint, CTPreprocessor (clip, z-score, resample, restore) and the preprocessing cache."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from segzoo.data.io import DataError, save_nifti
from segzoo.data.kits19 import KiTS19Case, find_kits19_cases
from segzoo.data.preprocessing import (
    CTPreprocessor,
    cache_paths,
    compute_fingerprint,
    load_fingerprint,
    preprocess_dataset,
    save_fingerprint,
)
from segzoo.data.synthetic.kits19 import kits19_affine, write_kits19

pytestmark = pytest.mark.usefixtures("one_thread")


def _constructed(tmp_path, spacings=((3.0, 0.8, 0.8), (2.5, 1.0, 1.0), (3.5, 0.7, 0.7))):
    rng = np.random.default_rng(0)
    images, labels = [], []
    for i, sp in enumerate(spacings):
        img = rng.integers(-500, 500, size=(6, 20, 20)).astype(np.int16)
        lab = np.zeros(img.shape, np.uint8)
        lab[1:4, 5:12, 5:12] = 1
        lab[2:3, 6:8, 6:9] = 2
        folder = tmp_path / f"case_{i:05d}"
        save_nifti(img, kits19_affine(sp), folder / "imaging.nii.gz")
        save_nifti(lab, kits19_affine(sp), folder / "segmentation.nii.gz")
        images.append(img)
        labels.append(lab)
    return find_kits19_cases(tmp_path), images, labels


def test_fingerprint_matches_numpy(tmp_path):
    cases, images, labels = _constructed(tmp_path)
    fp = compute_fingerprint(cases)  # 147 foreground voxels per case < 10k: all of them are used
    fg = np.concatenate([im[lab > 0].astype(np.float64) for im, lab in zip(images, labels)])
    f = fp["foreground"]
    assert f["num_samples"] == fg.size == 3 * 147
    assert f["percentile_00_5"] == pytest.approx(np.percentile(fg, 0.5))
    assert f["percentile_99_5"] == pytest.approx(np.percentile(fg, 99.5))
    assert f["mean"] == pytest.approx(fg.mean()) and f["std"] == pytest.approx(fg.std())
    assert fp["median_spacing"] == pytest.approx([3.0, 0.8, 0.8])
    assert fp["shapes"]["case_00001"] == [6, 20, 20]
    assert fp["spacings"]["case_00001"] == pytest.approx([2.5, 1.0, 1.0])
    assert fp["train_cases"] == ["case_00000", "case_00001", "case_00002"]
    # sampling cap, seeded: same seed -> same numbers
    capped = compute_fingerprint(cases, samples_per_case=50, seed=3)
    assert capped["foreground"]["num_samples"] == 150
    assert capped == compute_fingerprint(cases, samples_per_case=50, seed=3)
    assert set(capped["foreground"].values()) != set(compute_fingerprint(cases, 50, seed=4)["foreground"].values())


def test_fingerprint_save_load(tmp_path):
    cases, _, _ = _constructed(tmp_path / "data")
    fp = compute_fingerprint(cases)
    path = save_fingerprint(fp, tmp_path / "fp" / "fingerprint.json")
    assert load_fingerprint(path) == fp
    path.write_text("{not json")
    with pytest.raises(DataError, match="fingerprint.json: dataset fingerprint is not valid JSON"):
        load_fingerprint(path)
    with pytest.raises(DataError, match="not found"):
        load_fingerprint(tmp_path / "missing.json")
    (tmp_path / "data/case_00000/segmentation.nii.gz").unlink()
    with pytest.raises(DataError, match="labelled"):
        compute_fingerprint(find_kits19_cases(tmp_path / "data"))


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


def test_cache_write_reuse_and_invalidation(tmp_path):
    write_kits19(tmp_path / "data", cases=2, seed=1, unlabelled=1)
    cases = find_kits19_cases(tmp_path / "data")
    pre = CTPreprocessor(50.0, 250.0, 150.0, 40.0, target_spacing=(3.0, 2.0, 2.0))
    cache = tmp_path / "cache"
    props = preprocess_dataset(cases, cache, pre, progress=False)
    p0 = cache_paths(cache, "case_00000")
    img, seg = np.load(p0["image"], mmap_mode="r"), np.load(p0["label"], mmap_mode="r")
    assert img.dtype == np.float32 and seg.dtype == np.uint8 and img.shape == seg.shape and img.shape[0] == 1
    pr = props["case_00000"]
    assert (
        list(img.shape[1:])
        == pr["preprocessed_shape"]
        == list(pre.new_shape(pr["original_shape"], pr["original_spacing"]))
    )
    for c in ("1", "2"):
        coords = np.asarray(pr["class_locations"][c])
        assert len(coords) > 0 and (seg[0][tuple(coords.T)] == int(c)).all()
    assert not cache_paths(cache, "case_00001")["label"].exists() and not props["case_00001"]["has_label"]
    assert not list(cache.glob(".*tmp"))

    mtimes = {p: p.stat().st_mtime_ns for p in cache.glob("case_*")}
    preprocess_dataset(cases, cache, pre, progress=False)  # same parameters: nothing rewritten
    assert {p: p.stat().st_mtime_ns for p in cache.glob("case_*")} == mtimes

    changed = CTPreprocessor(50.0, 250.0, 150.0, 40.0, target_spacing=(3.0, 5.0, 5.0))
    props2 = preprocess_dataset(cases, cache, changed, progress=False)
    assert all(p.stat().st_mtime_ns != mtimes[p] for p in mtimes)
    assert props2["case_00000"]["params_hash"] == changed.params_hash() != pre.params_hash()
    assert np.load(p0["image"]).shape[2] < img.shape[2]

    p0["label"].unlink()  # a missing file is re-made even when the manifest says cached
    preprocess_dataset(cases, cache, changed, progress=False)
    assert p0["label"].is_file()


@pytest.mark.parametrize("classes, shape", [(3, (9, 20, 17)), (5, (4, 6, 20)), (3, (7, 11, 13)), (1, (9, 20, 17))])
def test_restore_equals_argmax_of_resampled_channels_and_leaves_input(classes, shape):
    from segzoo.data.preprocessing import _resample_linear

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


# ------------------------------------------------------------------ constant intensities and stale cache entries
SHAPE = (6, 8, 8)
AFFINE = np.diag([3.0, 0.8, 0.8, 1.0])


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


def test_changed_source_file_invalidates_its_cache_entry(tmp_path):
    rng = np.random.default_rng(0)
    cases = []
    for k in range(2):
        folder = tmp_path / "data" / f"case_{k:05d}"
        label = np.zeros(SHAPE, np.uint8)
        label[2:4, 2:6, 2:6] = 1
        save_nifti(rng.normal(100, 20, SHAPE).astype(np.float32), AFFINE, folder / "imaging.nii.gz")
        save_nifti(label, AFFINE, folder / "segmentation.nii.gz")
        cases.append(KiTS19Case(folder.name, folder / "imaging.nii.gz", folder / "segmentation.nii.gz"))
    pre = CTPreprocessor(0.0, 200.0, 100.0, 20.0, target_spacing=(3.0, 0.8, 0.8))  # no resampling
    cache = tmp_path / "cache"
    preprocess_dataset(cases, cache, pre, progress=False)
    p0, p1 = cache_paths(cache, "case_00000"), cache_paths(cache, "case_00001")
    untouched = {p: p.stat().st_mtime_ns for p in p1.values()}

    # the image of case 0 replaced by other data (same shape and size on disk class: only content and mtime differ)
    new = np.full(SHAPE, 150.0, np.float32)
    save_nifti(new, AFFINE, cases[0].image)
    preprocess_dataset(cases, cache, pre, progress=False)
    np.testing.assert_allclose(np.load(p0["image"])[0], pre.normalize(new))
    assert {p: p.stat().st_mtime_ns for p in p1.values()} == untouched

    # a touch alone (same bytes, new mtime) also counts as a change: size+mtime key, no stale cache served
    before = p0["image"].stat().st_mtime_ns
    stat = cases[0].label.stat()
    os.utime(cases[0].label, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    preprocess_dataset(cases, cache, pre, progress=False)
    assert p0["image"].stat().st_mtime_ns != before
    assert {p: p.stat().st_mtime_ns for p in p1.values()} == untouched
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no temporary files left
