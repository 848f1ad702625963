"""segzoo export --format monai-bundle: MONAI's own tools run the bundle and predict what `segzoo infer --tta none`
predicts (per-label Dice >= 0.999; measured: equal voxel for voxel), for CT preprocessing with post-processing and for
the per-channel preprocessing of a user's own two-channel dataset in mixed orientations; the metadata passes MONAI's
verify_metadata against the keys MONAI's bundle specification makes mandatory; model.ts equals the net; what cannot be
exported is one line and exit 2, with nothing written."""

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from expect import expect_cli_error

from segzoo.checkpoint import checkpoint_format
from segzoo.cli import main
from segzoo.data.io import save_nifti
from segzoo.data.preprocessor import CTPreprocessor
from segzoo.inference import KiTSPostprocess, SlidingWindowTTAInferer
from segzoo.nets import MSSUNet

pytest.importorskip("ignite", reason="monai.bundle run's evaluator needs pytorch-ignite (the dev extra)")

ROI = [8, 16, 16]
# KiTS19's layout: slices first, pointing I, then P, then L; images below are stored otherwise
PRE = CTPreprocessor(-80.0, 400.0, 150.0, 100.0, target_spacing=(3.0, 1.5, 1.5), orientation=("I", "P", "L"))


def _phantom(rng: np.random.Generator, shape=(14, 40, 44)) -> tuple[np.ndarray, np.ndarray]:
    """A CT-like volume ``(I, P, L)`` with an organ (1) holding a lesion (2), and its labels."""
    z, y, x = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    labels = np.zeros(shape, np.uint8)
    organ = ((z - 7) / 5) ** 2 + ((y - 18) / 11) ** 2 + ((x - 24) / 10) ** 2 < 1
    lesion = ((z - 7) / 4) ** 2 + ((y - 15) / 6) ** 2 + ((x - 28) / 5) ** 2 < 1
    labels[organ] = 1
    labels[organ & lesion] = 2
    image = rng.normal(-60, 25, shape) + 210 * (labels == 1) + 390 * (labels == 2)
    return image.astype(np.float32), labels


def _trained_checkpoint(path: Path, post=None) -> Path:
    """A tiny MSS U-Net fitted for a few seconds to phantoms already preprocessed (a trained net's structured
    predictions, not a random net's near-ties), saved as `segzoo fit` saves it."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    net = MSSUNet(3, 1, 3, kernel_size=[3, 3, 3], strides=[1, 2, 2], base_features=4, deep_supervision=False)
    images, labels = zip(*[_phantom(rng) for _ in range(2)])
    x, y = torch.from_numpy(np.stack([PRE.normalize(i) for i in images])[:, None]), torch.from_numpy(np.stack(labels))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(150):  # windows of the inferer's size: instance norm sees what it sees at inference
        starts = [[rng.integers(0, n - r + 1) for n, r in zip(x.shape[2:], ROI)] for _ in range(4)]
        crops = [(c, *[slice(a, a + r) for a, r in zip(st, ROI)]) for c, st in zip(rng.integers(0, 2, 4), starts)]
        opt.zero_grad()
        logits = net(torch.stack([x[c][:, a, b, d] for c, a, b, d in crops]))
        torch.nn.functional.cross_entropy(
            logits, torch.stack([y[c][a, b, d] for c, a, b, d in crops]).long()
        ).backward()
        opt.step()
    net.eval()
    inferer = SlidingWindowTTAInferer(roi_size=ROI, mirror_axes=None)
    fmt = checkpoint_format(net, inferer, post, PRE)
    torch.save({"segzoo_format": fmt, "state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}}, path)
    return path


def _write_images(folder: Path) -> None:
    """Two phantoms at other spacings (within 10% of the training spacing, so the tiny net still finds both labels),
    stored R/A/S slices last and L/P/S: neither is the training orientation."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    image, _ = _phantom(rng, (14, 40, 44))
    ras = np.transpose(image, (2, 1, 0))[::-1, ::-1, :]  # (I, P, L) -> (R, A, S)
    save_nifti(np.ascontiguousarray(ras), np.diag([1.65, 1.35, 2.7, 1.0]), folder / "ras.nii.gz")
    image, _ = _phantom(rng, (15, 38, 44))
    lps = np.transpose(image, (2, 1, 0))[:, :, ::-1]  # (I, P, L) -> (L, P, S)
    save_nifti(np.ascontiguousarray(lps), np.diag([-1.4, -1.6, 3.2, 1.0]), folder / "lps.nii.gz")


def _dice_per_label(reference: Path, bundle_out: Path, names: dict[str, str]) -> dict[str, list[float]]:
    """Per case the per-label Dice of the bundle's label maps against segzoo infer's (same grid asserted)."""
    out = {}
    for segzoo_name, bundle_name in names.items():
        a_img, b_img = nib.load(str(reference / segzoo_name)), nib.load(str(bundle_out / bundle_name))
        a, b = np.asarray(a_img.dataobj), np.asarray(b_img.dataobj)
        assert a.shape == b.shape and np.allclose(a_img.affine, b_img.affine, atol=1e-4)
        labels = sorted(set(np.unique(a).tolist()) - {0})
        assert labels, f"{segzoo_name}: segzoo infer predicted only background; the comparison would say nothing"
        out[segzoo_name] = [2 * np.sum((a == v) & (b == v)) / (np.sum(a == v) + np.sum(b == v)) for v in labels]
    return out


@pytest.fixture(scope="module")
def ct_case(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a module fixture runs before the function-scoped one_thread fixture
    try:
        yield _ct_case(tmp_path_factory.mktemp("bundle_ct"))
    finally:
        torch.set_num_threads(threads)


def _ct_case(root: Path) -> tuple[Path, Path]:
    post = KiTSPostprocess(min_relative_size=0.2, validation={"note": "decided on validation"})
    ckpt = _trained_checkpoint(root / "model.ckpt", post=post)
    _write_images(root / "images")
    assert main(["export", "--ckpt", str(ckpt), "--format", "monai-bundle", "--out", str(root / "bundle")]) == 0
    return root, ckpt


def test_ct_bundle_predicts_what_segzoo_infer_predicts(ct_case):
    from monai.bundle import run

    root, ckpt = ct_case
    ref = root / "segzoo"
    assert (
        main(["infer", "--ckpt", str(ckpt), "--input", str(root / "images"), "--output", str(ref), "--tta", "none"])
        == 0
    )
    bundle = root / "bundle"
    run(
        config_file=str(bundle / "configs" / "inference.json"),
        bundle_root=str(bundle),
        dataset_dir=str(root / "images"),
        output_dir=str(root / "pred"),
        device="$torch.device('cpu')",
    )
    dice = _dice_per_label(ref, root / "pred", {"ras.nii.gz": "ras_seg.nii.gz", "lps.nii.gz": "lps_seg.nii.gz"})
    assert all(len(d) == 2 and min(d) >= 0.999 for d in dice.values()), dice
    config = json.loads((bundle / "configs" / "inference.json").read_text())
    targets = [t["_target_"] for t in config["preprocessing"]["transforms"]]
    assert targets == [
        "LoadImaged",
        "EnsureChannelFirstd",
        "ThresholdIntensityd",
        "ThresholdIntensityd",
        "NormalizeIntensityd",
        "Orientationd",
        "segzoo.inference.monai_bundle.ResizeToSpacingd",
    ]
    post = config["postprocessing"]["transforms"]
    assert post[2]["postprocess"]["_target_"] == "segzoo.inference.postprocess.KiTSPostprocess"
    assert post[2]["postprocess"]["min_relative_size"] == 0.2


def test_resize_to_spacing_inverts_like_segzoo_restore():
    """The transform's grid is the preprocessing's (size and values), and Invertd's way back is `restore`'s."""
    from monai.data import MetaTensor

    from segzoo.inference.monai_bundle import ResizeToSpacingd

    rng = np.random.default_rng(0)
    image = rng.normal(size=(13, 30, 27)).astype(np.float32)
    spacing = (2.3, 0.9, 1.1)
    t = ResizeToSpacingd("image", PRE.target_spacing)
    out = t({"image": MetaTensor(torch.from_numpy(image)[None], affine=torch.diag(torch.tensor([*spacing, 1.0])))})
    np.testing.assert_array_equal(out["image"].numpy(), PRE._resample(image[None], PRE.new_shape(image.shape, spacing)))
    scores = torch.softmax(torch.from_numpy(rng.normal(size=(3, *out["image"].shape[1:])).astype(np.float32)), 0)
    pred = MetaTensor(scores, affine=out["image"].affine)
    pred.applied_operations = out["image"].applied_operations
    back = t.inverse({"image": pred})["image"]
    assert tuple(back.shape[1:]) == image.shape
    np.testing.assert_array_equal(back.argmax(0).numpy(), PRE.restore(scores, image.shape))
    np.testing.assert_allclose(back.affine.numpy(), np.diag([*spacing, 1.0]), atol=1e-6)


def _schema() -> dict:
    """The metadata keys MONAI's bundle specification (docs/source/mb_specification.rst) makes mandatory, as a JSON
    schema; the model zoo's released schema file is not reachable offline."""
    tensor = {
        "type": "object",
        "required": [
            "type",
            "format",
            "modality",
            "num_channels",
            "spatial_shape",
            "dtype",
            "value_range",
            "is_patch_data",
            "channel_def",
        ],
        "properties": {
            "num_channels": {"type": "integer", "minimum": 1},
            "spatial_shape": {"type": "array", "items": {"type": ["integer", "string"]}},
            "value_range": {"type": "array", "items": {"type": "number"}},
            "is_patch_data": {"type": "boolean"},
            "channel_def": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    }
    io_ = {"type": "object", "minProperties": 1, "additionalProperties": tensor}
    strings = ["version", "monai_version", "pytorch_version", "numpy_version", "task", "description", "authors"]
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "object",
        # MONAI 1.6 reads "optional_packages_version" (the specification's name) as "required_packages_version"
        "required": [*strings, "copyright", "required_packages_version", "network_data_format"],
        "properties": {
            **{k: {"type": "string"} for k in strings},
            "required_packages_version": {"type": "object", "additionalProperties": {"type": "string"}},
            "network_data_format": {
                "type": "object",
                "required": ["inputs", "outputs"],
                "properties": {"inputs": io_, "outputs": io_},
            },
        },
    }


def test_metadata_verifies_and_net_matches_it(ct_case, tmp_path):
    from monai.bundle import verify_metadata, verify_net_in_out

    bundle = ct_case[0] / "bundle"
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(_schema()))
    meta_file = bundle / "configs" / "metadata.json"
    verify_metadata(meta_file=str(meta_file), filepath=str(schema))  # the file is there: nothing is downloaded
    meta = json.loads(meta_file.read_text())
    assert meta["network_data_format"]["outputs"]["pred"]["channel_def"] == {
        "0": "background",
        "1": "kidney",
        "2": "tumour",
    }
    assert meta["network_data_format"]["inputs"]["image"]["channel_def"] == {"0": "CT"}
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({k: v for k, v in meta.items() if k != "network_data_format"}))
    with pytest.raises(ValueError, match="network_data_format"):
        verify_metadata(meta_file=str(broken), filepath=str(schema))
    verify_net_in_out(
        net_id="network_def",
        meta_file=str(meta_file),
        config_file=str(bundle / "configs" / "inference.json"),
        device="cpu",
        bundle_root=str(bundle),
    )


def test_model_files_equal_the_net(ct_case):
    from monai.data import load_net_with_metadata

    from segzoo.checkpoint import load_checkpoint

    root, ckpt = ct_case
    net = load_checkpoint(ckpt).net
    state = torch.load(root / "bundle" / "models" / "model.pt", weights_only=True)
    assert state.keys() == net.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    ts, meta, extra = load_net_with_metadata(
        str(root / "bundle" / "models" / "model.ts"), more_extra_files=["inference.json"]
    )
    assert meta["network_data_format"]["inputs"]["image"]["num_channels"] == 1
    assert json.loads(extra["inference.json"])["network_def"]["_target_"] == "segzoo.nets.mss_unet.MSSUNet"
    for shape in ((1, 1, *ROI), (2, 1, 12, 24, 20)):  # the window and another size the net takes
        x = torch.randn(*shape)
        with torch.no_grad(), torch.jit.optimized_execution(False):
            np.testing.assert_allclose(ts(x).numpy(), net(x).numpy(), atol=1e-5)


def test_what_cannot_be_exported_is_one_line(ct_case, tmp_path, capsys):
    root, ckpt = ct_case
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("mine")
    expect_cli_error(
        ["export", "--ckpt", str(ckpt), "--format", "monai-bundle", "--out", str(occupied)], capsys, "occupied"
    )
    assert sorted(p.name for p in occupied.iterdir()) == ["notes.txt"]

    from segzoo.checkpoint import load_checkpoint

    raw = torch.load(ckpt, weights_only=True)
    raw["segzoo_format"]["postprocess"]["init_args"]["validation"] = {"note": "$__import__('os').system('true')"}
    sneaky = tmp_path / "sneaky.ckpt"
    torch.save(raw, sneaky)
    out = tmp_path / "b"
    expect_cli_error(
        ["export", "--ckpt", str(sneaky), "--format", "monai-bundle", "--out", str(out)],
        capsys,
        "sneaky.ckpt",
        "expression",
    )
    assert not out.exists()

    raw = torch.load(ckpt, weights_only=True)
    raw["segzoo_format"]["preprocessor"]["image_order"] = 3
    cubic = tmp_path / "cubic.ckpt"
    torch.save(raw, cubic)
    assert load_checkpoint(cubic).preprocessor().image_order == 3
    expect_cli_error(
        ["export", "--ckpt", str(cubic), "--format", "monai-bundle", "--out", str(out)],
        capsys,
        "cubic.ckpt",
        "image_order=3",
    )
    assert not out.exists()

    again = root / "bundle"  # an earlier bundle is replaced whole
    (again / "models" / "stale.pt").write_bytes(b"old")
    assert main(["export", "--ckpt", str(ckpt), "--format", "monai-bundle", "--out", str(again)]) == 0
    assert not (again / "models" / "stale.pt").exists() and (again / "models" / "model.ts").is_file()
    assert [p.name for p in again.parent.iterdir() if p.name.startswith(".")] == []


@pytest.mark.slow
def test_own_dataset_bundle_under_monai_bundle_run(tmp_path):
    """The README's own-data run (two channels: CT clip + z-score and a case z-score; four labels; cases stored in
    other orientations and spacings) exported and run by `python -m monai.bundle run` on the CPU."""
    from test_own_data import TINY

    from segzoo.data.synthetic.nnunet import write_nnunet

    data = tmp_path / "Dataset501_Synth"
    write_nnunet(data, cases=4, test_cases=2, seed=1)
    run = tmp_path / "run"
    fit = ["fit", "--config", "mss_unet3d", "--data.data_dir", str(data), "--trainer.default_root_dir", str(run)]
    assert main([*fit, *TINY, "--trainer.logger.save_dir", str(run)]) == 0
    ckpt = run / "checkpoints" / "last.ckpt"
    bundle = tmp_path / "bundle"
    names = ["--label-names", "organ", "lesion", "vessel", "--channel-names", "CT", "T2"]
    assert main(["export", "--ckpt", str(ckpt), "--format", "monai-bundle", "--out", str(bundle), *names]) == 0
    images = data / "imagesTs"
    assert (
        main(["infer", "--ckpt", str(ckpt), "--input", str(images), "--output", str(tmp_path / "ref"), "--tta", "none"])
        == 0
    )
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(bundle / "configs" / "inference.json")]
    cmd += ["--bundle_root", str(bundle), "--dataset_dir", str(images), "--output_dir", str(tmp_path / "pred")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    cases = {f"synth_00{i}.nii.gz": f"synth_00{i}_0000_seg.nii.gz" for i in (4, 5)}
    dice = _dice_per_label(tmp_path / "ref", tmp_path / "pred", cases)
    assert all(min(d) >= 0.999 for d in dice.values()), dice
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert meta["network_data_format"]["inputs"]["image"]["channel_def"] == {"0": "CT", "1": "T2"}
    assert meta["network_data_format"]["outputs"]["pred"]["channel_def"]["3"] == "vessel"
