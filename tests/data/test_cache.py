"""The preprocessing cache: written once, reused, re-done exactly for changed parameters or source files."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from segzoo.data.cache import cache_paths, preprocess_dataset
from segzoo.data.fingerprint import compute_fingerprint
from segzoo.data.io import load_nifti, save_nifti
from segzoo.data.kits19 import KiTS19Case, find_kits19_cases
from segzoo.data.preprocessor import CTPreprocessor
from segzoo.data.synthetic.kits19 import write_kits19

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE = (6, 8, 8)
AFFINE = np.diag([3.0, 0.8, 0.8, 1.0])


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


@dataclass
class OtherCase:
    """A case of another dataset, with its own reader: nothing of KiTS19 is involved."""

    case_id: str
    image: Path
    label: Path | None

    def load(self):
        image, affine = load_nifti(self.image)
        return image, load_nifti(self.label)[0].astype(np.uint8), affine


def test_fingerprint_and_cache_take_any_dataset_case(tmp_path):
    label = np.zeros(SHAPE, np.uint8)
    label[2:4, 2:6, 2:6] = 3  # a class KiTS19 does not have
    image = np.random.default_rng(0).normal(100, 20, SHAPE).astype(np.float32)
    save_nifti(image, AFFINE, tmp_path / "a_img.nii.gz")
    save_nifti(label, AFFINE, tmp_path / "a_lab.nii.gz")
    case = OtherCase("a", tmp_path / "a_img.nii.gz", tmp_path / "a_lab.nii.gz")
    fp = compute_fingerprint([case])
    assert fp["train_cases"] == ["a"] and fp["foreground"]["num_samples"] == 2 * 4 * 4
    assert fp["foreground"]["mean"] == np.float64(image[label > 0].astype(np.float64).mean())
    pre = CTPreprocessor.from_fingerprint(fp, target_spacing=(3.0, 0.8, 0.8))  # the stored grid: no resampling
    props = preprocess_dataset([case], tmp_path / "cache", pre, progress=False)["a"]
    locations = props["class_locations"]
    assert set(locations) == {"3"} and len(locations["3"]) == 2 * 4 * 4  # every foreground class present, only those
    np.testing.assert_array_equal(np.load(cache_paths(tmp_path / "cache", "a")["label"])[0], label)
