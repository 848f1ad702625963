"""The BraTS and CHAOS layouts as sources: ``open_source`` picks their readers, the cases load as the datasets' own
readers load them, and ``segzoo verify`` passes good data and names the file of each broken variant. Data: segzoo's
synthetic generators (the real formats) and real outside files (nibabel's and pydicom's test data)."""

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from segzoo.cli import main
from segzoo.data.brats import BRATS_LABELS, brats_label_to_index, load_brats_case
from segzoo.data.chaos import CHAOS_GREY_RANGES, load_chaos_case, load_chaos_series
from segzoo.data.fingerprint import compute_fingerprint
from segzoo.data.geometry import axis_codes, spacing_from_affine
from segzoo.data.io import DataError
from segzoo.data.planning import header_fingerprint, normalization_for
from segzoo.data.sources import ImageCase, open_source, read_chaos
from segzoo.data.sources.chaos import ChaosImageCase
from segzoo.data.synthetic import write_synthetic
from segzoo.data.verify import verify_dataset

MODALITIES = ("t1", "t1ce", "t2", "flair")


@pytest.fixture(scope="module")
def brats(tmp_path_factory):
    root = tmp_path_factory.mktemp("brats") / "BraTS2021"
    write_synthetic("brats", root, cases=2, seed=0)
    return root


@pytest.fixture(scope="module")
def chaos(tmp_path_factory):
    root = tmp_path_factory.mktemp("chaos") / "CHAOS"
    write_synthetic("chaos", root, cases=2, seed=0)
    return root


def _real_nifti_case(root: Path) -> Path:
    """A BraTS case folder of nibabel's real ``anatomical.nii`` (big-endian int16, LAS): T1 is the file itself, the
    other modalities scaled copies in big-endian float32 under its header, the seg big-endian int16 under it."""
    from nibabel.testing import data_path

    src = Path(data_path) / "anatomical.nii"
    img = nib.load(str(src))
    assert img.get_data_dtype().byteorder == ">" and img.ndim == 3  # the header variant this case is about
    case = root / "BraTS2021_99999"
    case.mkdir(parents=True)
    shutil.copyfile(src, case / f"{case.name}_t1.nii")
    data = np.asarray(img.dataobj)
    for k, m in enumerate(MODALITIES[1:], start=2):
        out = nib.Nifti1Image((data.astype(np.float32) * k).astype(">f4"), img.affine, img.header)
        out.set_data_dtype(">f4")
        nib.save(out, str(case / f"{case.name}_{m}.nii"))
    seg = np.zeros(img.shape, dtype=">i2")
    seg[5:15, 5:20, 5:12], seg[8:12, 8:16, 7:10], seg[9:11, 10:14, 8:9] = 2, 1, 4
    nib.save(nib.Nifti1Image(seg, img.affine, img.header), str(case / f"{case.name}_seg.nii"))
    return case


def _copy(src: Path, tmp_path: Path) -> Path:
    root = tmp_path / src.name
    shutil.copytree(src, root)
    return root


# ------------------------------------------------------------------------------------------------------------ BraTS
@pytest.mark.parametrize("layout", ["flat", "2018"])
def test_open_source_reads_brats(tmp_path, layout):
    root = tmp_path / "brats"
    write_synthetic("brats", root, cases=3, seed=1, layout=layout)
    first = next(root.rglob("*_seg.nii.gz"))
    first.unlink()  # a case without seg: a test case
    source = open_source(root)
    assert source.kind == "brats" and source.problems == []
    assert source.channel_names == ["T1", "T1ce", "T2", "FLAIR"]
    assert [normalization_for(n) for n in source.channel_names] == ["zscore"] * 4  # MR: z-score per case
    assert source.labels == {0: "background", 1: "necrotic_core", 2: "edema", 3: "enhancing_tumor"}
    assert source.num_classes == 4 and source.in_channels == 4
    cases = sorted(p.parent.name for p in root.rglob("*_flair.nii.gz"))
    assert sorted(c.case_id for c in [*source.training, *source.test]) == cases
    assert [c.case_id for c in source.test] == [first.parent.name] and source.test[0].label is None
    for case in source.training:
        assert [p.name for p in case.images] == [f"{case.case_id}_{m}.nii.gz" for m in MODALITIES]
        assert case.label.name == f"{case.case_id}_seg.nii.gz"
        assert case.label_values == (0, 1, 2, 4) and case.num_channels == 4
    if layout == "2018":
        assert {c.images[0].parent.parent.name for c in [*source.training, *source.test]} <= {"HGG", "LGG"}


def test_brats_case_loads_as_load_brats_case(brats):
    source = open_source(brats)
    seen = set()
    for case in source.training:
        image, label, affine = case.load()
        ref = load_brats_case(brats / case.case_id)
        np.testing.assert_array_equal(image, ref.image)
        np.testing.assert_array_equal(affine, ref.affine)
        # the source's classes are indices 0..3; the seg file's values are 0/1/2/4 (load_brats_case keeps them)
        np.testing.assert_array_equal(label, brats_label_to_index(ref.label))
        np.testing.assert_array_equal(np.asarray(BRATS_LABELS)[label], ref.label)
        seen |= set(np.unique(label).tolist())
    assert seen == {0, 1, 2, 3}  # the enhancing tumour (4 on disk) is class 3


def test_brats_case_from_real_nifti_header(brats, tmp_path):
    root = _copy(brats, tmp_path)
    case_dir = _real_nifti_case(root)
    source = open_source(root)
    case = next(c for c in source.training if c.case_id == case_dir.name)
    assert [p.suffix for p in case.images] == [".nii"] * 4
    image, label, affine = case.load()
    ref = load_brats_case(case_dir)
    assert image.shape == (4, 33, 41, 25) and image.dtype == np.float32
    np.testing.assert_array_equal(image, ref.image)
    np.testing.assert_array_equal(image[1], 2 * image[0])  # the byte-swapped voxels read as numbers
    np.testing.assert_allclose(affine, nib.load(str(case.image)).affine)
    np.testing.assert_array_equal(np.asarray(BRATS_LABELS)[label], ref.label)
    assert np.unique(label).tolist() == [0, 1, 2, 3]
    report = verify_dataset(root)
    assert report.ok, report.errors


def _missing_modality(root: Path) -> str:
    path = next(root.rglob("*_t1ce.nii.gz"))
    path.unlink()
    return path.name


def _missing_flair(root: Path) -> str:
    path = sorted(root.rglob("*_flair.nii.gz"))[-1]
    path.unlink()
    return path.name


def _seg_value_3(root: Path) -> str:
    path = sorted(root.rglob("*_seg.nii.gz"))[0]
    img = nib.load(str(path))
    seg = np.asarray(img.dataobj).astype(np.uint8)
    seg[0, 0, 0] = 3  # BraTS 2023's enhancing tumour in a 2018-2021 dataset
    nib.save(nib.Nifti1Image(seg, img.affine), str(path))
    return path.name


def _real_4d_as_t2(root: Path) -> str:
    from nibabel.testing import data_path

    path = next(root.rglob("*_t2.nii.gz"))
    shutil.copyfile(Path(data_path) / "example4d.nii.gz", path)  # a real 4D fMRI file in a modality's place
    return path.name


BROKEN_BRATS = {
    "missing modality": _missing_modality,
    "missing flair": _missing_flair,
    "undeclared label value 3": _seg_value_3,
    "real 4D NIfTI as a modality": _real_4d_as_t2,
}


@pytest.mark.parametrize("name", sorted(BROKEN_BRATS))
def test_verify_brats_names_the_file(brats, tmp_path, capsys, name):
    root = _copy(brats, tmp_path)
    culprit = BROKEN_BRATS[name](root)
    report = verify_dataset(root)
    assert len(report.errors) == 1 and culprit in report.errors[0], (name, report.errors)
    assert main(["verify", str(root)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if ": error: " in line]
    assert len(err) == 1 and culprit in err[0] and err[0].startswith("segzoo verify: error: ")


def test_verify_passes_good_brats(brats, capsys):
    report = verify_dataset(brats)
    assert report.ok and report.errors == [] and report.cases_checked == 2
    assert main(["verify", str(brats)]) == 0
    out = capsys.readouterr().out
    assert "brats dataset" in out and "OK" in out


def test_brats_seg_value_3_fails_load(brats, tmp_path):
    root = _copy(brats, tmp_path)
    culprit = _seg_value_3(root)
    case = next(c for c in open_source(root).training if c.label.name == culprit)
    with pytest.raises(DataError, match=r"label values \[3\]"):
        case.load()


# ------------------------------------------------------------------------------------------------------------ CHAOS
@pytest.mark.parametrize("where", ["", "Train_Sets", "Train_Sets/MR"])
def test_open_source_reads_chaos(chaos, where):
    source = open_source(chaos / where if where else chaos)
    assert source.kind == "chaos" and source.problems == []
    assert source.channel_names == ["MR"] and normalization_for("MR") == "zscore"
    assert source.labels == {0: "background", 1: "liver", 2: "right_kidney", 3: "left_kidney", 4: "spleen"}
    assert [c.case_id for c in source.training] == ["1", "2"] and source.test == []
    for case in source.training:
        assert isinstance(case, ChaosImageCase) and case.sequence == "T2SPIR"
        dicoms = sorted((case.case_dir / "T2SPIR" / "DICOM_anon").glob("*.dcm"))
        pngs = sorted((case.case_dir / "T2SPIR" / "Ground").glob("*.png"))
        assert set(case.files) == {*dicoms, *pngs} and len(dicoms) == len(pngs)


def test_chaos_case_loads_as_load_chaos_case(chaos):
    for sequence in ("T2SPIR", "T1DUAL_InPhase"):
        for case in read_chaos(chaos, sequence).training:
            image, label, affine = case.load()
            ref = load_chaos_case(case.case_dir, sequence)
            assert image.shape == (1, *ref.image.shape) and image.dtype == np.float32 and label.dtype == np.uint8
            np.testing.assert_array_equal(image[0], ref.image)
            np.testing.assert_array_equal(label, ref.label)
            np.testing.assert_array_equal(affine, load_chaos_series(case.images[0]).affine)
            np.testing.assert_allclose(np.linalg.norm(affine[:3, :3], axis=0), ref.spacing, rtol=1e-5)
            assert set(np.unique(label)) <= {0, 1, 2, 3, 4} and label.any()


def test_chaos_case_without_ground_is_a_test_case(chaos, tmp_path):
    root = _copy(chaos, tmp_path)
    shutil.rmtree(root / "Train_Sets" / "MR" / "2" / "T2SPIR" / "Ground")
    source = open_source(root)
    assert [c.case_id for c in source.training] == ["1"] and [c.case_id for c in source.test] == ["2"]
    image, label, _ = source.test[0].load()
    assert label is None and image.shape[0] == 1


def _real_mr_case(root: Path) -> Path:
    """A one-slice CHAOS case of pydicom's real ``MR_small.dcm`` (64x64, big-endian) with a liver mask."""
    from PIL import Image
    from pydicom.data import get_testdata_file

    case = root / "Train_Sets" / "MR" / "77"
    (case / "T2SPIR" / "DICOM_anon").mkdir(parents=True)
    (case / "T2SPIR" / "Ground").mkdir(parents=True)
    shutil.copyfile(get_testdata_file("MR_small.dcm"), case / "T2SPIR" / "DICOM_anon" / "IMG-0002-00001.dcm")
    grey = np.zeros((64, 64), dtype=np.uint8)
    grey[20:40, 10:30] = CHAOS_GREY_RANGES[1][0]
    Image.fromarray(grey, mode="L").save(case / "T2SPIR" / "Ground" / "IMG-0002-00001.png")
    return case


def test_chaos_case_from_real_dicom(chaos, tmp_path):
    import pydicom
    from pydicom.data import get_testdata_file

    root = _copy(chaos, tmp_path)
    case_dir = _real_mr_case(root)
    source = open_source(root)
    case = next(c for c in source.training if c.case_id == "77")
    image, label, affine = case.load()
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    np.testing.assert_array_equal(image[0, 0], ds.pixel_array.astype(np.float32))
    np.testing.assert_array_equal(label, load_chaos_case(case_dir).label)
    assert label.sum() == 400 and set(np.unique(label)) == {0, 1}
    # the in-plane axes step by PixelSpacing along ImageOrientationPatient (LPS -> RAS)
    row, col = (float(v) for v in ds.PixelSpacing)
    np.testing.assert_allclose(np.linalg.norm(affine[:3, 1:3], axis=0), [row, col])
    assert verify_dataset(root).ok


def _real_dicom_in_series(root: Path) -> str:
    from pydicom.data import get_testdata_file

    folder = root / "Train_Sets" / "MR" / "2" / "T2SPIR" / "DICOM_anon"
    path = folder / "IMG-0002-00099.dcm"  # sorts last: a stray real MR slice of another size (64x64)
    shutil.copyfile(get_testdata_file("MR_small.dcm"), path)
    return path.name


def _grey_out_of_range(root: Path) -> str:
    from PIL import Image

    path = sorted((root / "Train_Sets" / "MR" / "1" / "T2SPIR" / "Ground").glob("*.png"))[3]
    grey = np.asarray(Image.open(path)).copy()
    grey[0, 0] = 30  # no organ's range
    Image.fromarray(grey, mode="L").save(path)
    return path.name


def _missing_dicom_folder(root: Path) -> str:
    shutil.rmtree(root / "Train_Sets" / "MR" / "1" / "T2SPIR" / "DICOM_anon")
    return "DICOM_anon"


BROKEN_CHAOS = {
    "real DICOM of another size in a series": _real_dicom_in_series,
    "mask grey value out of range": _grey_out_of_range,
    "missing DICOM folder": _missing_dicom_folder,
}


@pytest.mark.parametrize("name", sorted(BROKEN_CHAOS))
def test_verify_chaos_names_the_file(chaos, tmp_path, capsys, name):
    root = _copy(chaos, tmp_path)
    culprit = BROKEN_CHAOS[name](root)
    report = verify_dataset(root)
    assert len(report.errors) == 1 and culprit in report.errors[0], (name, report.errors)
    assert main(["verify", str(root)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if ": error: " in line]
    assert len(err) == 1 and culprit in err[0]


def test_verify_passes_good_chaos(chaos, capsys):
    report = verify_dataset(chaos)
    assert report.ok and report.errors == [] and report.cases_checked == 2
    assert main(["verify", str(chaos)]) == 0
    assert "OK" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------------- other layouts
def test_kits19_still_detected_and_unknown_layout_lists_every_form(tmp_path):
    kits = tmp_path / "kits"
    (kits / "case_00000").mkdir(parents=True)
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 6), np.int16), np.eye(4)), str(kits / "case_00000" / "imaging.nii.gz"))
    assert open_source(kits).kind == "kits19"
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(DataError, match="not a dataset") as e:
        open_source(tmp_path / "empty")
    assert "BraTS" in str(e.value) and "CHAOS" in str(e.value) and "KiTS19" in str(e.value)


# ------------------------------------------------------------- dropped cases, what declares the labels (issue 22)
def test_undeclared_value_names_the_layouts_labels(brats, tmp_path):
    root = _copy(brats, tmp_path)
    culprit = _seg_value_3(root)
    [line] = verify_dataset(root).errors
    assert culprit in line and "label values [3] not declared in the BraTS labels [0, 1, 2, 4]" in line
    assert "dataset.json" not in line
    kits = tmp_path / "kits" / "case_00000"
    kits.mkdir(parents=True)
    seg = np.zeros((4, 5, 6), np.uint8)
    seg[1, 1, 1] = 5
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 6), np.int16), np.eye(4)), str(kits / "imaging.nii.gz"))
    nib.save(nib.Nifti1Image(seg, np.eye(4)), str(kits / "segmentation.nii.gz"))
    [line] = verify_dataset(kits.parent).errors
    assert "segmentation.nii.gz: label values [5] not declared in the KiTS19 labels [0, 1, 2]" in line


@pytest.mark.parametrize(
    "layout, breaks", [("brats", _missing_modality), ("brats", _missing_flair), ("chaos", _missing_dicom_folder)]
)
def test_reader_lists_the_training_case_it_dropped(brats, chaos, tmp_path, layout, breaks):
    root = _copy(brats if layout == "brats" else chaos, tmp_path)
    assert open_source(root).dropped_training == []
    culprit = breaks(root)  # <case>_<modality>.nii.gz, or case 1's DICOM_anon folder
    dropped = culprit.rsplit("_", 1)[0] if layout == "brats" else "1"
    source = open_source(root)
    assert source.dropped_training == [dropped] and dropped not in [c.case_id for c in source.training]
    assert len(source.problems) == 1


# ---------------------------------------------------------------------- a CHAOS source through plan and the datamodules
def test_plan_chaos_slices_along_the_series_axis(chaos, capsys):
    assert main(["plan", str(chaos)]) == 0
    plan = json.loads(capsys.readouterr().out)
    source = open_source(chaos)
    image, affine = source.training[0].load_image()  # (1, S, H, W): the DICOM slices on axis 0
    assert plan["dataset"]["kind"] == "chaos" and plan["normalization"] == ["zscore"]
    assert plan["orientation"] == list(axis_codes(affine))  # every synthetic case is stored the same way
    # the 2D nets cut along the series' slice axis: the axial (S/I) one, the coarsest
    assert plan["slice_axis"] == 0 and plan["orientation"][0] in ("S", "I")
    assert plan["median_spacing"] == pytest.approx(list(spacing_from_affine(affine)), abs=1e-4)
    assert plan["median_spacing"][0] > 2 * max(plan["median_spacing"][1:])
    assert len(plan["patch_size"]) == 3 and plan["patch_size"][0] <= plan["patch_size"][1]
    # the fingerprint reads the cases the same way
    fp = compute_fingerprint(source.training, samples_per_case=100)
    assert fp["orientation"] == plan["orientation"] and fp["shapes"]["1"] == list(image.shape[1:])


def test_header_fingerprint_reads_no_voxel_of_a_nifti_case(brats, monkeypatch):
    def no_voxels(self, *a, **k):
        raise AssertionError("a NIfTI case's geometry must come from its header")

    monkeypatch.setattr(ImageCase, "load_image", no_voxels)
    monkeypatch.setattr(ImageCase, "load", no_voxels)
    headers = header_fingerprint(open_source(brats).training)
    img = nib.load(str(sorted(brats.rglob("*_flair.nii.gz"))[0]))
    assert sorted(headers["shapes"][0]) == sorted(img.shape)


def test_slice_datamodule_over_chaos_yields_a_batch(chaos):
    from segzoo.data.datamodule_2d import SliceDataModule

    dm = SliceDataModule(str(chaos), image_size=(32, 32), batch_size=2, train_fraction=0.5, num_workers=0)
    assert dm.in_channels == 1 and dm.num_classes == 5 and dm.slice_axis == 0
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 1, 32, 32) and batch["label"].shape == (2, 1, 32, 32)
    assert torch.isfinite(batch["image"]).all() and set(batch["label"].unique().tolist()) <= {0, 1, 2, 3, 4}
    val = next(iter(dm.val_dataloader()))  # one whole case: as many slices as its DICOM files
    [case] = [c for c in open_source(chaos).training if c.case_id == val["case_id"][0]]
    assert val["image"].shape[2] == len(list(case.images[0].glob("*.dcm")))


def test_chaos_geometry_from_headers_equals_the_read_series(chaos, tmp_path, monkeypatch):
    """Planning's geometry of a CHAOS case comes from the slice headers alone, and equals the grid of the series as
    read (synthetic cases and pydicom's real big-endian MR_small.dcm); no pixel data is decoded for it."""
    import segzoo.data.chaos as chaos_module
    from segzoo.data.planning import case_geometry

    root = _copy(chaos, tmp_path)
    _real_mr_case(root)
    cases = open_source(root).training
    read = {c.case_id: c.load_image() for c in cases}
    monkeypatch.setattr(chaos_module, "_read_slice", lambda path: pytest.fail(f"pixels of {path} decoded"))
    for case in cases:
        affine, shape = case_geometry(case)
        image, expected = read[case.case_id]
        assert shape == image.shape[1:]
        np.testing.assert_allclose(affine, expected, atol=1e-6)
