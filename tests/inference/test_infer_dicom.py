"""`segzoo infer` on DICOM: a CT series in, labels on the series' own grid out as NIfTI and as a DICOM Segmentation
that reads back (highdicom, and pydicom alone) to the NIfTI's voxels; per-label statistics; study folders, NIfTI
inputs with DICOM-SEG and series that are no volume refused on one line (exit 2); CHAOS series from 2D nets."""

from __future__ import annotations

import csv
import json

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from expect import expect_cli_error

from segzoo.cli import main
from segzoo.data.chaos import CHAOS_CLASS_NAMES
from segzoo.data.dicom_series import load_dicom_series
from segzoo.data.io import load_nifti, save_nifti
from segzoo.data.preprocessor import CTPreprocessor
from segzoo.data.slice2d import SlicePreprocessor
from segzoo.data.synthetic.chaos import write_chaos
from segzoo.data.synthetic.dicom_series import write_ct_series
from segzoo.nets import DRNet, MSSUNet

pytestmark = pytest.mark.usefixtures("one_thread")

KIDNEY, TUMOUR = "64033007", "108369006"  # SNOMED CT codes of the two KiTS19 labels
SPACING = (0.7, 0.8, 2.5)  # (column, row, slice) steps of the series, mm


def ct_affine() -> np.ndarray:
    """Axial, head first: RAS steps of (column, row, slice)."""
    a = np.diag([-SPACING[0], -SPACING[1], SPACING[2], 1.0])
    a[:3, 3] = [60.0, 40.0, -120.0]
    return a


def ct_volume(seed: int = 0) -> np.ndarray:
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    body = ndimage.gaussian_filter(rng.normal(0, 1, (32, 28, 10)), 2.0)
    return np.clip(np.rint(body / body.std() * 120 + np.linspace(-150, 150, 32)[:, None, None]), -1024, 3000)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A tiny 3D net (labels 0, 1, 2) with CT preprocessing and the KiTS19 post-processing (so: kidney, tumour)."""
    directory = tmp_path_factory.mktemp("pretrained")
    torch.manual_seed(8)  # a seed whose random net predicts all three labels on ct_volume()
    MSSUNet(kernel_size=[3, 3, 3], strides=[1, 2, 2], base_features=4, out_channels=3).save_pretrained(directory)
    post = {"class_path": "segzoo.inference.postprocess.KiTSPostprocess", "init_args": {}}
    (directory / "inference.json").write_text(json.dumps({"inferer": {"roi_size": [8, 8, 8]}, "postprocess": post}))
    pre = CTPreprocessor(-150, 150, 0.0, 60.0, target_spacing=(2.5, 1.0, 1.0), orientation=("I", "P", "L"))
    (directory / "preprocessor.json").write_text(json.dumps(pre.to_dict()))
    return directory


@pytest.fixture(scope="module")
def series_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dicom") / "CT_1"
    write_ct_series(folder, ct_volume(), ct_affine(), shuffle_names=True)
    return folder


def infer(pretrained, inp, out, *extra) -> int:
    argv = ["infer", "--ckpt", pretrained, "--input", inp, "--output", out, "--no-tta", "--no-postprocess", *extra]
    return main([str(a) for a in argv])


def seg_volume_with_pydicom(seg_path, sources) -> np.ndarray:
    """The SEG's label map ``(slices, rows, columns)`` on ``sources`` (in the series' order) with pydicom alone: each
    frame's segment number and the source slice its derivation sequence names."""
    seg = pydicom.dcmread(seg_path)
    assert seg.SegmentationType == "BINARY"
    frames = seg.pixel_array.reshape(int(seg.NumberOfFrames), seg.Rows, seg.Columns)
    index = {str(ds.SOPInstanceUID): k for k, ds in enumerate(sources)}
    volume = np.zeros((len(sources), seg.Rows, seg.Columns), dtype=np.uint8)
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence):
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        ref = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        k = index[str(ref)]
        np.testing.assert_allclose(  # the frame sits where its source slice sits
            np.asarray(item.PlanePositionSequence[0].ImagePositionPatient, float),
            np.asarray(sources[k].ImagePositionPatient, float),
            atol=1e-4,
        )
        assert not (volume[k][frame > 0] > 0).any()  # segments do not overlap
        volume[k][frame > 0] = number
    return volume


def test_ct_series_in_nifti_dicom_seg_and_stats_out(tmp_path, pretrained, series_dir, capsys):
    out = tmp_path / "out"
    code = infer(pretrained, series_dir, out, "--output-format", "both", "--stats")
    assert code == 0, capsys.readouterr().err
    assert "1 written, 0 skipped (already there), 0 failed" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["CT_1.dcm", "CT_1.nii.gz", "stats.csv", "stats.json"]
    series = load_dicom_series(series_dir)
    labels, affine = load_nifti(out / "CT_1.nii.gz")
    assert labels.dtype == np.uint8 and labels.shape == (32, 28, 10)
    np.testing.assert_allclose(affine, series.affine, atol=1e-5)
    assert set(np.unique(labels)) == {0, 1, 2}  # both labels predicted: the comparisons below are not trivial

    # on the series' own grid: SimpleITK places the label map's voxels where it places the series' voxels
    sitk = pytest.importorskip("SimpleITK")
    a = sitk.ReadImage(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(series_dir)))
    b = sitk.ReadImage(str(out / "CT_1.nii.gz"))
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-6)

    # the same volume given as NIfTI predicts the same labels (one inference path for both inputs)
    save_nifti(series.image, series.affine, tmp_path / "nifti" / "CT_1.nii.gz")
    assert infer(pretrained, tmp_path / "nifti", tmp_path / "out_nifti") == 0
    np.testing.assert_array_equal(load_nifti(tmp_path / "out_nifti" / "CT_1.nii.gz")[0], labels)

    # DICOM-SEG read back: highdicom and pydicom alone give the NIfTI's voxels, slice by slice of the series
    frames = labels.transpose(2, 1, 0)  # (slices, rows, columns), series order
    seg = hd.seg.segread(out / "CT_1.dcm")
    got = seg.get_pixels_by_source_instance([h.SOPInstanceUID for h in series.headers], combine_segments=True)
    np.testing.assert_array_equal(got, frames)
    np.testing.assert_array_equal(seg_volume_with_pydicom(out / "CT_1.dcm", series.headers), frames)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series.series_uid
    assert seg.StudyInstanceUID == series.headers[0].StudyInstanceUID
    assert seg.FrameOfReferenceUID == series.headers[0].FrameOfReferenceUID
    assert len(seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence) == 10
    # frames run along the slice normal (highdicom's order), each at its source slice (checked above)
    z = [float(f.PlanePositionSequence[0].ImagePositionPatient[2]) for f in seg.PerFrameFunctionalGroupsSequence]
    seg_one = [
        int(f.SegmentIdentificationSequence[0].ReferencedSegmentNumber) for f in seg.PerFrameFunctionalGroupsSequence
    ]
    for number in (1, 2):
        zs = [v for v, n in zip(z, seg_one) if n == number]
        assert zs == sorted(zs) or zs == sorted(zs, reverse=True)
    segments = {int(s.SegmentNumber): s for s in seg.SegmentSequence}
    assert [segments[n].SegmentLabel for n in (1, 2)] == ["kidney", "tumour"]
    assert segments[1].SegmentedPropertyTypeCodeSequence[0].CodeValue == KIDNEY
    assert segments[2].SegmentedPropertyTypeCodeSequence[0].CodeValue == TUMOUR
    assert segments[2].SegmentedPropertyCategoryCodeSequence[0].CodeMeaning == "Morphologically Abnormal Structure"
    assert segments[1].SegmentAlgorithmType == "AUTOMATIC"

    # statistics: voxel counts of the NIfTI, volumes from the series' voxel size
    voxel_ml = np.prod(SPACING) / 1000
    stats = json.loads((out / "stats.json").read_text())
    assert stats["labels"] == {"1": "kidney", "2": "tumour"}
    (case,) = stats["cases"]
    assert case["case"] == "CT_1"
    for row in case["labels"]:
        assert row["voxels"] == int((labels == row["label"]).sum())
        assert row["volume_ml"] == pytest.approx(row["voxels"] * voxel_ml, abs=1e-6)
    rows = list(csv.DictReader((out / "stats.csv").open()))
    assert [(r["case"], r["label"], r["name"], r["voxels"]) for r in rows] == [
        ("CT_1", str(r["label"]), r["name"], str(r["voxels"])) for r in case["labels"]
    ]

    # --continue: nothing to redo, the statistics still cover the case
    (out / "stats.json").unlink()
    assert infer(pretrained, series_dir, out, "--output-format", "both", "--stats", "--continue") == 0
    assert "0 written, 1 skipped (already there)" in capsys.readouterr().out
    assert json.loads((out / "stats.json").read_text())["cases"] == stats["cases"]


def test_study_folder_lists_its_series_and_series_picks_one(tmp_path, pretrained, capsys):
    study = tmp_path / "study"
    hu = ct_volume()
    write_ct_series(study / "a", hu, ct_affine(), series="a", description="abdomen")
    files = write_ct_series(study / "b", hu[::-1], ct_affine(), series="b", description="other")
    capsys.readouterr()
    assert infer(pretrained, study, tmp_path / "out") == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].startswith(f"segzoo infer: error: {study}: 2 DICOM series") and "--series UID" in lines[0]
    uid = str(pydicom.dcmread(files[0]).SeriesInstanceUID)
    assert len(lines) == 3 and any(line.split()[0] == uid and "'other'" in line for line in lines[1:])
    assert not (tmp_path / "out").exists()
    assert infer(pretrained, study, tmp_path / "out", "--series", uid, "--output-format", "dicom-seg") == 0
    (seg,) = (tmp_path / "out").iterdir()
    assert seg.name == f"study_{uid}.dcm"
    assert hd.seg.segread(seg).ReferencedSeriesSequence[0].SeriesInstanceUID == uid


def test_series_that_is_no_volume_is_one_line_and_exit_2(tmp_path, pretrained, capsys):
    folder = tmp_path / "gap"
    files = write_ct_series(folder, ct_volume(), ct_affine())
    files[4].unlink()
    expect_cli_error(
        ["infer", "--ckpt", pretrained, "--input", folder, "--output", tmp_path / "out"],
        capsys,
        files[5],
        "a missing slice",
    )
    assert not (tmp_path / "out").exists()


def test_dicom_seg_of_nifti_input_is_refused(tmp_path, pretrained, capsys):
    save_nifti(ct_volume().astype(np.float32), ct_affine(), tmp_path / "in" / "ct.nii.gz")
    for fmt in ("dicom-seg", "both"):
        expect_cli_error(
            [
                "infer",
                "--ckpt",
                pretrained,
                "--input",
                tmp_path / "in",
                "--output",
                tmp_path / "out",
                "--output-format",
                fmt,
            ],
            capsys,
            tmp_path / "in",
            "NIfTI input",
            "needs the DICOM source images",
        )
    assert not (tmp_path / "out").exists()


def test_nifti_stats_and_label_names(tmp_path, pretrained, capsys):
    image = ct_volume().astype(np.float32)
    save_nifti(image, ct_affine(), tmp_path / "in" / "ct.nii.gz")
    assert infer(pretrained, tmp_path / "in", tmp_path / "out", "--stats", "--label-names", "left", "right") == 0
    labels, affine = load_nifti(tmp_path / "out" / "ct.nii.gz")
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert [(r["name"], r["voxels"]) for r in stats["cases"][0]["labels"]] == [
        ("left", int((labels == 1).sum())),
        ("right", int((labels == 2).sum())),
    ]
    expect_cli_error(
        ["infer", "--ckpt", pretrained, "--input", tmp_path / "in", "--output", tmp_path / "o2", "--label-names", "x"],
        capsys,
        "--label-names",
        "1 names for the 2 labels [1, 2]",
    )
    expect_cli_error(
        ["infer", "--ckpt", pretrained, "--input", tmp_path / "in", "--output", tmp_path / "o3", "--series", "1.2"],
        capsys,
        tmp_path / "in",
        "not one",
    )


# ------------------------------------------------------------------------------------------------ 2D: CHAOS series
def test_chaos_series_from_a_2d_net_as_dicom_seg(tmp_path, capsys):
    write_chaos(tmp_path / "chaos", cases=1, seed=0, size="small")
    series_dir = next((tmp_path / "chaos").rglob("T2SPIR")) / "DICOM_anon"
    ckpt = tmp_path / "drnet"
    pre = SlicePreprocessor("chaos", 1, (64, 64), "resize", sequence="T2SPIR")
    torch.manual_seed(0)
    DRNet(spatial_dims=2, in_channels=1, out_channels=5, features=[8, 16, 16, 16, 16]).save_pretrained(ckpt)
    (ckpt / "preprocessor.json").write_text(json.dumps(pre.to_dict()))
    (ckpt / "inference.json").write_text(json.dumps({"roi_size": [64, 64]}))
    out = tmp_path / "out"
    code = main(
        [
            "infer",
            "--ckpt",
            str(ckpt),
            "--input",
            str(series_dir),
            "--output",
            str(out),
            "--output-format",
            "both",
            "--stats",
        ]
    )
    assert code == 0, capsys.readouterr().err
    name = series_dir.parent.parent.name + "_T2SPIR"
    labels = np.asarray(nib.load(out / f"{name}.nii.gz").dataobj)  # (columns, rows, slices), file order
    assert len(np.unique(labels)) >= 2
    from segzoo.data.chaos import natural_key

    files = sorted(series_dir.glob("*.dcm"), key=natural_key)
    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    frames = labels.transpose(2, 1, 0)
    np.testing.assert_array_equal(seg_volume_with_pydicom(out / f"{name}.dcm", sources), frames)
    seg = hd.seg.segread(out / f"{name}.dcm")
    np.testing.assert_array_equal(
        seg.get_pixels_by_source_instance([s.SOPInstanceUID for s in sources], combine_segments=True), frames
    )
    segments = {int(s.SegmentNumber): s for s in seg.SegmentSequence}
    assert [segments[n].SegmentLabel for n in (1, 2, 3, 4)] == list(CHAOS_CLASS_NAMES[1:])
    assert segments[2].SegmentedPropertyTypeModifierCodeSequence[0].CodeMeaning == "Right"
    assert segments[3].SegmentedPropertyTypeModifierCodeSequence[0].CodeMeaning == "Left"
    stats = json.loads((out / "stats.json").read_text())
    assert [r["voxels"] for r in stats["cases"][0]["labels"]] == [int((labels == v).sum()) for v in (1, 2, 3, 4)]
