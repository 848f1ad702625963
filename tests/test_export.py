"""segzoo export: ONNX / TorchScript outputs match PyTorch; pretrained directories work with segzoo infer."""

import json

import numpy as np
import pytest
import torch

import segzoo
from segzoo.checkpoint import checkpoint_format, load_checkpoint
from segzoo.cli import main


def _checkpoint(net, path, roi=None, preprocessor=None):
    """A checkpoint as ``SegmentationTask.on_save_checkpoint`` writes it (``segzoo_format`` + ``net.`` weights)."""
    fmt = checkpoint_format(net)
    if roi is not None:
        fmt["inferer"] = {"roi_size": list(roi)}
    fmt["preprocessor"] = preprocessor
    ckpt = {"segzoo_format": fmt, "state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}, "epoch": 3}
    torch.save(ckpt, path)
    return path


@pytest.fixture(scope="module")
def small_3d():
    torch.manual_seed(0)
    net = segzoo.create_net("mss_unet3d_small").eval()
    with torch.no_grad():  # non-trivial norm statistics are not used (instance norm), perturb weights instead
        for p in net.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return net


def _compare(net, run, shapes):
    for shape in shapes:
        x = torch.randn(*shape)
        with torch.no_grad():
            ref = net(x).numpy()
        got = run(x)
        assert got.shape == ref.shape
        np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-4)


def _ort(path):
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    return lambda x: session.run(None, {"image": x.numpy()})[0]


def _jit(path):
    module = torch.jit.load(str(path))

    def run(x):
        # the profiling executor's first-call optimisation passes are slow and irrelevant to the comparison
        with torch.no_grad(), torch.jit.optimized_execution(False):
            return module(x).numpy()

    return run


@pytest.mark.slow
def test_onnx_from_lightning_checkpoint_dynamic_axes(small_3d, tmp_path):
    ckpt = _checkpoint(small_3d, tmp_path / "last.ckpt")
    out = tmp_path / "exported" / "net.onnx"
    assert main(["export", "--ckpt", str(ckpt), "--format", "onnx", "--out", str(out)]) == 0
    assert out.is_file() and not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]
    # traced at the registry's example (1, 1, 16, 32, 32); batch and spatial axes are dynamic
    _compare(small_3d, _ort(out), [(1, 1, 16, 32, 32), (2, 1, 32, 32, 48)])


@pytest.mark.slow
def test_torchscript_from_pretrained_dir(small_3d, tmp_path):
    small_3d.save_pretrained(tmp_path / "pre")
    out = tmp_path / "net.pt"
    assert main(["export", "--ckpt", str(tmp_path / "pre"), "--format", "torchscript", "--out", str(out)]) == 0
    _compare(small_3d, _jit(out), [(1, 1, 16, 32, 32), (1, 1, 32, 32, 64)])


def test_explicit_shape_and_static_onnx(small_3d, tmp_path):
    ckpt = _checkpoint(small_3d, tmp_path / "a.ckpt")
    out = tmp_path / "static.onnx"
    args = ["export", "--ckpt", str(ckpt), "--format", "onnx", "--out", str(out), "--shape", "2", "1", "8", "16", "16"]
    assert main([*args, "--no-dynamic"]) == 0
    import onnxruntime as ort

    assert ort.InferenceSession(str(out)).get_inputs()[0].shape == [2, 1, 8, 16, 16]
    _compare(small_3d, _ort(out), [(2, 1, 8, 16, 16)])


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_drnet_rotation_blocks_export(fmt, tmp_path):
    # DR-Net's torch.rot90 needs the custom ONNX symbolic; the two rotation branches would differ if it were wrong
    torch.manual_seed(0)
    net = segzoo.create_net("drnet", features=[8, 16, 32, 64, 128]).eval()
    net.save_pretrained(tmp_path / "pre")
    out = tmp_path / f"drnet.{fmt}"
    assert main(["export", "--ckpt", str(tmp_path / "pre"), "--format", fmt, "--out", str(out)]) == 0
    run = _ort(out) if fmt == "onnx" else _jit(out)
    _compare(net, run, [(1, 1, 32, 32), (2, 1, 48, 64)])


def test_pretrained_export_keeps_inference_settings(small_3d, tmp_path):
    prep = {"type": "ct", "target_spacing": [3.0, 1.0, 1.0]}
    ckpt = _checkpoint(small_3d, tmp_path / "a.ckpt", roi=[16, 32, 32], preprocessor=prep)
    out = tmp_path / "pretrained"
    assert main(["export", "--ckpt", str(ckpt), "--format", "pretrained", "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == {
        "config.json",
        "model.safetensors",
        "preprocessor.json",
        "inference.json",
        "README.md",  # the model card: the same folder save_pretrained / push_to_hub write
    }
    assert "segzoo infer --ckpt FOLDER" in (out / "README.md").read_text()
    assert json.loads((out / "preprocessor.json").read_text()) == prep
    assert json.loads((out / "inference.json").read_text()) == {
        "inferer": {"roi_size": [16, 32, 32]},
        "postprocess": None,
    }
    loaded = load_checkpoint(out)
    assert loaded.roi_size == [16, 32, 32]
    assert loaded.format["preprocessor"] == prep
    net = loaded.net
    for a, b in zip(net.state_dict().values(), small_3d.state_dict().values()):
        torch.testing.assert_close(a, b)


def test_infer_accepts_pretrained_directory(small_3d, tmp_path):
    from segzoo.data.io import load_nifti, save_nifti

    ckpt = _checkpoint(small_3d, tmp_path / "a.ckpt", roi=[16, 32, 32])
    pre = tmp_path / "pretrained"
    assert main(["export", "--ckpt", str(ckpt), "--format", "pretrained", "--out", str(pre)]) == 0
    rng = np.random.default_rng(0)
    image = rng.normal(size=(16, 32, 32)).astype(np.float32)
    affine = np.diag([2.5, 0.8, 0.8, 1.0])
    save_nifti(image, affine, tmp_path / "in" / "case_a.nii.gz")
    args = ["infer", "--ckpt", str(pre), "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")]
    assert main([*args, "--no-tta", "--no-postprocess"]) == 0
    pred, pred_affine = load_nifti(tmp_path / "out" / "case_a.nii.gz")
    np.testing.assert_allclose(pred_affine, affine)
    with torch.no_grad():  # one window covers the volume: the prediction is the net's argmax
        expected = small_3d(torch.from_numpy(image)[None, None]).argmax(1)[0].numpy()
    assert pred.shape == image.shape
    assert (pred == expected).mean() > 0.999

    # the fast / low-memory switches: TTA with the flips split over passes, then bf16 autocast on top
    assert main([*args, "--no-postprocess"]) == 0
    tta, _ = load_nifti(tmp_path / "out" / "case_a.nii.gz")
    assert main([*args, "--no-postprocess", "--max-batch", "3", "--memory-budget-gb", "1"]) == 0
    assert np.array_equal(load_nifti(tmp_path / "out" / "case_a.nii.gz")[0], tta)
    assert main([*args, "--no-postprocess", "--amp"]) == 0
    assert (load_nifti(tmp_path / "out" / "case_a.nii.gz")[0] == tta).mean() > 0.99
    with pytest.raises(SystemExit) as e:  # argparse: one line naming the flag, exit status 2
        main([*args, "--max-batch", "0"])
    assert e.value.code == 2


def test_bad_checkpoint_is_one_line_error(tmp_path, capsys):
    torch.save({"state_dict": {}}, tmp_path / "foreign.ckpt")
    assert main(["export", "--ckpt", str(tmp_path / "foreign.ckpt"), "--format", "onnx", "--out", "x.onnx"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "foreign.ckpt" in err and "segzoo_format" in err
    assert main(["export", "--ckpt", str(tmp_path / "missing"), "--format", "onnx", "--out", "x.onnx"]) == 2
    assert "missing" in capsys.readouterr().err
    (tmp_path / "pre").mkdir()
    assert main(["export", "--ckpt", str(tmp_path / "pre"), "--format", "torchscript", "--out", "x.pt"]) == 2
    assert "config.json" in capsys.readouterr().err
