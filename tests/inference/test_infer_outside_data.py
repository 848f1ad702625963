"""`segzoo infer` on data other tools wrote: any of the 48 axis orders/directions gives the same labels voxel for
voxel, outputs keep the input's header, and a folder run finishes past bad files with a summary."""

from __future__ import annotations

import itertools
import json
import os

import nibabel as nib
import numpy as np
import pytest
import torch
from nibabel.testing import data_path
from torch import nn

from segzoo.cli import main
from segzoo.data.io import load_nifti, save_nifti
from segzoo.data.preprocessor import CTPreprocessor
from segzoo.data.synthetic.kits19 import kits19_affine
from segzoo.inference.predict import Predictor, case_name, find_inputs, load_predictor
from segzoo.inference.sliding_window import SlidingWindowTTAInferer
from segzoo.nets import MSSUNet

pytestmark = pytest.mark.usefixtures("one_thread")

ALL_48 = [
    np.array([[p[i], f[i]] for i in range(3)], dtype=float)
    for p in itertools.permutations(range(3))
    for f in itertools.product((1, -1), repeat=3)
]
KITS_CODES = ("I", "P", "L")


def tiny_net() -> nn.Module:
    """A deterministic net that is not symmetric in any axis (a transposed input gives other labels)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.Tanh(), nn.Conv3d(4, 3, (3, 1, 5), padding=(1, 0, 2)))
    return net.eval()


def kits_like_volume() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    from scipy import ndimage

    image = ndimage.gaussian_filter(rng.normal(0, 200, (7, 15, 12)), 1.5).astype(np.float32)
    affine = kits19_affine((3.0, 0.8, 0.9))
    affine[:3, 3] = [40.0, -12.0, 7.0]
    return image, affine


def predictor(orientation=KITS_CODES) -> Predictor:
    pre = CTPreprocessor(-150, 150, 0.0, 60.0, target_spacing=(2.0, 1.1, 1.3), orientation=orientation)
    inferer = SlidingWindowTTAInferer(roi_size=(8, 8, 8), mirror_axes=None, overlap=0.25)
    return Predictor(net=tiny_net(), inferer=inferer, preprocessor=pre)


def write_variant(path, image, affine, ornt):
    data = nib.orientations.apply_orientation(image, ornt)
    aff = affine @ nib.orientations.inv_ornt_aff(ornt, image.shape)
    img = nib.Nifti1Image(data, aff)
    img.set_qform(aff, code=1)
    img.set_sform(aff, code=2)
    img.header.set_xyzt_units("mm", "sec")
    img.header["descrip"] = b"variant"
    img.to_filename(path)
    return img


def test_all_48_orientations_give_the_same_labels(tmp_path):
    image, affine = kits_like_volume()
    src = tmp_path / "orig.nii.gz"
    write_variant(src, image, affine, ALL_48[0])
    pred = predictor()
    base = load_nifti(pred.predict_file(src, tmp_path / "orig_pred.nii.gz"))[0]
    assert len(np.unique(base)) == 3  # every class present: a real label map, not a constant
    unaware = predictor(orientation=None)  # the old behaviour: arrays taken as stored
    differs = 0
    for k, ornt in enumerate(ALL_48):
        path = tmp_path / f"v{k}.nii.gz"
        written = write_variant(path, image, affine, ornt)
        out = pred.predict_file(path, tmp_path / f"v{k}_pred.nii.gz")
        labels = nib.load(out)
        assert labels.shape == written.shape
        np.testing.assert_array_equal(labels.header.get_qform(), written.header.get_qform())
        np.testing.assert_array_equal(labels.header.get_sform(), written.header.get_sform())
        assert int(labels.header["sform_code"]) == 2 and labels.header["descrip"] == b"variant"
        back = nib.orientations.apply_orientation(np.asarray(labels.dataobj), _inverse(ornt))
        np.testing.assert_array_equal(back, base, err_msg=f"variant {k} {nib.aff2axcodes(written.affine)}")
        if k % 8 == 5:  # a few variants through the orientation-unaware path: it must differ (test can fail)
            other = unaware.predict_file(path, tmp_path / f"u{k}_pred.nii.gz")
            differs += not np.array_equal(
                nib.orientations.apply_orientation(np.asarray(nib.load(other).dataobj), _inverse(ornt)), base
            )
    assert differs > 0


def _inverse(ornt: np.ndarray) -> np.ndarray:
    inv = np.empty_like(ornt)
    for axis, (new_axis, flip) in enumerate(ornt):
        inv[int(new_axis)] = [axis, flip]
    return inv


def test_oblique_input_is_predicted_without_resampling(tmp_path, caplog):
    image, affine = kits_like_volume()
    angle = np.radians(8.0)
    rot = np.eye(4)
    rot[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    src = tmp_path / "tilted.nii.gz"
    nib.Nifti1Image(image, rot @ affine).to_filename(src)
    plain = tmp_path / "plain.nii.gz"
    nib.Nifti1Image(image, affine).to_filename(plain)
    pred = predictor()
    import logging

    with caplog.at_level(logging.INFO, logger="segzoo"):
        out = pred.predict_file(src, tmp_path / "tilted_pred.nii.gz")
    assert f"{src}: oblique affine" in caplog.text
    ref = pred.predict_file(plain, tmp_path / "plain_pred.nii.gz")
    np.testing.assert_array_equal(load_nifti(out)[0], load_nifti(ref)[0])  # same voxels, same labels
    np.testing.assert_allclose(nib.load(out).affine, rot @ affine, atol=1e-5)


def test_real_file_output_overlays_input_in_simpleitk(tmp_path):
    sitk = pytest.importorskip("SimpleITK")
    src = os.path.join(data_path, "anatomical.nii")  # big-endian int16, L/A/S, qform and sform code 2
    out = predictor().predict_file(src, tmp_path / "anat_pred.nii.gz")
    a, b = sitk.ReadImage(src), sitk.ReadImage(str(out))
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-6)
    assert sitk.GetArrayFromImage(b).dtype == np.uint8


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    directory = tmp_path_factory.mktemp("pretrained")
    torch.manual_seed(0)
    MSSUNet(kernel_size=[3, 3, 3], strides=[1, 2, 2], base_features=4, out_channels=3).save_pretrained(directory)
    (directory / "inference.json").write_text(json.dumps({"roi_size": [4, 8, 8]}))
    pre = CTPreprocessor(-150, 150, 0.0, 60.0, target_spacing=(3.0, 1.0, 1.0), orientation=KITS_CODES)
    (directory / "preprocessor.json").write_text(json.dumps(pre.to_dict()))
    return directory


def test_orientation_travels_with_the_pretrained_folder(pretrained):
    loaded = load_predictor(pretrained, tta=False)
    assert loaded.preprocessor.orientation == KITS_CODES
    d = loaded.preprocessor.to_dict()
    assert json.loads(json.dumps(d)) == d and d["orientation"] == list(KITS_CODES)
    legacy = {k: v for k, v in d.items() if k != "orientation"}
    assert CTPreprocessor.from_dict(legacy).orientation is None  # older checkpoints keep arrays as stored


def test_folder_run_reports_bad_files_and_finishes(tmp_path, pretrained, capsys):
    image, affine = kits_like_volume()
    inp = tmp_path / "in"
    save_nifti(image, affine, inp / "a_good.nii.gz")
    ras = nib.as_closest_canonical(nib.Nifti1Image(image, affine))
    ras.to_filename(inp / "x.nii.gz")
    (inp / "x.nii.gz").rename(inp / "B_RAS.NII.GZ")  # upper case: found, not skipped
    truncated = inp / "c_truncated.nii.gz"
    data = (inp / "a_good.nii.gz").read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    rgb = np.zeros((4, 4, 3), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    nib.Nifti1Image(rgb, np.eye(4)).to_filename(inp / "d_rgb.nii.gz")
    (inp / "notes.txt").write_text("not an image")
    assert [case_name(p) for p in find_inputs(inp)] == ["B_RAS", "a_good", "c_truncated", "d_rgb"]
    out = tmp_path / "out"
    capsys.readouterr()
    code = main(["infer", "--ckpt", str(pretrained), "--input", str(inp), "--output", str(out), "--no-tta"])
    cap = capsys.readouterr()
    assert code == 1
    assert "Traceback" not in cap.err
    errors = [line for line in cap.err.splitlines() if ": error:" in line]
    assert len(errors) == 2
    assert str(truncated) in errors[0] and "corrupt or truncated" in errors[0]
    assert str(inp / "d_rgb.nii.gz") in errors[1] and "expected a scalar image, got RGB" in errors[1]
    assert "2 written, 0 skipped (already there), 2 failed" in cap.out
    assert sorted(p.name for p in out.iterdir()) == ["B_RAS.nii.gz", "a_good.nii.gz"]
    a, b = load_nifti(out / "a_good.nii.gz")[0], load_nifti(out / "B_RAS.nii.gz")[0]
    ornt = nib.orientations.io_orientation(affine)
    np.testing.assert_array_equal(nib.orientations.apply_orientation(a, ornt), b)  # same labels, RAS-stored
    # --continue: the finished ones are skipped, the bad ones fail again
    code = main(["infer", "--ckpt", str(pretrained), "--input", str(inp), "--output", str(out), "--continue"])
    assert code == 1 and "0 written, 2 skipped (already there), 2 failed" in capsys.readouterr().out


def test_infer_reads_the_checkpoint_once(tmp_path, pretrained, monkeypatch):
    import segzoo.checkpoint as checkpoint

    image, affine = kits_like_volume()
    save_nifti(image, affine, tmp_path / "in" / "a.nii.gz")
    calls = []
    real = checkpoint.load_checkpoint
    monkeypatch.setattr(checkpoint, "load_checkpoint", lambda *a, **k: calls.append(a) or real(*a, **k))
    code = main(["infer", "--ckpt", str(pretrained), "--input", str(tmp_path / "in"), "--output", str(tmp_path / "o")])
    assert code == 0 and (tmp_path / "o" / "a.nii.gz").is_file()
    assert len(calls) == 1  # one read decides 2D or 3D and builds the predictor
