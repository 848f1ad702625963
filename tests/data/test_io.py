"""NIfTI reading and writing on files other tools wrote (nibabel's bundled test data) and header variants of them.

Checked with nibabel AND SimpleITK (ITK reads the sform only when its code is 1 "scanner", else the qform, while
nibabel prefers any sform): a label map written with the input's header lands on the input's grid in both.
"""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import pytest
from nibabel.testing import data_path

from segzoo.data.io import DataError, is_nifti_name, load_nifti, load_nifti_with_header, save_nifti

sitk = pytest.importorskip("SimpleITK")


def sitk_geometry(path) -> tuple:
    img = sitk.ReadImage(str(path))
    return img.GetSize(), img.GetOrigin(), img.GetSpacing(), img.GetDirection()


def assert_same_sitk_grid(a, b):
    (sa, oa, pa, da), (sb, ob, pb, db) = sitk_geometry(a), sitk_geometry(b)
    assert sa == sb
    np.testing.assert_allclose(oa, ob, atol=1e-4)
    np.testing.assert_allclose(pa, pb, atol=1e-6)
    np.testing.assert_allclose(da, db, atol=1e-6)


def header_fields(h) -> dict:
    return {
        "qform": h.get_qform(),
        "sform": h.get_sform(),
        "qform_code": int(h["qform_code"]),
        "sform_code": int(h["sform_code"]),
        "quatern": [
            float(h[k]) for k in ("quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y", "qoffset_z")
        ],
        "pixdim": np.asarray(h["pixdim"]).tolist(),
        "units": h.get_xyzt_units(),
        "descrip": bytes(h["descrip"]),
    }


def assert_header_kept(src_header, out_path):
    out = nib.load(str(out_path))
    assert out.get_data_dtype() == np.uint8
    a, b = header_fields(src_header), header_fields(out.header)
    for key in a:
        if key in ("qform", "sform", "quatern", "pixdim"):
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
        else:
            assert a[key] == b[key], key
    slope, inter = out.header.get_slope_inter()
    assert slope in (None, 1.0) and inter in (None, 0.0)


@pytest.mark.parametrize("name", ["anatomical.nii", "reoriented_anat_moved.nii", "standard.nii.gz"])
def test_label_map_keeps_the_header_of_real_files(tmp_path, name):
    src = os.path.join(data_path, name)
    image, affine, header = load_nifti_with_header(src, dtype=np.float32)
    labels = (image > np.median(image)).astype(np.uint8)
    out = save_nifti(labels, None, tmp_path / "pred.nii.gz", header=header)
    assert_header_kept(nib.load(src).header, out)
    np.testing.assert_array_equal(load_nifti(out)[0], labels)
    assert_same_sitk_grid(src, out)


def test_qform_and_sform_that_differ_overlay_in_simpleitk(tmp_path):
    """The overlay of the issue: qform (code 1) and an "aligned" sform (code 2) 6 mm apart. ITK shows the image
    at the qform; a label map whose qform was overwritten with the sform would sit ~7 mm away in ITK viewers."""
    anat = nib.load(os.path.join(data_path, "anatomical.nii"))
    q = anat.header.get_qform()
    s = q.copy()
    s[:3, 3] += [4.0, -3.0, 5.0]
    img = nib.Nifti1Image(np.asarray(anat.dataobj), None, anat.header.copy())
    img.header.set_qform(q, code=1)
    img.header.set_sform(s, code=2)
    src = tmp_path / "qs_differ.nii.gz"
    img.to_filename(src)
    image, affine, header = load_nifti_with_header(src, dtype=np.float32)
    np.testing.assert_allclose(affine, s)  # nibabel's choice: the sform
    labels = (image > 0).astype(np.uint8)
    out = save_nifti(labels, None, tmp_path / "pred.nii.gz", header=header)
    assert_header_kept(img.header, out)
    assert_same_sitk_grid(src, out)
    # the old behaviour (qform := sform, codes 1) really does move the overlay in ITK: this test can fail
    old = save_nifti(labels, affine, tmp_path / "old.nii.gz")
    shift = np.subtract(sitk_geometry(old)[1], sitk_geometry(src)[1])
    assert np.linalg.norm(shift) > 5


def test_nifti2_and_trailing_singleton_axis(tmp_path):
    src = nib.load(os.path.join(data_path, "example_nifti2.nii.gz"))  # NIfTI-2, (32, 20, 12, 2), qform != sform
    assert isinstance(src, nib.Nifti2Image)
    one = nib.Nifti2Image(np.asarray(src.dataobj)[..., :1], None, src.header.copy())  # (X, Y, Z, 1)
    path = tmp_path / "one_volume.nii.gz"
    one.to_filename(path)
    image, _, header = load_nifti_with_header(path, dtype=np.float32)
    assert image.shape == (32, 20, 12)  # accepted as 3D
    out = save_nifti((image > image.mean()).astype(np.uint8), None, tmp_path / "pred.nii.gz", header=header)
    written = nib.load(out)
    assert isinstance(written, nib.Nifti2Image) and written.shape == (32, 20, 12, 1)  # the input's shape
    assert_header_kept(one.header, out)  # (SimpleITK cannot read NIfTI-2: nibabel only)
    func = nib.load(os.path.join(data_path, "functional.nii"))  # NIfTI-1, (17, 21, 3, 20): first volume
    first = nib.Nifti1Image(np.asarray(func.dataobj)[..., :1], None, func.header.copy())
    first.to_filename(tmp_path / "first.nii")
    image, _, header = load_nifti_with_header(tmp_path / "first.nii", dtype=np.float32)
    assert image.shape == (17, 21, 3)
    out = save_nifti((image > image.mean()).astype(np.uint8), None, tmp_path / "pred1.nii.gz", header=header)
    assert nib.load(out).shape == (17, 21, 3, 1)
    assert_header_kept(first.header, out)
    assert_same_sitk_grid(tmp_path / "first.nii", out)


def test_upper_case_suffixes(tmp_path):
    data = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    for name in ("CT.NII.GZ", "CT2.NII", "Ct3.Nii.Gz"):
        plain = "x.nii.gz" if name.lower().endswith(".gz") else "x.nii"
        nib.Nifti1Image(data, np.eye(4)).to_filename(tmp_path / plain)
        (tmp_path / plain).rename(tmp_path / name)  # (nibabel would lower-case "Nii" when writing)
        assert is_nifti_name(tmp_path / name)
        np.testing.assert_array_equal(load_nifti(tmp_path / name)[0], data)
    assert not is_nifti_name("notes.txt") and not is_nifti_name("image.nii.bak")


def _expect(path, *words):
    with pytest.raises(DataError) as info:
        load_nifti(path, dtype=np.float32)
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg
    for w in words:
        assert w in msg, msg
    assert "corrupt or truncated" not in msg and "NaN" not in msg
    return msg


def test_overflow_is_not_called_nan(tmp_path):
    data = np.ones((3, 3, 3), np.float64)
    data[1, 1, 1] = 1e39  # finite in float64, inf in float32
    path = tmp_path / "big.nii.gz"
    nib.Nifti1Image(data, np.eye(4)).to_filename(path)
    _expect(path, "exceed float32 range", "1e+39")
    assert load_nifti(path)[0].dtype == np.float64  # read as stored it is fine


def test_rgb_vector_and_complex_are_refused_with_their_type(tmp_path):
    rgb = np.zeros((4, 4, 3), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    img = nib.Nifti1Image(rgb, np.eye(4))
    img.to_filename(tmp_path / "rgb.nii.gz")
    _expect(tmp_path / "rgb.nii.gz", "expected a scalar image, got RGB")
    nib.Nifti1Image(np.ones((4, 4, 3), np.complex64), np.eye(4)).to_filename(tmp_path / "cplx.nii.gz")
    _expect(tmp_path / "cplx.nii.gz", "expected a scalar image, got complex (complex64)")
    vec = nib.Nifti1Image(np.zeros((4, 4, 3, 1, 3), np.float32), np.eye(4))
    vec.header.set_intent("vector")
    vec.to_filename(tmp_path / "vec.nii.gz")
    _expect(tmp_path / "vec.nii.gz", "expected a scalar image, got vector")
    nib.Nifti1Image(np.zeros((4, 4, 3, 1, 2), np.float32), np.eye(4)).to_filename(tmp_path / "comp.nii.gz")
    _expect(tmp_path / "comp.nii.gz", "expected a scalar image, got vector / multi-component")
