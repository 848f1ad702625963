"""CHAOS DICOM decoding on pydicom's own test files: compressed transfer syntaxes read, true reasons otherwise."""

from __future__ import annotations

import shutil

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import MPEG2MPML, JPEG2000Lossless, RLELossless

from segzoo.data.chaos import _read_slice, decoder_hint, load_chaos_case
from segzoo.data.io import DataError
from segzoo.data.synthetic.chaos import write_chaos


def pydicom_file(name: str) -> str:
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"pydicom test file {name} not bundled")
    return path


@pytest.mark.parametrize("name", ["MR_small_jpeg_ls_lossless.dcm", "MR_small_RLE.dcm"])
def test_lossless_compressed_files_decode_to_the_uncompressed_pixels(name):
    _, ref = _read_slice(pydicom_file("MR_small.dcm"))
    ds, pixels = _read_slice(pydicom_file(name))
    assert ds.file_meta.TransferSyntaxUID.is_compressed
    np.testing.assert_array_equal(pixels, ref)


@pytest.mark.parametrize(
    "name, syntax",
    [
        ("JPEGLSNearLossless_16.dcm", "JPEG-LS Lossy"),
        ("JPEG2000.dcm", "JPEG 2000"),
        ("JPGExtended.dcm", "JPEG Extended"),  # 12-bit JPEG
    ],
)
def test_compressed_transfer_syntaxes_scanners_write(name, syntax):
    ds, pixels = _read_slice(pydicom_file(name))
    assert syntax in ds.file_meta.TransferSyntaxUID.name
    assert pixels.ndim == 2 and pixels.dtype == np.float32 and pixels.std() > 0


def test_undecodable_transfer_syntax_is_named(tmp_path):
    ds = pydicom.dcmread(pydicom_file("JPEG2000.dcm"))
    ds.file_meta.TransferSyntaxUID = MPEG2MPML
    path = tmp_path / "video.dcm"
    ds.save_as(path)
    with pytest.raises(DataError) as info:
        _read_slice(path)
    msg = str(info.value)
    assert str(path) in msg and "\n" not in msg
    assert "MPEG2 Main Profile / Main Level (1.2.840.10008.1.2.4.100)" in msg and "gdcmconv" in msg
    assert "corrupt" not in msg
    assert "pylibjpeg-libjpeg" in decoder_hint("1.2.840.10008.1.2.4.80")  # JPEG-LS lossless
    assert "pylibjpeg-openjpeg" in decoder_hint("1.2.840.10008.1.2.4.90")


def test_colour_dicom_is_not_a_scalar_image():
    path = pydicom_file("SC_rgb_jpeg_dcmtk.dcm")
    with pytest.raises(DataError, match="expected a scalar image, got .*3 samples per pixel"):
        _read_slice(path)


@pytest.mark.parametrize("syntax", [JPEG2000Lossless, RLELossless])
def test_compressed_chaos_series_reads_like_the_uncompressed_one(tmp_path, syntax):
    write_chaos(tmp_path / "plain", cases=1, seed=0)
    case = tmp_path / "plain" / "Train_Sets" / "MR" / "1"
    packed = tmp_path / "packed" / "1"
    shutil.copytree(case, packed)
    for f in sorted((packed / "T2SPIR" / "DICOM_anon").glob("*.dcm")):
        ds = pydicom.dcmread(f)
        ds.compress(syntax)
        ds.save_as(f)
    a, b = load_chaos_case(case), load_chaos_case(packed)
    assert pydicom.dcmread(next((packed / "T2SPIR" / "DICOM_anon").glob("*.dcm"))).file_meta.TransferSyntaxUID == syntax
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.label, b.label)
    assert a.spacing == b.spacing
