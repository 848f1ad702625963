"""2D nets in `segzoo infer`, through the one Predictor every net uses: BraTS case folders -> <case>_seg.nii.gz
(0/1/2/4, input grid), CHAOS DICOM series -> NIfTI on the series' grid (checked against SimpleITK's own DICOM reading)
and Ground-style PNGs."""

from __future__ import annotations

import shutil

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from segzoo.data.chaos import grey_to_label, natural_key
from segzoo.data.io import DataError, load_nifti
from segzoo.data.slice2d import SlicePreprocessor
from segzoo.data.synthetic.brats import write_brats
from segzoo.data.synthetic.chaos import write_chaos
from segzoo.inference.outputs import write_ground_pngs
from segzoo.inference.predict import Predictor, find_cases, find_inputs

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_2d(in_channels: int, out_channels: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(in_channels, 6, 3, padding=1), nn.Tanh(), nn.Conv2d(6, out_channels, (3, 5), padding=(1, 2))
    )


def slice_predictor(net: nn.Module, pre: SlicePreprocessor) -> Predictor:
    from monai.inferers import SliceInferer

    return Predictor(net.eval(), SliceInferer(roi_size=pre.image_size, sw_batch_size=16, spatial_dim=0), pre)


BRATS_PRE = SlicePreprocessor(
    "brats", 4, (64, 64), "resize", zscore_nonzero=True, label_values=[0, 1, 2, 4], orientation=("L", "P", "S")
)
CHAOS_PRE = SlicePreprocessor("chaos", 1, (64, 64), "resize", sequence="T2SPIR")


@pytest.fixture(scope="module")
def brats(tmp_path_factory):
    root = tmp_path_factory.mktemp("brats")
    write_brats(root, cases=1, seed=0, size="small")
    return root


@pytest.fixture(scope="module")
def chaos(tmp_path_factory):
    root = tmp_path_factory.mktemp("chaos")
    write_chaos(root, cases=1, seed=0, size="small")
    return root


def test_preprocessor_dict_round_trip():
    for pre in (BRATS_PRE, CHAOS_PRE):
        d = pre.to_dict()
        assert d["type"] == "slice2d"
        assert SlicePreprocessor.from_dict(d).to_dict() == d
        assert SlicePreprocessor.from_dict({k: v for k, v in d.items() if k != "type"}).to_dict() == d
    with pytest.raises(DataError, match="lacks key 'dataset'"):
        SlicePreprocessor.from_dict({"type": "slice2d"})


def test_restore_undoes_padding_and_resizing():
    scores = torch.zeros(3, 2, 8, 8)
    scores[1, :, 3:5, 2:6] = 1.0
    pad_pre = SlicePreprocessor("chaos", 1, (8, 8), "pad")
    pad = pad_pre.restore_slices(scores, (4, 6))  # padded from 4x6: rows 2-5, cols 1-6
    assert pad.shape == (2, 4, 6)
    np.testing.assert_array_equal(
        pad[0], (np.arange(4)[:, None] >= 1) & (np.arange(4)[:, None] < 3) & (np.arange(6) >= 1) & (np.arange(6) < 5)
    )
    np.testing.assert_array_equal(pad_pre.restore(scores, (2, 4, 6)), pad)  # the volume interface: CHAOS (S, H, W)
    big = SlicePreprocessor("chaos", 1, (8, 8), "resize").restore_slices(scores, (16, 16))
    assert big.shape == (2, 16, 16) and big[0, 7, 8] == 1 and big[0, 0, 0] == 0


def test_brats_volume_interface_slices_the_last_axis_and_writes_label_values():
    """BraTS volumes (C, X, Y, Z) in LPS are cut into axial slices (Z first) and come back as 0/1/2/4 on (X, Y, Z)."""
    pre = SlicePreprocessor("brats", 2, (4, 6), "pad", label_values=[0, 1, 2, 4], orientation=("L", "P", "S"))
    image = np.random.default_rng(0).normal(size=(2, 3, 5, 7)).astype(np.float32)
    x = pre.preprocess(image)
    assert x.shape == (2, 7, 4, 6)  # (C, Z, X padded to 4, Y padded to 6)
    np.testing.assert_allclose(x[:, :, :3, :5], pre.prepare(np.transpose(image, (0, 3, 1, 2))).numpy()[:, :, :3, :5])
    scores = torch.zeros(4, 7, 4, 6)
    scores[3, 2] = 1.0  # slice z=2: enhancing tumour (index 3 -> label 4)
    labels = pre.restore(scores, (3, 5, 7))
    assert labels.shape == (3, 5, 7) and labels.dtype == np.uint8
    assert (labels[:, :, 2] == 4).all() and (np.delete(labels, 2, axis=2) == 0).all()


def _resave_ras(case_dir, dst):
    shutil.copytree(case_dir, dst)
    for f in dst.iterdir():
        img = nib.load(f)
        nib.save(nib.as_closest_canonical(img), f)


def test_brats_case_folder_gives_seg_in_input_geometry_for_any_orientation(brats, tmp_path):
    sitk = pytest.importorskip("SimpleITK")
    case = next(p for p in brats.iterdir() if p.is_dir())
    pred = slice_predictor(tiny_2d(4, 4), BRATS_PRE)
    (item,) = find_cases(case, 4, BRATS_PRE)
    assert (item.case_id, item.output_name) == (case.name, f"{case.name}_seg")
    assert [c.image.parent for c in find_cases(brats, 4, BRATS_PRE)] == [case]  # a folder of case folders
    out = pred.predict_case(item, tmp_path / "out" / f"{item.output_name}.nii.gz")
    t1 = case / f"{case.name}_t1.nii.gz"
    src, got = nib.load(t1), nib.load(out)
    assert got.shape == src.shape and got.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(got.header.get_qform(), src.header.get_qform())
    np.testing.assert_array_equal(got.header.get_sform(), src.header.get_sform())
    labels = np.asarray(got.dataobj)
    assert set(np.unique(labels)) <= {0, 1, 2, 4} and len(np.unique(labels)) >= 3
    a, b = sitk.ReadImage(str(t1)), sitk.ReadImage(str(out))
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-6)
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-6)
    # the same case re-saved RAS (x and y flipped) gives the same labels, flipped the same way
    ras = tmp_path / "ras" / case.name
    _resave_ras(case, ras)
    out_ras = pred.predict_case(find_cases(ras, 4, BRATS_PRE)[0], tmp_path / "out_ras.nii.gz")
    ras_labels = np.asarray(nib.load(out_ras).dataobj)
    ornt = nib.orientations.ornt_transform(
        nib.orientations.io_orientation(nib.load(ras / t1.name).affine), nib.orientations.io_orientation(src.affine)
    )
    np.testing.assert_array_equal(nib.orientations.apply_orientation(ras_labels, ornt), labels)


def test_chaos_series_nifti_overlays_the_dicom_series_and_pngs_are_ground_style(chaos, tmp_path):
    sitk = pytest.importorskip("SimpleITK")
    pred = slice_predictor(tiny_2d(1, 5), CHAOS_PRE)
    cases = find_cases(chaos, 1, CHAOS_PRE)  # the Train_Sets tree: the trained sequence of every case
    assert [c.output_name for c in cases] == ["1_T2SPIR"]
    series = cases[0].image
    assert [(c.image, c.output_name) for c in find_cases(series, 1, CHAOS_PRE)] == [(series, "1_T2SPIR")]  # a series
    nifti = pred.predict_case(cases[0], tmp_path / "out" / "1_T2SPIR.nii.gz")
    files = sorted(series.glob("*.dcm"), key=natural_key)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f) for f in files])
    dicom = reader.Execute()
    ours = sitk.ReadImage(str(nifti))
    assert ours.GetSize() == dicom.GetSize()
    np.testing.assert_allclose(ours.GetOrigin(), dicom.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(ours.GetSpacing(), dicom.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(ours.GetDirection(), dicom.GetDirection(), atol=1e-6)
    labels = load_nifti(nifti)[0]  # (columns, rows, slices)
    assert set(np.unique(labels)) <= set(range(5)) and len(np.unique(labels)) >= 3
    result = cases[0].prediction_output(*pred.predict_labels(cases[0]))
    np.testing.assert_array_equal(result.labels, labels)
    pngs = write_ground_pngs(tmp_path / "out" / "1_T2SPIR_png", result.seg_frames, result.slice_files)
    assert [p.stem for p in pngs] == [f.stem for f in files]
    for k, png in enumerate(pngs):
        grey = np.asarray(Image.open(png))
        assert grey.dtype == np.uint8 and set(np.unique(grey)) <= {0, 63, 126, 189, 252}
        np.testing.assert_array_equal(grey_to_label(grey, png), labels[:, :, k].T)  # reads back as CHAOS Ground


def test_wrong_kind_of_input_is_one_line(brats, chaos, tmp_path):
    case = next(p for p in brats.iterdir() if p.is_dir())
    t1 = next(case.glob("*_t1.nii.gz"))
    with pytest.raises(DataError, match="a NIfTI volume; this checkpoint is a 2D net trained on BRATS") as info:
        find_cases(t1, 4, BRATS_PRE)
    assert str(t1) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(DataError, match="no DICOM series"):
        find_cases(case, 1, CHAOS_PRE)
    with pytest.raises(DataError, match="no BraTS case folder"):
        find_cases(chaos, 4, BRATS_PRE)
    # find_inputs (NIfTI volumes one by one) names the layouts find_cases reads as datasets
    with pytest.raises(DataError, match="a BraTS case folder; not NIfTI volumes to predict one by one"):
        find_inputs(case)
    with pytest.raises(DataError, match="a folder of BraTS case folders"):
        find_inputs(brats)
    series = next(chaos.rglob("T2SPIR")) / "DICOM_anon"
    with pytest.raises(DataError, match="a DICOM series, not NIfTI files"):
        find_inputs(series)
    with pytest.raises(DataError, match="a CHAOS tree"):
        find_inputs(chaos)
    # a BraTS case lacking a modality: one line naming the file; with a problems list the other cases still come
    broken = tmp_path / "broken"
    shutil.copytree(brats, broken)
    other = broken / "BraTS_extra"
    shutil.copytree(broken / case.name, other)
    for f in other.iterdir():
        f.rename(other / f.name.replace(case.name, other.name))
    (other / f"{other.name}_t2.nii.gz").unlink()
    with pytest.raises(DataError, match="BraTS_extra_t2.nii.gz: missing"):
        find_cases(broken, 4, BRATS_PRE)
    problems: list[str] = []
    assert [c.case_id for c in find_cases(broken, 4, BRATS_PRE, problems)] == [case.name]
    assert len(problems) == 1 and "BraTS_extra_t2.nii.gz" in problems[0]


def _pretrained_2d(directory, pre: SlicePreprocessor, in_channels: int, out_channels: int):
    import json

    from segzoo.nets import DRNet

    torch.manual_seed(0)
    DRNet(
        spatial_dims=2, in_channels=in_channels, out_channels=out_channels, features=[8, 16, 16, 16, 16]
    ).save_pretrained(directory)
    (directory / "preprocessor.json").write_text(json.dumps(pre.to_dict()))
    (directory / "inference.json").write_text(json.dumps({"roi_size": list(pre.image_size)}))
    return directory


def test_segzoo_infer_cli_with_2d_checkpoints(brats, chaos, tmp_path, capsys):
    from segzoo.cli import main

    brats_ckpt = _pretrained_2d(tmp_path / "drnet_brats", SlicePreprocessor(
        "brats", 4, (32, 32), "resize", zscore_nonzero=True, label_values=[0, 1, 2, 4], orientation=("L", "P", "S")
    ), 4, 4)  # fmt: skip
    chaos_ckpt = _pretrained_2d(
        tmp_path / "drnet_chaos", SlicePreprocessor("chaos", 1, (32, 32), sequence="T2SPIR"), 1, 5
    )
    capsys.readouterr()
    assert main(["infer", "--ckpt", str(brats_ckpt), "--input", str(brats), "--output", str(tmp_path / "b")]) == 0
    assert "1 written, 0 skipped (already there), 0 failed" in capsys.readouterr().out
    case = next(p for p in brats.iterdir() if p.is_dir())
    seg = nib.load(tmp_path / "b" / f"{case.name}_seg.nii.gz")
    assert seg.shape == nib.load(next(case.glob("*_flair.nii.gz"))).shape
    args = ["infer", "--ckpt", str(chaos_ckpt), "--input", str(chaos), "--output", str(tmp_path / "c"), "--chaos-png"]
    assert main(args) == 0
    n_slices = len(list(next(chaos.rglob("T2SPIR")).joinpath("DICOM_anon").glob("*.dcm")))
    assert len(list((tmp_path / "c" / "1_T2SPIR_png").glob("*.png"))) == n_slices
    assert (tmp_path / "c" / "1_T2SPIR.nii.gz").is_file()
    capsys.readouterr()
    # a NIfTI volume for a 2D net, and a BraTS folder for a 3D one: one line each, exit 2, no traceback
    t1 = next(case.glob("*_t1.nii.gz"))
    assert main(["infer", "--ckpt", str(brats_ckpt), "--input", str(t1), "--output", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(t1) in err[0] and "2D net" in err[0]
    assert (
        main(
            ["infer", "--ckpt", str(brats_ckpt), "--input", str(brats), "--output", str(tmp_path / "x"), "--chaos-png"]
        )
        == 2
    )
    assert "--chaos-png" in capsys.readouterr().err


def test_checkpoint_format_stores_and_rebuilds_both_preprocessor_types():
    from segzoo.checkpoint import build_preprocessor, preprocessor_config
    from segzoo.data.preprocessor import CTPreprocessor

    for pre in (BRATS_PRE, CHAOS_PRE, CTPreprocessor(-100, 200, 50, 40, (3.0, 1.0, 1.0), orientation=("I", "P", "L"))):
        record = preprocessor_config(pre)
        assert record["type"] in ("slice2d", "ct")
        back = build_preprocessor(record)
        assert type(back) is type(pre) and back.to_dict() == pre.to_dict()


def test_any_checkpoint_reads_the_brats_and_chaos_layouts_and_a_bad_case_fails_alone(brats, chaos, tmp_path, capsys):
    """The layouts are sources, not 2D-only inputs: a 3D net with four channels predicts a BraTS folder (each case on
    its t1 grid), a one-channel 3D net a CHAOS tree; a case lacking a modality is one line, the others are written."""
    import json

    from segzoo.cli import main
    from segzoo.nets import MSSUNet

    for name, channels in (("brats3d", 4), ("chaos3d", 1)):
        torch.manual_seed(0)
        MSSUNet(
            in_channels=channels, out_channels=3, kernel_size=[3, 3], strides=[1, 2], base_features=4
        ).save_pretrained(tmp_path / name)
        (tmp_path / name / "inference.json").write_text(json.dumps({"roi_size": [16, 16, 8]}))
    broken = tmp_path / "brats_broken"
    shutil.copytree(brats, broken)
    case = next(p for p in broken.iterdir() if p.is_dir())
    other = broken / "BraTS_extra"
    shutil.copytree(case, other)
    for f in other.iterdir():
        f.rename(other / f.name.replace(case.name, other.name))
    (other / f"{other.name}_t1ce.nii.gz").unlink()
    capsys.readouterr()
    args = ["--tta", "none", "--crop", "none"]
    assert (
        main(
            [
                "infer",
                "--ckpt",
                str(tmp_path / "brats3d"),
                "--input",
                str(broken),
                "--output",
                str(tmp_path / "b"),
                *args,
            ]
        )
        == 1
    )
    captured = capsys.readouterr()
    assert (
        "BraTS_extra_t1ce.nii.gz: missing" in captured.err
        and "1 written, 0 skipped (already there), 1 failed" in captured.out
    )
    seg = nib.load(tmp_path / "b" / f"{case.name}_seg.nii.gz")
    t1 = nib.load(case / f"{case.name}_t1.nii.gz")
    assert seg.shape == t1.shape and np.array_equal(seg.header.get_sform(), t1.header.get_sform())
    assert (
        main(
            [
                "infer",
                "--ckpt",
                str(tmp_path / "chaos3d"),
                "--input",
                str(chaos),
                "--output",
                str(tmp_path / "c"),
                *args,
            ]
        )
        == 0
    )
    n_slices = len(list(next(chaos.rglob("T2SPIR")).joinpath("DICOM_anon").glob("*.dcm")))
    assert load_nifti(tmp_path / "c" / "1_T2SPIR.nii.gz")[0].shape[-1] == n_slices  # every sequence found: T2SPIR too
    # Ground-style PNGs for CHAOS series whatever the checkpoint; refused for other inputs, in one line
    series = next(chaos.rglob("T2SPIR")) / "DICOM_anon"
    out = tmp_path / "png"
    assert main(["infer", "--ckpt", str(tmp_path / "chaos3d"), "--input", str(series), "--output", str(out),
                 "--chaos-png", *args]) == 0  # fmt: skip
    assert len(list((out / "DICOM_anon_png").glob("*.png"))) == n_slices  # a DICOM series: named after its folder
    capsys.readouterr()
    assert main(["infer", "--ckpt", str(tmp_path / "brats3d"), "--input", str(brats), "--output", str(out),
                 "--chaos-png", *args]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--chaos-png" in err[0] and "not a DICOM series or CHAOS tree" in err[0]
