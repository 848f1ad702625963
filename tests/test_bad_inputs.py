"""Bad-input corpus (issue 6): every bad input gets ONE clear segzoo error naming the culprit and what was expected.

From Python the error is :class:`segzoo.data.io.DataError`; from the CLI a non-zero exit code and one stderr line.
Each case builds its bad input in ``tmp_path`` (tiny volumes written with :func:`save_nifti`; one synthetic CHAOS case
shared per module and copied before it is damaged).
"""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from PIL import Image

from segzoo.cli import main
from segzoo.data.brats import find_brats_cases, load_brats_case
from segzoo.data.chaos import load_chaos_case
from segzoo.data.io import DataError, save_nifti
from segzoo.data.kits19 import KiTS19Case, find_kits19_cases, load_kits19_case
from segzoo.data.synthetic.chaos import write_chaos
from segzoo.nets import MSSUNet

SHAPE = (6, 8, 8)
AFFINE = np.diag([3.0, 0.8, 0.8, 1.0])


def expect_error(fn, culprit, *expected: str) -> str:
    """Call ``fn``; assert one DataError whose single-line message names ``culprit`` and says ``expected``."""
    with pytest.raises(DataError) as info:
        fn()
    msg = str(info.value)
    assert "\n" not in msg, msg
    assert str(culprit) in msg, f"culprit {culprit} not named in: {msg}"
    for word in expected:
        assert word in msg, f"{word!r} not in: {msg}"
    return msg


def expect_cli_error(argv, capsys, culprit, *expected: str) -> str:
    """Run the segzoo CLI in-process; assert a non-zero exit and one ``segzoo ...: error:`` line naming ``culprit``."""
    capsys.readouterr()
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code != 0
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if ": error:" in line]
    assert len(errors) == 1 and err.strip().splitlines()[-1] == errors[0], err  # one line, the last one
    assert str(culprit) in errors[0], f"culprit {culprit} not named in: {errors[0]}"
    for word in expected:
        assert word in errors[0], f"{word!r} not in: {errors[0]}"
    return errors[0]


def kits_case(root: Path, name: str = "case_00000", image=None, label=None, label_affine=AFFINE) -> KiTS19Case:
    """Write a KiTS19-layout case folder; ``image``/``label`` default to a valid tiny volume."""
    rng = np.random.default_rng(0)
    folder = root / name
    if image is None:
        image = rng.normal(100, 20, SHAPE).astype(np.float32)
    if label is None:
        label = np.zeros(SHAPE, np.uint8)
        label[2:4, 2:6, 2:6] = 1
        label[3, 3:5, 3:5] = 2
    save_nifti(image, AFFINE, folder / "imaging.nii.gz")
    save_nifti(label, label_affine, folder / "segmentation.nii.gz")
    return KiTS19Case(name, folder / "imaging.nii.gz", folder / "segmentation.nii.gz")


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


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    """A valid ``save_pretrained`` directory of a tiny 3D MSSUNet (with the window size ``segzoo infer`` needs)."""
    directory = tmp_path_factory.mktemp("pretrained")
    torch.manual_seed(0)
    MSSUNet(kernel_size=[3, 3, 3], strides=[1, 2, 2], base_features=4, out_channels=3).save_pretrained(directory)
    (directory / "inference.json").write_text(json.dumps({"roi_size": [4, 8, 8]}))
    return directory


# --------------------------------------------------------------------------------------------------- files and folders
def test_missing_image_file(tmp_path):
    case = kits_case(tmp_path)
    case.image.unlink()
    expect_error(lambda: find_kits19_cases(tmp_path), case.image, "missing", "imaging.nii.gz")


def test_missing_label_file(tmp_path):
    folder = brats_case(tmp_path)
    seg = folder / f"{folder.name}_seg.nii.gz"
    seg.unlink()
    expect_error(lambda: load_brats_case(folder), seg, "file not found")


def test_truncated_nifti(tmp_path):
    case = kits_case(tmp_path, image=np.random.default_rng(1).normal(0, 1, (20, 32, 32)).astype(np.float32))
    data = case.image.read_bytes()
    case.image.write_bytes(data[: len(data) // 2])
    expect_error(lambda: load_kits19_case(case), case.image, "corrupt or truncated")


def test_non_nifti_file_with_nifti_name(tmp_path):
    case = kits_case(tmp_path)
    case.label.write_text("case_id,kidney\n0,1\n")  # a CSV saved under the label's name
    expect_error(lambda: load_kits19_case(case), case.label, "cannot read NIfTI")


def test_empty_data_folder(tmp_path):
    (tmp_path / "data").mkdir()
    expect_error(lambda: find_kits19_cases(tmp_path / "data"), tmp_path / "data", "no case_XXXXX/ folders")


def test_brats_folder_without_cases(tmp_path):
    (tmp_path / "brats" / "notes").mkdir(parents=True)
    save_nifti(np.zeros(SHAPE, np.float32), AFFINE, tmp_path / "brats" / "t1.nii.gz")  # a loose file, no case folder
    expect_error(lambda: find_brats_cases(tmp_path / "brats"), tmp_path / "brats", "no BraTS cases found", "_flair")


def test_cli_fit_on_folder_without_cases(tmp_path, capsys):
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)  # a wrong folder: no case_XXXXX/ inside
    config = tmp_path / "kits.yaml"
    config.write_text(
        textwrap.dedent(
            f"""
            trainer: {{logger: false, accelerator: cpu, enable_progress_bar: false, enable_model_summary: false}}
            model:
              net:
                class_path: segzoo.nets.MSSUNet
                init_args: {{base_features: 4, strides: [1, 2], kernel_size: [3, 3]}}
              loss: {{class_path: monai.losses.DiceCELoss, init_args: {{to_onehot_y: true, softmax: true}}}}
            data:
              class_path: segzoo.data.datamodule.KiTS19DataModule
              init_args: {{data_dir: {data}, num_workers: 0}}
            """
        )
    )
    msg = expect_cli_error(
        ["fit", "--config", config, "--trainer.default_root_dir", tmp_path / "run"], capsys, data, "no case_XXXXX"
    )
    assert msg.startswith("segzoo fit: error:")


# ------------------------------------------------------------------------------------------------ geometry and values
def test_image_label_shape_mismatch(tmp_path):
    case = kits_case(tmp_path, label=np.zeros((6, 8, 7), np.uint8))
    expect_error(lambda: load_kits19_case(case), case.label, str(case.image), "(6, 8, 7)", "(6, 8, 8)")


def test_image_label_affine_mismatch(tmp_path):
    case = kits_case(tmp_path, label_affine=np.diag([3.0, 0.8, -0.8, 1.0]))
    expect_error(lambda: load_kits19_case(case), case.label, str(case.image), "affine", "not co-registered")


def test_kits_label_3(tmp_path):
    label = np.zeros(SHAPE, np.uint8)
    label[1, 1, 1] = 3
    case = kits_case(tmp_path, label=label)
    expect_error(lambda: load_kits19_case(case), case.label, "unexpected label values [3]", "[0, 1, 2]")


def test_brats_label_5(tmp_path):
    seg = np.zeros(SHAPE, np.uint8)
    seg[2, 2, 2], seg[3, 3, 3] = 2, 5
    folder = brats_case(tmp_path, seg=seg)
    seg_path = folder / f"{folder.name}_seg.nii.gz"
    expect_error(lambda: load_brats_case(folder), seg_path, "unexpected label values [5]", "[0, 1, 2, 4]")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_non_finite_intensities(tmp_path, bad):
    image = np.full(SHAPE, 40.0, np.float32)
    image[1, 2, 3] = bad
    image[4, 4, 4] = bad
    case = kits_case(tmp_path, image=image)
    expect_error(lambda: load_kits19_case(case), case.image, "2 non-finite", "expected finite intensities")


def test_4d_image_where_3d_expected(tmp_path):
    case = kits_case(tmp_path)
    save_nifti(np.zeros((*SHAPE, 2), np.float32), AFFINE, case.image)
    expect_error(lambda: load_kits19_case(case), case.image, "expected a 3D", "(6, 8, 8, 2)")


def test_infer_on_2d_image(tmp_path, pretrained, capsys):
    image = tmp_path / "slice.nii.gz"
    save_nifti(np.zeros((16, 16), np.float32), np.eye(4), image)
    out = tmp_path / "pred"
    expect_cli_error(
        ["infer", "--ckpt", pretrained, "--input", image, "--output", out], capsys, image, "expected a 3D image"
    )
    assert not out.exists() or not any(out.iterdir())


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


# ------------------------------------------------------------------------------------------------- configs and ckpts
def test_unknown_config_key(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text(
        textwrap.dedent(
            """
            trainer: {logger: false, max_epochs: 1}
            model:
              net: {class_path: segzoo.nets.MSSUNet}
              loss: {class_path: monai.losses.DiceCELoss}
            data:
              class_path: toydata.ToyDataModule
              init_args: {batch_sizee: 2}
            """
        )
    )
    expect_cli_error(["fit", "--config", config], capsys, "batch_sizee")


def _ckpt(path: Path, net_config: dict, state: dict) -> Path:
    torch.save(
        {"segzoo_net": net_config, "state_dict": {f"net.{k}": v for k, v in state.items()}, "segzoo_inferer": {}},
        path,
    )
    return path


def test_checkpoint_of_another_net(tmp_path, capsys):
    small = MSSUNet(kernel_size=[3, 3, 3], strides=[1, 2, 2], base_features=4, out_channels=3)
    other = MSSUNet(kernel_size=[3, 3, 3], strides=[1, 2, 2], base_features=6, out_channels=2)
    ckpt = _ckpt(tmp_path / "mixed.ckpt", small.init_config, other.state_dict())
    image = tmp_path / "ct.nii.gz"
    save_nifti(np.zeros(SHAPE, np.float32), AFFINE, image)
    expect_cli_error(
        ["infer", "--ckpt", ckpt, "--input", image, "--output", tmp_path / "out", "--roi-size", 4, 8, 8],
        capsys,
        ckpt,
        "do not fit the net segzoo.nets.mss_unet.MSSUNet",
    )


def test_non_segzoo_checkpoint(tmp_path, capsys):
    ckpt = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {"model.weight": torch.zeros(3)}, "epoch": 3}, ckpt)
    image = tmp_path / "ct.nii.gz"
    save_nifti(np.zeros(SHAPE, np.float32), AFFINE, image)
    expect_cli_error(
        ["infer", "--ckpt", ckpt, "--input", image, "--output", tmp_path / "out"],
        capsys,
        ckpt,
        "not a segzoo checkpoint",
    )


def test_random_file_as_checkpoint(tmp_path, capsys):
    ckpt = tmp_path / "weights.ckpt"
    ckpt.write_bytes(np.random.default_rng(0).bytes(4096))
    image = tmp_path / "ct.nii.gz"
    save_nifti(np.zeros(SHAPE, np.float32), AFFINE, image)
    expect_cli_error(
        ["infer", "--ckpt", ckpt, "--input", image, "--output", tmp_path / "out"],
        capsys,
        ckpt,
        "cannot read checkpoint",
    )


def test_pretrained_directory_with_wrong_weights(tmp_path, pretrained):
    from segzoo.inference.predict import load_predictor

    broken = tmp_path / "pretrained"
    shutil.copytree(pretrained, broken)
    config = json.loads((broken / "config.json").read_text())
    config["init_args"]["base_features"] = 6  # the config now describes another net than the weights
    (broken / "config.json").write_text(json.dumps(config))
    expect_error(lambda: load_predictor(broken), broken, "not a loadable save_pretrained directory", "size mismatch")


def test_infer_input_folder_without_images(tmp_path, pretrained, capsys):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "readme.txt").write_text("no images here")
    expect_cli_error(
        ["infer", "--ckpt", pretrained, "--input", tmp_path / "in", "--output", tmp_path / "out"],
        capsys,
        tmp_path / "in",
        "no .nii/.nii.gz files",
    )
