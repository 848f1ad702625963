"""DICOM series -> volume: known volumes written as CT series in several orientations, shuffled on disk, compressed
or not, read back voxel for voxel on SimpleITK's grid; pydicom's own files as data segzoo did not write; one line
for each series that cannot be a volume."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from expect import expect_error
from pydicom.data import get_testdata_file
from pydicom.uid import DeflatedExplicitVRLittleEndian, JPEGLSLossless, RLELossless
from scipy import ndimage

from segzoo.data.dicom_series import is_dicom_folder, list_series, load_dicom_series
from segzoo.data.io import DataError, load_nifti, save_nifti
from segzoo.data.synthetic.dicom_series import write_ct_series

sitk = pytest.importorskip("SimpleITK")


def affine_of(columns, origin=(12.5, -30.0, 41.0)) -> np.ndarray:
    """RAS affine whose columns are the (column, row, slice) steps."""
    a = np.eye(4)
    a[:3, :3] = np.asarray(columns, dtype=float).T
    a[:3, 3] = origin
    return a


# RAS steps of (column, row, slice); DICOM's LPS row direction is RAS -x for a patient seen from the feet
ORIENTATIONS = {
    # head first supine, slices stored from feet to head (+z along the normal)
    "axial_head_first": affine_of([[-0.7, 0, 0], [0, -0.8, 0], [0, 0, 2.5]]),
    # feet first supine: the row direction is mirrored (LPS -x), slices run head to feet
    "axial_feet_first": affine_of([[0.7, 0, 0], [0, -0.8, 0], [0, 0, -2.5]]),
    # coronal: rows run down the patient, slices from anterior to posterior
    "coronal": affine_of([[-0.7, 0, 0], [0, 0, -0.8], [0, 3.0, 0]]),
    # axial with the slices stored head to feet (against the normal): the reader reverses them
    "axial_descending": affine_of([[-0.7, 0, 0], [0, -0.8, 0], [0, 0, -2.5]]),
}
SYNTAXES = {
    "uncompressed": None,
    "rle": RLELossless,
    "deflate": DeflatedExplicitVRLittleEndian,
    "jpegls": JPEGLSLossless,
}


def phantom(shape=(33, 24, 6), seed=0) -> np.ndarray:
    """Integer HU volume (columns, rows, slices), asymmetric in every axis, air to bone."""
    rng = np.random.default_rng(seed)
    body = ndimage.gaussian_filter(rng.normal(0, 1, shape), 2.0)
    hu = np.rint(body / body.std() * 300 + np.linspace(-200, 400, shape[0])[:, None, None])
    hu[:2, :3, 0] = -1000  # a corner of air in the first slice
    return np.clip(hu, -1024, 3000)


def sitk_volume(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """SimpleITK's series reader on ``folder``: ``(array (columns, rows, slices), RAS affine)``."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    image = reader.Execute()
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    lps = np.eye(4)
    lps[:3, :3] = direction * np.asarray(image.GetSpacing())
    lps[:3, 3] = image.GetOrigin()
    # ITK's physical space is LPS: negate x and y for NIfTI's RAS; its index (i, j, k) is (column, row, slice)
    return sitk.GetArrayFromImage(image).transpose(2, 1, 0), np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def known(hu: np.ndarray, affine: np.ndarray, read_affine: np.ndarray) -> np.ndarray:
    """The written volume in the reader's slice order: as written, or reversed when the slices ran against the
    normal (then the slice column of the affine flips and the origin moves to the last written slice)."""
    if np.allclose(read_affine, affine, atol=1e-5):
        return hu
    flipped = affine @ np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, -1, hu.shape[2] - 1], [0, 0, 0, 1.0]])
    np.testing.assert_allclose(read_affine, flipped, atol=1e-5)
    return hu[..., ::-1]


@pytest.mark.parametrize("orientation", sorted(ORIENTATIONS))
@pytest.mark.parametrize("syntax", sorted(SYNTAXES))
def test_series_reads_as_the_written_volume_on_simpleitks_grid(tmp_path, orientation, syntax):
    hu, affine = phantom(), ORIENTATIONS[orientation]
    files = write_ct_series(tmp_path, hu, affine, transfer_syntax=SYNTAXES[syntax], shuffle_names=True)
    assert sorted(files) != files  # names unrelated to the slice order
    if SYNTAXES[syntax] is not None:
        assert pydicom.dcmread(files[0]).file_meta.TransferSyntaxUID == SYNTAXES[syntax]
    series = load_dicom_series(tmp_path)
    assert series.image.dtype == np.float32 and series.image.shape == hu.shape
    np.testing.assert_array_equal(series.image, known(hu, affine, series.affine))
    ref, ref_affine = sitk_volume(tmp_path)
    np.testing.assert_allclose(series.affine, ref_affine, atol=1e-4)
    np.testing.assert_array_equal(series.image, ref)
    # files and headers follow the volume: slice k of the array is the file at the k-th position along the normal
    normal = np.cross(*np.asarray(series.headers[0].ImageOrientationPatient, float).reshape(2, 3))
    along = [np.dot(np.asarray(h.ImagePositionPatient, float), normal) for h in series.headers]
    assert along == sorted(along) and [h.filename for h in series.headers] == [str(f) for f in series.files]


def test_oblique_series_keeps_its_rotation(tmp_path):
    angle = np.radians(12.0)
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = affine_of((rot @ np.diag([-0.7, -0.8, 2.5])).T)
    hu = phantom()
    write_ct_series(tmp_path, hu, affine)
    series = load_dicom_series(tmp_path)
    np.testing.assert_allclose(series.affine, affine, atol=1e-5)
    np.testing.assert_allclose(sitk_volume(tmp_path)[1], series.affine, atol=1e-4)
    np.testing.assert_array_equal(series.image, hu)


def test_rescale_slope_and_intercept_are_applied(tmp_path):
    hu = phantom() / 2  # half-HU steps need slope 0.5
    write_ct_series(tmp_path, hu, ORIENTATIONS["axial_head_first"], rescale_slope=0.5, rescale_intercept=-2048)
    assert pydicom.dcmread(next(tmp_path.iterdir())).RescaleSlope == 0.5
    series = load_dicom_series(tmp_path)
    np.testing.assert_array_equal(series.image, hu)
    np.testing.assert_allclose(series.image, sitk_volume(tmp_path)[0])


def test_affine_follows_the_nifti_convention(tmp_path):
    """A NIfTI written with the series' affine puts every voxel where SimpleITK puts the DICOM voxel."""
    write_ct_series(tmp_path / "dcm", phantom(), ORIENTATIONS["coronal"], shuffle_names=True)
    series = load_dicom_series(tmp_path / "dcm")
    save_nifti(series.image, series.affine, tmp_path / "ct.nii.gz")
    data, affine = load_nifti(tmp_path / "ct.nii.gz")
    np.testing.assert_array_equal(data, series.image)
    nifti = sitk.ReadImage(str(tmp_path / "ct.nii.gz"))
    dicom = sitk.ReadImage(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(tmp_path / "dcm")))
    for index in [(0, 0, 0), (5, 7, 3), (32, 23, 5)]:
        np.testing.assert_allclose(
            nifti.TransformIndexToPhysicalPoint(index), dicom.TransformIndexToPhysicalPoint(index), atol=1e-4
        )


# ------------------------------------------------------------------------------------------ pydicom's own files
def pydicom_file(name: str) -> Path:
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"pydicom test file {name} not bundled")
    return Path(path)


def test_real_ct_series_from_pydicom_matches_simpleitk():
    folder = pydicom_file("dicomdirtests/98892001/CT5N/2062").parent  # 5 slices, stored head to feet
    series = load_dicom_series(folder)
    ref, ref_affine = sitk_volume(folder)
    assert series.image.shape == (16, 16, 5)
    np.testing.assert_allclose(series.affine, ref_affine, atol=1e-4)
    np.testing.assert_array_equal(series.image, ref)
    assert np.diff([float(h.ImagePositionPatient[2]) for h in series.headers]).tolist() == pytest.approx([2.5] * 4)


def test_a_real_ct_slice_stacked_into_a_series(tmp_path):
    """CT_small.dcm (a scanner's slice, int16 with its own rescale) copied to 4 positions, written in reverse."""
    src = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    ref = src.pixel_array.astype(np.float32) * float(src.RescaleSlope) + float(src.RescaleIntercept)
    iop = np.asarray(src.ImageOrientationPatient, float)
    normal = np.cross(iop[:3], iop[3:])
    for k in range(4):
        ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))
        ds.ImagePositionPatient = list(np.asarray(src.ImagePositionPatient, float) + (3 - k) * 1.25 * normal)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=[str(k)])
        ds.save_as(tmp_path / f"{k}.dcm")
    series = load_dicom_series(tmp_path)
    assert [f.name for f in series.files] == ["3.dcm", "2.dcm", "1.dcm", "0.dcm"]
    for k in range(4):
        np.testing.assert_array_equal(series.image[..., k], ref.T)
    sitk_image, sitk_affine = sitk_volume(tmp_path)
    np.testing.assert_allclose(series.affine, sitk_affine, atol=1e-4)
    np.testing.assert_array_equal(series.image, sitk_image)


@pytest.mark.parametrize(
    "where, culprit, expected",
    [
        ("dicomdirtests/77654033/CT2/17106", "17136", ["a missing slice", "expected evenly spaced slices"]),
        ("dicomdirtests/98892001/CT2N/6293", "6924", ["ImageOrientationPatient", "mixed orientations"]),
        ("dicomdirtests/98892003/MR700/4467", "MR700", ["mixed orientations"]),
    ],
)
def test_real_series_that_are_no_volume_are_refused(where, culprit, expected):
    folder = pydicom_file(where).parent
    expect_error(lambda: load_dicom_series(folder), culprit, *expected)


def test_real_study_folder_lists_its_series_and_one_is_picked():
    study = pydicom_file("dicomdirtests/77654033/CT2/17106").parent.parent
    with pytest.raises(DataError) as info:
        load_dicom_series(study)
    lines = str(info.value).splitlines()
    assert str(study) in lines[0] and "4 DICOM series" in lines[0] and "--series UID" in lines[0]
    series, _ = list_series(study)
    assert len(lines) == 5 and [s.uid for s in series] == [line.split()[0] for line in lines[1:]]
    assert any("CT" in line and "'Routine Brain'" in line and "4 files in CT2" in line for line in lines[1:])
    cr = next(s for s in series if s.modality == "CR")
    expect_error(lambda: load_dicom_series(study, cr.uid), "6154", "the only slice")  # picked, then refused


# ----------------------------------------------------------------------------------------- refused, one line each
@pytest.fixture
def series_dir(tmp_path) -> Path:
    folder = tmp_path / "series"
    write_ct_series(folder, phantom(), ORIENTATIONS["axial_head_first"])
    return folder


def edit(path: Path, **tags) -> None:
    ds = pydicom.dcmread(path)
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.save_as(path)


def test_missing_slice(series_dir):
    (series_dir / "slice_003.dcm").unlink()
    expect_error(lambda: load_dicom_series(series_dir), "slice_004.dcm", "a missing slice", "from slice_002.dcm")


def test_unevenly_spaced_slices(series_dir):
    ipp = pydicom.dcmread(series_dir / "slice_003.dcm").ImagePositionPatient
    edit(series_dir / "slice_003.dcm", ImagePositionPatient=[ipp[0], ipp[1], float(ipp[2]) + 0.6])
    expect_error(lambda: load_dicom_series(series_dir), "slice_003.dcm", "uneven spacing", "2.500 mm")


def test_two_slices_at_one_position(series_dir):
    ipp = pydicom.dcmread(series_dir / "slice_002.dcm").ImagePositionPatient
    edit(series_dir / "slice_003.dcm", ImagePositionPatient=ipp)
    expect_error(lambda: load_dicom_series(series_dir), "slice_00", "two slices at one position")


def test_gantry_tilt(tmp_path):
    tilt = np.radians(15)
    # slices step along +z and drift along y: a tilted gantry's stack, sheared against the slice normal
    affine = affine_of([[-0.7, 0, 0], [0, -0.8, 0], [0, -2.5 * np.tan(tilt), 2.5]])
    write_ct_series(tmp_path, phantom(), affine)
    msg = expect_error(lambda: load_dicom_series(tmp_path), "slice_005.dcm", "gantry tilt of 15.00 degrees")
    assert str(tmp_path / "slice_005.dcm") in msg


def test_mixed_orientation(series_dir):
    edit(series_dir / "slice_004.dcm", ImageOrientationPatient=[1, 0, 0, 0, 0, -1])
    expect_error(lambda: load_dicom_series(series_dir), "slice_004.dcm", "mixed orientations")


def test_mixed_size(series_dir):
    ds = pydicom.dcmread(series_dir / "slice_001.dcm")
    ds.Rows = ds.Rows - 4
    ds.PixelData = ds.PixelData[: ds.Rows * ds.Columns * 2]
    ds.save_as(series_dir / "slice_001.dcm")
    expect_error(lambda: load_dicom_series(series_dir), "slice_001.dcm", "slice size 20x33", "mixed sizes")


def test_mixed_pixel_spacing(series_dir):
    edit(series_dir / "slice_002.dcm", PixelSpacing=[0.9, 0.7])
    expect_error(lambda: load_dicom_series(series_dir), "slice_002.dcm", "mixed pixel spacings")


def test_two_series_in_one_folder_and_picking_one(tmp_path):
    hu = phantom()
    a = write_ct_series(tmp_path, hu, ORIENTATIONS["axial_head_first"], series="a", shuffle_names=True)
    write_ct_series(tmp_path / "sub", hu[::-1], ORIENTATIONS["coronal"], series="b", description="second")
    with pytest.raises(DataError) as info:
        load_dicom_series(tmp_path)
    lines = str(info.value).splitlines()
    assert len(lines) == 3 and "2 DICOM series" in lines[0] and str(tmp_path) in lines[0]
    uid_a = pydicom.dcmread(a[0]).SeriesInstanceUID
    assert any(line.split()[0] == uid_a and "6 files in ." in line for line in lines[1:])
    assert any("'second'" in line and "6 files in sub" in line for line in lines[1:])
    np.testing.assert_array_equal(load_dicom_series(tmp_path, uid_a).image, hu)
    with pytest.raises(DataError) as info:
        load_dicom_series(tmp_path, "1.2.3")
    lines = str(info.value).splitlines()
    assert "no DICOM series with SeriesInstanceUID 1.2.3" in lines[0] and len(lines) == 3  # and the ones there are


def test_missing_geometry_tag(series_dir):
    ds = pydicom.dcmread(series_dir / "slice_002.dcm")
    del ds.ImagePositionPatient
    ds.save_as(series_dir / "slice_002.dcm")
    expect_error(lambda: load_dicom_series(series_dir), "slice_002.dcm", "missing or invalid ImagePositionPatient")


def test_multi_frame_file(series_dir):
    edit(series_dir / "slice_000.dcm", NumberOfFrames=2)
    expect_error(lambda: load_dicom_series(series_dir), "slice_000.dcm", "multi-frame", "single-frame")


def test_corrupt_file_is_named(series_dir):
    path = series_dir / "slice_002.dcm"
    path.write_bytes(path.read_bytes()[:300])
    expect_error(lambda: load_dicom_series(series_dir), "slice_002.dcm", "corrupt")


def test_single_slice(tmp_path):
    write_ct_series(tmp_path, phantom()[..., :1], ORIENTATIONS["axial_head_first"])
    expect_error(lambda: load_dicom_series(tmp_path), "slice_000.dcm", "at least 2 slices")


def test_folder_without_images(tmp_path):
    shutil.copy(pydicom_file("rtstruct.dcm"), tmp_path / "rtstruct.dcm")  # DICOM, but not an image
    (tmp_path / "notes.txt").write_text("x")
    expect_error(lambda: load_dicom_series(tmp_path), str(tmp_path), "no DICOM image files")
    expect_error(lambda: load_dicom_series(tmp_path / "nope"), "nope", "not found")


def test_dicom_folder_detection(tmp_path, series_dir):
    assert is_dicom_folder(series_dir) and is_dicom_folder(series_dir.parent)  # found at any depth
    save_nifti(np.zeros((2, 2, 2)), np.eye(4), tmp_path / "ct.nii.gz")
    assert not is_dicom_folder(tmp_path)  # a NIfTI at the top: a NIfTI folder
    (tmp_path / "empty").mkdir()
    assert not is_dicom_folder(tmp_path / "empty")
