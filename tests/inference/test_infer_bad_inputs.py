"""`segzoo infer` on bad inputs: one error line naming the file (2D image, no images, foreign or mismatched
checkpoints), and nothing half-written when a run dies: ``--continue`` predicts only the missing cases."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from expect import expect_cli_error, expect_error

from segzoo.cli import main
from segzoo.data.io import load_nifti, save_nifti
from segzoo.inference.predict import Predictor
from segzoo.nets import MSSUNet

SHAPE = (6, 8, 8)
AFFINE = np.diag([3.0, 0.8, 0.8, 1.0])


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    """A valid ``save_pretrained`` directory of a tiny 3D MSSUNet (with the window size ``segzoo infer`` needs)."""
    directory = tmp_path_factory.mktemp("pretrained")
    torch.manual_seed(0)
    MSSUNet(kernel_size=[3, 3, 3], strides=[1, 2, 2], base_features=4, out_channels=3).save_pretrained(directory)
    (directory / "inference.json").write_text(json.dumps({"roi_size": [4, 8, 8]}))
    return directory


def test_infer_on_2d_image(tmp_path, pretrained, capsys):
    image = tmp_path / "slice.nii.gz"
    save_nifti(np.zeros((16, 16), np.float32), np.eye(4), image)
    out = tmp_path / "pred"
    expect_cli_error(
        ["infer", "--ckpt", pretrained, "--input", image, "--output", out], capsys, image, "expected a 3D image"
    )
    assert not out.exists() or not any(out.iterdir())


def test_infer_input_folder_without_images(tmp_path, pretrained, capsys):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "readme.txt").write_text("no images here")
    expect_cli_error(
        ["infer", "--ckpt", pretrained, "--input", tmp_path / "in", "--output", tmp_path / "out"],
        capsys,
        tmp_path / "in",
        "no .nii/.nii.gz files",
    )


def _ckpt(path: Path, net_config: dict, state: dict) -> Path:
    torch.save(
        {"segzoo_net": net_config, "state_dict": {f"net.{k}": v for k, v in state.items()}, "segzoo_inferer": {}},
        path,
    )
    return path


def _infer_refuses(ckpt: Path, tmp_path: Path, capsys, expected: str, *extra) -> None:
    """`segzoo infer` with checkpoint ``ckpt`` on a valid image: one error line naming ``ckpt`` and ``expected``."""
    image = tmp_path / "ct.nii.gz"
    save_nifti(np.zeros(SHAPE, np.float32), AFFINE, image)
    argv = ["infer", "--ckpt", ckpt, "--input", image, "--output", tmp_path / "out", *extra]
    expect_cli_error(argv, capsys, ckpt, expected)


def test_checkpoint_of_another_net(tmp_path, capsys):
    small = MSSUNet(kernel_size=[3, 3, 3], strides=[1, 2, 2], base_features=4, out_channels=3)
    other = MSSUNet(kernel_size=[3, 3, 3], strides=[1, 2, 2], base_features=6, out_channels=2)
    ckpt = _ckpt(tmp_path / "mixed.ckpt", small.init_config, other.state_dict())
    expected = "do not fit the net segzoo.nets.mss_unet.MSSUNet"
    _infer_refuses(ckpt, tmp_path, capsys, expected, "--roi-size", 4, 8, 8)


def test_non_segzoo_checkpoint(tmp_path, capsys):
    ckpt = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {"model.weight": torch.zeros(3)}, "epoch": 3}, ckpt)
    _infer_refuses(ckpt, tmp_path, capsys, "not a segzoo checkpoint")


def test_random_file_as_checkpoint(tmp_path, capsys):
    ckpt = tmp_path / "weights.ckpt"
    ckpt.write_bytes(np.random.default_rng(0).bytes(4096))
    _infer_refuses(ckpt, tmp_path, capsys, "cannot read checkpoint")


def test_pretrained_directory_with_wrong_weights(tmp_path, pretrained):
    from segzoo.inference.predict import load_predictor

    broken = tmp_path / "pretrained"
    shutil.copytree(pretrained, broken)
    config = json.loads((broken / "config.json").read_text())
    config["init_args"]["base_features"] = 6  # the config now describes another net than the weights
    (broken / "config.json").write_text(json.dumps(config))
    expect_error(lambda: load_predictor(broken), broken, "not a loadable save_pretrained directory", "size mismatch")


@pytest.fixture
def infer_setup(tmp_path, tiny_net):
    torch.manual_seed(0)
    model = tmp_path / "model"
    tiny_net.save_pretrained(model)
    (model / "inference.json").write_text(json.dumps({"roi_size": [4, 8, 8]}))
    images = tmp_path / "images"
    rng = np.random.default_rng(0)
    for k in range(3):
        save_nifti(rng.normal(0, 1, SHAPE).astype(np.float32), AFFINE, images / f"ct_{k}.nii.gz")
    out = tmp_path / "pred"
    argv = ["infer", "--ckpt", str(model), "--input", str(images), "--output", str(out), "--no-tta"]
    return argv, out


@pytest.fixture
def predict_calls(monkeypatch):
    calls: list[str] = []
    real = Predictor.predict_labels

    def counting(self, case):
        calls.append(Path(case.image).name)
        return real(self, case)

    monkeypatch.setattr(Predictor, "predict_labels", counting)
    return calls


def test_interrupted_infer_leaves_no_partial_file_and_continue_finishes(infer_setup, predict_calls, monkeypatch):
    import nibabel

    argv, out = infer_setup
    real_save = nibabel.save
    saves = []

    def dying_save(img, filename):  # the 2nd write dies half-way through its (temporary) file
        saves.append(filename)
        if len(saves) == 2:
            Path(filename).write_bytes(b"\x1f\x8b partial")
            raise OSError("No space left on device")
        return real_save(img, filename)

    monkeypatch.setattr(nibabel, "save", dying_save)
    with pytest.raises(OSError, match="No space left"):
        main(argv)
    assert sorted(p.name for p in out.iterdir()) == ["ct_0.nii.gz"]  # no ct_1, no temporary file
    assert Path(saves[1]).parent == out and not Path(saves[1]).exists()
    monkeypatch.setattr(nibabel, "save", real_save)

    done = out / "ct_0.nii.gz"
    before = done.stat().st_mtime_ns
    predict_calls.clear()
    assert main([*argv, "--continue"]) == 0
    assert predict_calls == ["ct_1.nii.gz", "ct_2.nii.gz"]  # only the missing cases
    assert done.stat().st_mtime_ns == before
    assert sorted(p.name for p in out.iterdir()) == ["ct_0.nii.gz", "ct_1.nii.gz", "ct_2.nii.gz"]
    for k in range(3):
        labels, affine = load_nifti(out / f"ct_{k}.nii.gz")
        assert labels.shape == SHAPE and np.allclose(affine, AFFINE)


def test_continue_redoes_unreadable_outputs_and_default_overwrites(infer_setup, predict_calls):
    argv, out = infer_setup
    assert main(argv) == 0
    assert len(predict_calls) == 3
    (out / "ct_2.nii.gz").write_bytes((out / "ct_2.nii.gz").read_bytes()[:20])  # a damaged earlier output
    predict_calls.clear()
    assert main([*argv, "--continue"]) == 0
    assert predict_calls == ["ct_2.nii.gz"]
    assert load_nifti(out / "ct_2.nii.gz")[0].shape == SHAPE
    predict_calls.clear()
    assert main(argv) == 0  # without --continue everything is predicted again
    assert predict_calls == ["ct_0.nii.gz", "ct_1.nii.gz", "ct_2.nii.gz"]
