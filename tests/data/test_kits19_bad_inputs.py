"""KiTS19 reader and datamodule: one clear error per bad input (missing, truncated, mismatched, out-of-range data)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
from expect import expect_cli_error, expect_error

from segzoo.data.io import save_nifti
from segzoo.data.kits19 import KiTS19Case, find_kits19_cases, load_kits19_case

SHAPE = (6, 8, 8)
AFFINE = np.diag([3.0, 0.8, 0.8, 1.0])


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


def test_missing_image_file(tmp_path):
    case = kits_case(tmp_path)
    case.image.unlink()
    expect_error(lambda: find_kits19_cases(tmp_path), case.image, "missing", "imaging.nii.gz")


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
