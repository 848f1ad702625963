"""2D nets in `segzoo infer`: BraTS case folders -> <case>_seg.nii.gz (0/1/2/4, input grid), CHAOS DICOM series ->
NIfTI on the series' grid (checked against SimpleITK's own DICOM reading) and Ground-style PNGs."""

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
from segzoo.inference.predict import find_inputs
from segzoo.inference.predict_2d import SlicePredictor, find_2d_inputs

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_2d(in_channels: int, out_channels: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(in_channels, 6, 3, padding=1), nn.Tanh(), nn.Conv2d(6, out_channels, (3, 5), padding=(1, 2))
    )


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
    pad = SlicePreprocessor("chaos", 1, (8, 8), "pad").restore(scores, (4, 6))  # padded from 4x6: rows 2-5, cols 1-6
    assert pad.shape == (2, 4, 6)
    np.testing.assert_array_equal(
        pad[0], (np.arange(4)[:, None] >= 1) & (np.arange(4)[:, None] < 3) & (np.arange(6) >= 1) & (np.arange(6) < 5)
    )
    big = SlicePreprocessor("chaos", 1, (8, 8), "resize").restore(scores, (16, 16))
    assert big.shape == (2, 16, 16) and big[0, 7, 8] == 1 and big[0, 0, 0] == 0


def _resave_ras(case_dir, dst):
    shutil.copytree(case_dir, dst)
    for f in dst.iterdir():
        img = nib.load(f)
        nib.save(nib.as_closest_canonical(img), f)


def test_brats_case_folder_gives_seg_in_input_geometry_for_any_orientation(brats, tmp_path):
    sitk = pytest.importorskip("SimpleITK")
    case = next(p for p in brats.iterdir() if p.is_dir())
    pred = SlicePredictor.build(tiny_2d(4, 4), BRATS_PRE)
    items = find_2d_inputs(case, BRATS_PRE)
    assert [(i.kind, i.name) for i in items] == [("brats", f"{case.name}_seg")]
    assert [i.path for i in find_2d_inputs(brats, BRATS_PRE)] == [case]  # a folder of case folders
    (out,) = pred.predict(items[0], tmp_path / "out")
    assert out.name == f"{case.name}_seg.nii.gz"
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
    (out_ras,) = pred.predict(find_2d_inputs(ras, BRATS_PRE)[0], tmp_path / "out_ras")
    ras_labels = np.asarray(nib.load(out_ras).dataobj)
    ornt = nib.orientations.ornt_transform(
        nib.orientations.io_orientation(nib.load(ras / t1.name).affine), nib.orientations.io_orientation(src.affine)
    )
    np.testing.assert_array_equal(nib.orientations.apply_orientation(ras_labels, ornt), labels)


def test_chaos_series_nifti_overlays_the_dicom_series_and_pngs_are_ground_style(chaos, tmp_path):
    sitk = pytest.importorskip("SimpleITK")
    pred = SlicePredictor.build(tiny_2d(1, 5), CHAOS_PRE)
    items = find_2d_inputs(chaos, CHAOS_PRE)  # the Train_Sets tree: the trained sequence of every case
    assert [i.name for i in items] == ["1_T2SPIR"]
    series = items[0].path
    assert [(i.path, i.name) for i in find_2d_inputs(series, CHAOS_PRE)] == [(series, "1_T2SPIR")]  # one series
    written = pred.predict(items[0], tmp_path / "out", png=True)
    nifti = written[0]
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
    pngs = written[1:]
    assert [p.stem for p in pngs] == [f.stem for f in files]
    for k, png in enumerate(pngs):
        grey = np.asarray(Image.open(png))
        assert grey.dtype == np.uint8 and set(np.unique(grey)) <= {0, 63, 126, 189, 252}
        np.testing.assert_array_equal(grey_to_label(grey, png), labels[:, :, k].T)  # reads back as CHAOS Ground


def test_wrong_kind_of_input_is_one_line(brats, chaos, tmp_path):
    case = next(p for p in brats.iterdir() if p.is_dir())
    t1 = next(case.glob("*_t1.nii.gz"))
    with pytest.raises(DataError, match="a NIfTI volume; this checkpoint is a 2D net trained on BRATS") as info:
        find_2d_inputs(t1, BRATS_PRE)
    assert str(t1) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(DataError, match="no DICOM series"):
        find_2d_inputs(case, CHAOS_PRE)
    with pytest.raises(DataError, match="no BraTS case folder"):
        find_2d_inputs(chaos, BRATS_PRE)
    # the reverse: 2D layouts given to a 3D checkpoint
    with pytest.raises(DataError, match="a BraTS case folder; it is predicted by a 2D checkpoint"):
        find_inputs(case)
    with pytest.raises(DataError, match="a folder of BraTS case folders"):
        find_inputs(brats)
    series = next(chaos.rglob("T2SPIR")) / "DICOM_anon"
    with pytest.raises(DataError, match="a DICOM series, not NIfTI files"):
        find_inputs(series)
    with pytest.raises(DataError, match="a CHAOS tree"):
        find_inputs(chaos)


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
