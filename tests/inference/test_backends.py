"""Inference backends (ONNX Runtime, OpenVINO) and the `segzoo infer` switches: TTA choices, crop, coarse-to-fine."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from segzoo.cli import main
from segzoo.data.io import save_nifti
from segzoo.inference.backends import backend_net
from segzoo.inference.sliding_window import crop_arguments, tta_mirror_axes
from segzoo.nets import MSSUNet


def tiny_net(seed: int = 0) -> MSSUNet:
    torch.manual_seed(seed)
    return MSSUNet(kernel_size=[3, 3, 3], strides=[1, 2, 2], base_features=4, out_channels=3).eval()


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_backend_net_matches_pytorch(backend):
    pytest.importorskip(backend)
    net = tiny_net()
    x = torch.randn(3, 1, 8, 12, 16)  # another batch and spatial size than the export's example: dynamic axes
    with torch.inference_mode():
        ref = net(x)
    run = backend_net(net, backend, (1, 1, 4, 8, 8), out_channels=3)
    assert run.out_channels == 3
    out = run(x)
    assert out.shape == ref.shape and out.dtype == torch.float32
    torch.testing.assert_close(out, ref, atol=2e-4, rtol=1e-3)
    assert backend_net(net, "torch", (1, 1, 4, 8, 8)) is net
    with pytest.raises(ValueError, match="backend"):
        backend_net(net, "tensorrt", (1, 1, 4, 8, 8))


def test_tta_and_crop_choices():
    assert tta_mirror_axes("all", 3) == tta_mirror_axes(True, 3) == (0, 1, 2)
    assert tta_mirror_axes("inplane", 3) == (1, 2)
    assert tta_mirror_axes("inplane", 2) == (0, 1)
    assert tta_mirror_axes("none", 3) is None and tta_mirror_axes(False, 3) is None
    with pytest.raises(ValueError, match="tta"):
        tta_mirror_axes("some", 3)
    assert crop_arguments("none") == {"crop": False, "crop_grid": "case"}
    assert crop_arguments("exact") == {"crop": True, "crop_grid": "case"}
    assert crop_arguments("regrid") == {"crop": True, "crop_grid": "crop"}
    with pytest.raises(ValueError, match="crop"):
        crop_arguments("body")


@pytest.fixture
def pretrained_case(tmp_path):
    model = tmp_path / "model"
    tiny_net().save_pretrained(model)
    (model / "inference.json").write_text(json.dumps({"roi_size": [4, 8, 8]}))
    image = np.full((6, 24, 20), -3.0, dtype=np.float32)  # "air" at the floor, a body in the middle
    image[:, 6:18, 5:15] = np.random.default_rng(0).normal(0, 1, (6, 12, 10)).clip(-2.5, 3)  # above the floor
    save_nifti(image, np.diag([3.0, 0.8, 0.8, 1.0]), tmp_path / "in" / "ct.nii.gz")
    return model, tmp_path


def _infer(model, tmp_path, name, *flags):
    out = tmp_path / name
    args = ["infer", "--ckpt", str(model), "--input", str(tmp_path / "in"), "--output", str(out), "--no-postprocess"]
    assert main([*args, *flags]) == 0
    return np.asarray(nib.load(out / "ct.nii.gz").dataobj)


@pytest.mark.slow
def test_infer_switches_end_to_end(pretrained_case, capsys):
    pytest.importorskip("onnxruntime")
    model, tmp_path = pretrained_case
    full = _infer(model, tmp_path, "full", "--crop", "none")
    crop = _infer(model, tmp_path, "crop")  # default: --crop exact, 8 flips
    body = (slice(None), slice(6 - 4, 18 + 4), slice(5 - 4, 15 + 4))  # default margin 4
    assert np.array_equal(crop[body], full[body])
    outside = np.ones(full.shape, dtype=bool)
    outside[body] = False
    assert (crop[outside] == 0).all()
    onnx = _infer(model, tmp_path, "onnx", "--backend", "onnxruntime")
    assert (onnx != crop).mean() < 1e-3  # float differences may flip a tie, nothing more
    assert _infer(model, tmp_path, "inplane", "--tta", "inplane").shape == full.shape
    assert _infer(model, tmp_path, "none", "--tta", "none", "--crop", "regrid", "--coarse-to-fine").shape == full.shape
    with pytest.raises(SystemExit):
        main(
            [
                "infer",
                "--ckpt",
                str(model),
                "--input",
                "x",
                "--output",
                "y",
                "--backend",
                "onnxruntime",
                "--device",
                "cuda",
            ]
        )
    assert "runs on the CPU" in capsys.readouterr().err
