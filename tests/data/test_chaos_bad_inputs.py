"""CHAOS reader: one clear error per damaged DICOM series or ground-truth PNG (a synthetic case, copied, then damaged)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from expect import expect_error
from PIL import Image

from segzoo.data.chaos import load_chaos_case
from segzoo.data.synthetic.chaos import write_chaos


@pytest.fixture(scope="module")
def chaos_source(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("chaos")
    write_chaos(root, cases=1, seed=0)
    return root / "Train_Sets" / "MR" / "1"


@pytest.fixture
def chaos_case(chaos_source, tmp_path) -> Path:
    """A private copy of the synthetic CHAOS case that a test may damage."""
    dst = tmp_path / "MR" / "1"
    shutil.copytree(chaos_source, dst)
    return dst


def t2_files(case: Path) -> tuple[list[Path], list[Path]]:
    from segzoo.data.chaos import natural_key

    dcm = sorted((case / "T2SPIR" / "DICOM_anon").glob("*.dcm"), key=natural_key)
    png = sorted((case / "T2SPIR" / "Ground").glob("*.png"), key=natural_key)
    return dcm, png


def test_multiframe_dicom_where_slice_expected(chaos_case):
    dcm, _ = t2_files(chaos_case)
    ds = pydicom.dcmread(dcm[3])
    ds.NumberOfFrames = 2
    ds.PixelData = ds.PixelData * 2  # a 3D (2, H, W) pixel array where one 2D slice belongs
    ds.save_as(dcm[3])
    expect_error(lambda: load_chaos_case(chaos_case), dcm[3], "expected a single-frame greyscale slice")


def test_dicom_series_with_missing_slice(chaos_case):
    dcm, png = t2_files(chaos_case)
    dcm[5].unlink()  # slice 6 lost; its mask removed too, so only the positions reveal the gap
    png[5].unlink()
    expect_error(lambda: load_chaos_case(chaos_case), dcm[6], dcm[4].name, "missing", "evenly spaced slices")


def test_dicom_series_with_mixed_orientations(chaos_case):
    dcm, _ = t2_files(chaos_case)
    ds = pydicom.dcmread(dcm[2])
    ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]  # a sagittal slice among axial ones
    ds.save_as(dcm[2])
    expect_error(lambda: load_chaos_case(chaos_case), dcm[2], "ImageOrientationPatient", "one orientation per series")


def test_chaos_png_grey_values_outside_organ_ranges(chaos_case):
    _, png = t2_files(chaos_case)
    grey = np.array(Image.open(png[4]))
    grey[:3, :3] = 90  # between liver (55-70) and right kidney (110-135)
    Image.fromarray(grey, mode="L").save(png[4])
    expect_error(lambda: load_chaos_case(chaos_case), png[4], "grey values [90]", "liver 55-70")
