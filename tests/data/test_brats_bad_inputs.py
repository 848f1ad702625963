"""BraTS reader: one clear error per bad input (missing file, no cases, unexpected labels)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from expect import expect_error

from segzoo.data.brats import find_brats_cases, load_brats_case
from segzoo.data.io import save_nifti

SHAPE = (6, 8, 8)
AFFINE = np.diag([3.0, 0.8, 0.8, 1.0])


def brats_case(root: Path, name: str = "BraTS2021_00000", seg=None) -> Path:
    folder = root / name
    rng = np.random.default_rng(0)
    for modality in ("t1", "t1ce", "t2", "flair"):
        save_nifti(rng.normal(300, 50, SHAPE).astype(np.float32), AFFINE, folder / f"{name}_{modality}.nii.gz")
    if seg is None:
        seg = np.zeros(SHAPE, np.uint8)
        seg[2:4, 2:5, 2:5] = 2
        seg[3, 3, 3] = 4
    save_nifti(seg, AFFINE, folder / f"{name}_seg.nii.gz")
    return folder


def test_missing_label_file(tmp_path):
    folder = brats_case(tmp_path)
    seg = folder / f"{folder.name}_seg.nii.gz"
    seg.unlink()
    expect_error(lambda: load_brats_case(folder), seg, "file not found")


def test_brats_folder_without_cases(tmp_path):
    (tmp_path / "brats" / "notes").mkdir(parents=True)
    save_nifti(np.zeros(SHAPE, np.float32), AFFINE, tmp_path / "brats" / "t1.nii.gz")  # a loose file, no case folder
    expect_error(lambda: find_brats_cases(tmp_path / "brats"), tmp_path / "brats", "no BraTS cases found", "_flair")


def test_brats_label_5(tmp_path):
    seg = np.zeros(SHAPE, np.uint8)
    seg[2, 2, 2], seg[3, 3, 3] = 2, 5
    folder = brats_case(tmp_path, seg=seg)
    seg_path = folder / f"{folder.name}_seg.nii.gz"
    expect_error(lambda: load_brats_case(folder), seg_path, "unexpected label values [5]", "[0, 1, 2, 4]")
