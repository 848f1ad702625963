"""Checkpoints and pretrained folders: nothing from a file runs, and everything segzoo writes loads and predicts the same.

Crafted payloads (a ``__reduce__`` pickle, a ``torch.save`` zip holding one, a real ``segzoo fit`` checkpoint with one in
``hyper_parameters``, ``config.json`` / ``inference.json`` / ``preprocessor.json`` naming other code) must be refused
with one line naming the file, exit code 2 and nothing written, by ``segzoo infer``, ``segzoo export`` and
``from_pretrained``; the payload's marker file must not appear.
"""

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from toydata import ToyDataModule

import segzoo
from segzoo.checkpoint import (
    FORMAT_KEY,
    CheckpointError,
    LoadedModel,
    UntrustedCheckpointWarning,
    checkpoint_format,
    load_checkpoint,
    register_preprocessor,
)
from segzoo.cli import main
from segzoo.data.io import DataError, load_nifti, save_nifti
from segzoo.data.preprocessor import CTPreprocessor
from segzoo.inference import KiTSPostprocess, SlidingWindowTTAInferer

pytestmark = pytest.mark.usefixtures("one_thread")

PRE = CTPreprocessor(clip_low=-1.0, clip_high=3.0, mean=0.5, std=0.7, target_spacing=(2.0, 1.5, 1.5))
NET_ARGS = {"kernel_size": [3, 3, 3], "strides": [1, 2, 2], "base_features": 4, "out_channels": 3}
ROI = [8, 16, 16]


class PreprocessedToyDataModule(ToyDataModule):
    """The toy blobs with a CT preprocessor attached, as ``KiTS19DataModule`` has after ``setup``."""

    def setup(self, stage: str) -> None:
        super().setup(stage)
        self.preprocessor = PRE


DICE_CE = {"class_path": "monai.losses.DiceCELoss", "init_args": {"to_onehot_y": True, "softmax": True}}


def _fit_config(model: dict, data: dict) -> str:
    """A 2-step ``segzoo fit`` config (JSON is YAML) writing ``RUN/checkpoints/last.ckpt``."""
    trainer = {
        "max_steps": 2,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "accelerator": "cpu",
        "num_sanity_val_steps": 0,
        "limit_val_batches": 1,
        "callbacks": [{"class_path": "segzoo.tasks.RunCheckpoint", "init_args": {"save_last": True}}],
    }
    adam = {"class_path": "torch.optim.Adam", "init_args": {"lr": 0.01}}
    return json.dumps({"seed_everything": 0, "trainer": trainer, "model": {**model, "optimizer": adam}, "data": data})


FIT_3D = _fit_config(
    {
        "net": {"class_path": "segzoo.nets.MSSUNet", "init_args": NET_ARGS},
        "loss": {"class_path": "segzoo.losses.DeepSupervisionLoss", "init_args": {"loss": DICE_CE}},
        "inferer": {
            "class_path": "segzoo.inference.SlidingWindowTTAInferer",
            "init_args": {"roi_size": ROI, "mirror_axes": None},
        },
        "postprocess": {"class_path": "segzoo.inference.KiTSPostprocess", "init_args": {"min_component_size": 3}},
    },
    {
        "class_path": "test_checkpoint.PreprocessedToyDataModule",
        "init_args": {"shape": [8, 16, 16], "train_cases": 2, "batch_size": 2},
    },
)
FIT_2D = _fit_config(
    {
        "net": {
            "class_path": "segzoo.nets.DRNet",
            "init_args": {"in_channels": 1, "out_channels": 3, "features": [8, 16, 32, 64, 128]},
        },
        "loss": DICE_CE,
    },
    {"class_path": "toydata.ToyDataModule", "init_args": {"shape": [32, 32], "train_cases": 2, "batch_size": 2}},
)


def _fit(tmp: Path, config: str) -> Path:
    (tmp / "fit.yaml").write_text(config)
    assert main(["fit", "--config", str(tmp / "fit.yaml"), "--trainer.default_root_dir", str(tmp / "run")]) == 0
    return tmp / "run" / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def ckpt_3d(tmp_path_factory):
    return _fit(tmp_path_factory.mktemp("fit3d"), FIT_3D)


@pytest.fixture(scope="module")
def ckpt_2d(tmp_path_factory):
    return _fit(tmp_path_factory.mktemp("fit2d"), FIT_2D)


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    """A CT-like volume on a grid other than the preprocessor's (3 x 1 x 1 mm, slices first)."""
    path = tmp_path_factory.mktemp("img") / "ct_a.nii.gz"
    rng = np.random.default_rng(0)
    img = (rng.normal(0.5, 0.5, size=(6, 24, 24)) + np.pad(np.ones((2, 10, 10)), ((2, 2), (7, 7), (7, 7)))).astype(
        np.float32
    )
    save_nifti(img, np.diag([3.0, 1.0, 1.0, 1.0]), path)
    return path


def _state(ckpt: Path) -> dict[str, torch.Tensor]:
    raw = torch.load(ckpt, map_location="cpu", weights_only=True)
    return {k[len("net.") :]: v for k, v in raw["state_dict"].items() if k.startswith("net.")}


def _reference_labels(ckpt: Path, image: Path) -> np.ndarray:
    """``segzoo infer --no-tta`` by hand, from the YAML's classes and the raw weights (no segzoo.checkpoint)."""
    net = segzoo.nets.MSSUNet(**NET_ARGS).eval()
    net.load_state_dict(_state(ckpt))
    img, affine = load_nifti(image, dtype=np.float32)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    x = torch.from_numpy(PRE.preprocess(img, spacing))[None]
    out = SlidingWindowTTAInferer(roi_size=ROI, mirror_axes=None, sw_batch_size=2, overlap=0.5)(x, net)[0]
    return KiTSPostprocess(min_component_size=3)(PRE.restore(out, img.shape)).astype(np.uint8)


# ----------------------------------------------------------------------------------------- what segzoo writes
@pytest.mark.slow
def test_fit_checkpoint_is_plain_data_under_segzoo_format(ckpt_3d):
    raw = torch.load(ckpt_3d, map_location="cpu", weights_only=True)  # raises if anything needs unpickling
    fmt = raw[FORMAT_KEY]
    assert json.loads(json.dumps(fmt)) == fmt  # JSON round trip: plain data only
    assert fmt["version"] == 1
    assert fmt["net"]["class_path"] == "segzoo.nets.mss_unet.MSSUNet"
    assert fmt["inferer"]["roi_size"] == ROI
    assert fmt["inferer"]["class_path"] == "segzoo.inference.sliding_window.SlidingWindowTTAInferer"
    assert fmt["postprocess"]["init_args"]["min_component_size"] == 3
    assert fmt["preprocessor"] == {"type": "ct", **PRE.to_dict()}
    assert not {"segzoo_net", "segzoo_inferer", "segzoo_postprocess"} & set(raw)


@pytest.mark.slow
def test_fit_checkpoint_restores_every_part(ckpt_3d):
    loaded = load_checkpoint(ckpt_3d)
    assert loaded.preprocessor().to_dict() == PRE.to_dict()
    post = loaded.postprocess()
    assert isinstance(post, KiTSPostprocess) and post.min_component_size == 3
    inferer = loaded.inferer()
    assert isinstance(inferer, SlidingWindowTTAInferer) and inferer.roi_size == tuple(ROI)
    assert inferer.mirror_axes == ()
    for k, v in _state(ckpt_3d).items():
        torch.testing.assert_close(loaded.net.state_dict()[k], v)


@pytest.mark.slow
def test_infer_from_fit_checkpoint_and_pretrained_export_match_by_hand(ckpt_3d, image, tmp_path):
    expected = _reference_labels(ckpt_3d, image)
    assert len(np.unique(expected)) > 1  # not a constant map, so the comparison can tell two pipelines apart
    outputs = {}
    pretrained = tmp_path / "pretrained"
    assert main(["export", "--ckpt", str(ckpt_3d), "--format", "pretrained", "--out", str(pretrained)]) == 0
    assert sorted(p.name for p in pretrained.iterdir()) == sorted(
        ["config.json", "model.safetensors", "preprocessor.json", "inference.json", "README.md"]
    )
    for name, source in (("ckpt", ckpt_3d), ("pretrained", pretrained)):
        out = tmp_path / name
        assert main(["infer", "--ckpt", str(source), "--input", str(image), "--output", str(out), "--no-tta"]) == 0
        outputs[name], _ = load_nifti(out / "ct_a.nii.gz")
        np.testing.assert_array_equal(outputs[name], expected)
    # from_pretrained on the exported folder and on the checkpoint give the trained weights
    for source in (pretrained, ckpt_3d):
        net = segzoo.from_pretrained(source)
        for k, v in _state(ckpt_3d).items():
            torch.testing.assert_close(net.state_dict()[k], v)


@pytest.mark.slow
def test_legacy_checkpoint_keys_still_load(ckpt_3d, image, tmp_path):
    """A checkpoint as segzoo wrote it before ``segzoo_format`` (weights-only loadable) predicts the same labels."""
    raw = torch.load(ckpt_3d, map_location="cpu", weights_only=True)
    fmt = raw.pop(FORMAT_KEY)
    raw["segzoo_net"] = fmt["net"]
    raw["segzoo_inferer"] = {"roi_size": fmt["inferer"]["roi_size"]}
    raw["segzoo_postprocess"] = fmt["postprocess"]
    raw["PreprocessedToyDataModule"] = {"preprocessor": PRE.to_dict()}  # the datamodule's state, no "type"
    torch.save(raw, tmp_path / "legacy.ckpt")
    out = tmp_path / "out"
    assert main(["infer", "--ckpt", str(tmp_path / "legacy.ckpt"), "--input", str(image), "--output", str(out)]) == 0
    new = tmp_path / "new"
    assert main(["infer", "--ckpt", str(ckpt_3d), "--input", str(image), "--output", str(new)]) == 0
    np.testing.assert_array_equal(load_nifti(out / "ct_a.nii.gz")[0], load_nifti(new / "ct_a.nii.gz")[0])


@pytest.mark.slow
def test_2d_fit_checkpoint_and_pretrained_predict_the_same(ckpt_2d, tmp_path):
    raw = torch.load(ckpt_2d, map_location="cpu", weights_only=True)
    assert raw[FORMAT_KEY]["net"]["class_path"] == "segzoo.nets.drnet.DRNet"
    assert raw[FORMAT_KEY]["inferer"] is None and raw[FORMAT_KEY]["preprocessor"] is None
    reference = segzoo.nets.DRNet(in_channels=1, out_channels=3, features=[8, 16, 32, 64, 128]).eval()
    reference.load_state_dict(_state(ckpt_2d))
    assert main(["export", "--ckpt", str(ckpt_2d), "--format", "pretrained", "--out", str(tmp_path / "pre")]) == 0
    assert sorted(p.name for p in (tmp_path / "pre").iterdir()) == ["README.md", "config.json", "model.safetensors"]
    x = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = reference(x).argmax(1)
        for source in (ckpt_2d, tmp_path / "pre"):
            net = segzoo.from_pretrained(source)
            assert not net.training
            torch.testing.assert_close(net(x).argmax(1), expected, rtol=0, atol=0)


def test_registry_nets_round_trip_through_pretrained(tmp_path):
    net = segzoo.create_net("drnet_rot0_90", features=[8, 16, 32, 64, 128]).eval()
    net.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["registry_name"] == "drnet_rot0_90" and config[FORMAT_KEY] == 1
    loaded = segzoo.from_pretrained(tmp_path)
    assert loaded.registry_name == "drnet_rot0_90"
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x))
    # a config.json that names only the registered name builds the variant through create_net
    del config["class_path"]
    config["init_args"] = {"features": [8, 16, 32, 64, 128]}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with torch.no_grad():
        torch.testing.assert_close(segzoo.from_pretrained(tmp_path)(x), net(x))


# nets saved before the argument renames (one spelling per concept): (registry name, old init_args, today's init_args)
RENAMED = [
    (
        "drnet",
        {"features": [8, 16, 32, 64, 128], "kernel_sizes": [1, 3, 3, 1], "deep_dpfm_depth": 1},
        {"features": [8, 16, 32, 64, 128], "kernel_size": [1, 3, 3, 1], "dpfm_depth": 1},
    ),
    (
        "unet_pfm",
        {"features": [8, 16, 32, 64, 128], "kernel_sizes": [1, 3, 3, 1]},
        {"features": [8, 16, 32, 64, 128], "kernel_size": [1, 3, 3, 1]},
    ),
    (
        "denseaspp",
        {"growth_rate": 4, "block_config": [1, 2, 1, 1], "init_features": 8, "aspp_mid": 8, "aspp_out": 4},
        {"growth_rate": 4, "layers": [1, 2, 1, 1], "init_features": 8, "aspp_mid": 8, "aspp_out": 4},
    ),
    (
        "msdual",
        {"encoder_features": [8, 16, 32, 64], "encoder_layers": [1, 2, 1, 1], "features": 4},
        {"features": [8, 16, 32, 64], "layers": [1, 2, 1, 1], "attention_features": 4},
    ),
]


@pytest.mark.parametrize("by", ["class_path", "registry_name"])
@pytest.mark.parametrize(("name", "old", "new"), RENAMED, ids=[r[0] for r in RENAMED])
def test_configs_with_renamed_net_arguments_still_load(name, old, new, by, tmp_path):
    net = segzoo.create_net(name, **new).eval()
    net.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    saved = config["init_args"]
    assert not set(saved) & (set(old) - set(new)), "today's config uses today's names"
    # what the old code wrote: every constructor argument, under the old names (the defaults of the others kept)
    config["init_args"] = {**{k: v for k, v in saved.items() if k not in new}, **old}
    if by == "registry_name":
        del config["class_path"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = segzoo.from_pretrained(tmp_path)  # strict weight loading: same modules, same shapes
    assert loaded.init_config == net.init_config  # rebuilt under today's names
    x = torch.randn(1, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x), rtol=0, atol=0)


def test_a_config_with_todays_names_is_not_renamed(tmp_path):
    # MS-Dual's `features` is a renamed-from name too: a config in today's names must reach the constructor as is
    net = segzoo.create_net("msdual", features=[8, 16, 32, 64], layers=[1, 1, 1, 1], attention_features=4)
    net.save_pretrained(tmp_path)
    assert segzoo.from_pretrained(tmp_path).init_config == net.init_config


def test_new_preprocessor_types_register_in_one_line(monkeypatch):
    from segzoo import checkpoint

    class Slices:
        def __init__(self, size, orientation=None):
            self.size, self.orientation = size, orientation

        def to_dict(self):
            return {"size": self.size, "orientation": self.orientation}

        @classmethod
        def from_dict(cls, d):
            return cls(**d)

    monkeypatch.setattr(checkpoint, "PREPROCESSORS", dict(checkpoint.PREPROCESSORS))
    with pytest.raises(TypeError, match="register_preprocessor"):
        checkpoint.preprocessor_config(Slices([4, 4]))
    register_preprocessor("slice2d", Slices)
    config = checkpoint.preprocessor_config(Slices([4, 4], orientation={"axes": "RAS"}))
    assert config == {"type": "slice2d", "size": [4, 4], "orientation": {"axes": "RAS"}}
    rebuilt = checkpoint.build_preprocessor(config)
    assert isinstance(rebuilt, Slices) and rebuilt.orientation == {"axes": "RAS"}
    # extra keys of a CT record (e.g. an orientation another version adds) reach from_dict untouched
    seen = {}
    monkeypatch.setattr(CTPreprocessor, "from_dict", classmethod(lambda cls, d: seen.update(d) or PRE))
    checkpoint.build_preprocessor({"type": "ct", **PRE.to_dict(), "orientation": [2, 1, 0]})
    assert seen["orientation"] == [2, 1, 0] and "type" not in seen


def test_postprocess_arguments_are_recorded_generically():
    class Post(KiTSPostprocess):  # a switch added later, kept as an attribute: recorded with no change elsewhere
        def __init__(self, fill_holes: bool = False, **kwargs) -> None:
            super().__init__(**kwargs)
            self.fill_holes = fill_holes

    fmt = checkpoint_format(segzoo.create_net("mss_unet3d_small"), postprocess=Post(fill_holes=True, connectivity=6))
    assert fmt["postprocess"]["init_args"]["fill_holes"] is True
    assert fmt["postprocess"]["init_args"]["connectivity"] == 6

    class Lossy(KiTSPostprocess):  # a switch that is not kept: refused at save time rather than silently dropped
        def __init__(self, hidden: int = 1) -> None:
            super().__init__()

    with pytest.raises(TypeError, match="hidden"):
        checkpoint_format(segzoo.create_net("mss_unet3d_small"), postprocess=Lossy())


# ---------------------------------------------------------------------------------------------------- payloads
class Payload:
    """Unpickling this runs ``touch MARKER``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _plain_pickle(path, marker, protocol):
    path.write_bytes(pickle.dumps({"state_dict": {}, "segzoo_format": {"version": 1}, "x": Payload(marker)}, protocol))


def _payload_file(kind: str, tmp: Path, marker: Path, request) -> Path:
    path = tmp / f"{kind}.ckpt"
    if kind.startswith("pickle_p"):
        _plain_pickle(path, marker, int(kind[-1]))
    elif kind == "zip":
        torch.save({"state_dict": {}, "payload": Payload(marker)}, path)
    else:  # a real `segzoo fit` checkpoint with one more hyper-parameter
        raw = torch.load(request.getfixturevalue("ckpt_3d"), map_location="cpu", weights_only=True)
        raw["hyper_parameters"] = {"lr": 0.01, "net": Payload(marker)}
        torch.save(raw, path)
    return path


def _one_error_line(capsys, cmd: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"segzoo {cmd}: error: "), err
    return err


KINDS = ["pickle_p2", "pickle_p5", "zip", pytest.param("real_hparams", marks=pytest.mark.slow)]


@pytest.mark.parametrize("kind", KINDS)
def test_pickle_payloads_are_refused_by_infer_export_and_from_pretrained(kind, image, tmp_path, capsys, request):
    marker = tmp_path / "MARKER"
    evil = _payload_file(kind, tmp_path, marker, request)
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(["infer", "--ckpt", str(evil), "--input", str(image), "--output", str(out)]) == 2
    err = _one_error_line(capsys, "infer")
    assert str(evil) in err
    assert ("refusing to unpickle" in err) if kind != "pickle_p5" else ("cannot read checkpoint" in err)
    if kind != "pickle_p5":
        assert "'posix.system'" in err and "--trust-checkpoint" in err
    assert main(["export", "--ckpt", str(evil), "--format", "pretrained", "--out", str(out)]) == 2
    assert str(evil) in _one_error_line(capsys, "export")
    with pytest.raises(CheckpointError) as info:
        segzoo.from_pretrained(evil)
    assert "\n" not in str(info.value) and str(evil) in str(info.value)
    assert not marker.exists(), "the payload ran"
    assert not out.exists(), "something was written to the output folder"


@pytest.mark.slow
def test_trust_checkpoint_is_an_explicit_opt_in(image, tmp_path, request):
    marker = tmp_path / "MARKER"
    evil = _payload_file("real_hparams", tmp_path, marker, request)
    with pytest.warns(UntrustedCheckpointWarning, match="posix.system"):
        loaded = load_checkpoint(evil, trust=True)
    assert marker.exists()  # unpickling ran the file's code: that is what the flag is for
    marker.unlink()
    assert loaded.format["net"]["class_path"] == "segzoo.nets.mss_unet.MSSUNet"
    out = tmp_path / "out"
    with pytest.warns(UntrustedCheckpointWarning):
        argv = ["infer", "--ckpt", str(evil), "--input", str(image), "--output", str(out)]
        assert main([*argv, "--trust-checkpoint", "--no-tta"]) == 0
    assert (out / "ct_a.nii.gz").is_file()


@pytest.mark.slow
def test_infer_refusal_is_one_line_on_real_stderr(image, tmp_path, request):
    marker = tmp_path / "MARKER"
    evil = _payload_file("zip", tmp_path, marker, request)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), str(Path(__file__).parent)])}
    argv = ["infer", "--ckpt", str(evil), "--input", str(image), "--output", str(out)]
    run = subprocess.run([sys.executable, "-m", "segzoo", *argv], capture_output=True, text=True, env=env)
    assert run.returncode == 2
    assert len(run.stderr.strip().splitlines()) == 1 and "Traceback" not in run.stderr, run.stderr
    assert str(evil) in run.stderr and "refusing to unpickle" in run.stderr
    assert not marker.exists() and not out.exists()


@pytest.mark.slow
def test_fit_resume_refuses_a_payload(tmp_path, capsys, request):
    marker = tmp_path / "MARKER"
    evil = _payload_file("real_hparams", tmp_path, marker, request)
    (tmp_path / "fit.yaml").write_text(FIT_3D)
    argv = ["fit", "--config", str(tmp_path / "fit.yaml"), "--trainer.default_root_dir", str(tmp_path / "run")]
    capsys.readouterr()
    assert main([*argv, "--ckpt_path", str(evil)]) == 2
    err = _one_error_line(capsys, "fit")
    assert str(evil) in err and "--weights_only false" in err
    assert not marker.exists()


# ------------------------------------------------------------------------------------------- config.json payloads
CALLS = {
    "subprocess.run": {"args": ["touch", "MARKER"]},
    "os.system": {"command": "touch MARKER"},
    "builtins.eval": {"source": "open('MARKER', 'w')"},
}


@pytest.fixture
def pretrained(tmp_path):
    net = segzoo.create_net("mss_unet3d_small").eval()
    return net.save_pretrained(tmp_path / "pretrained")


def _rewrite(path: Path, marker: Path, edit) -> None:
    config = json.loads(path.read_text()) if path.is_file() else {}
    edit(config)
    path.write_text(json.dumps(config).replace("MARKER", str(marker)))


@pytest.mark.parametrize("class_path", list(CALLS))
@pytest.mark.parametrize("where", ["net", "postprocess", "inferer"])
def test_config_naming_other_code_is_refused(pretrained, class_path, where, image, tmp_path, capsys, monkeypatch):
    marker = tmp_path / "MARKER"
    monkeypatch.chdir(tmp_path)  # a relative MARKER would land here
    entry = {"class_path": class_path, "init_args": CALLS[class_path]}
    if where == "net":
        culprit = pretrained / "config.json"
        _rewrite(culprit, marker, lambda c: c.update(entry))
        expected = f"refusing net class '{class_path}'"
    else:
        culprit = pretrained
        inference = {"inferer": {"roi_size": [16, 32, 32]}, "postprocess": None}
        inference[where] = {**entry, "roi_size": [16, 32, 32]} if where == "inferer" else entry
        _rewrite(pretrained / "inference.json", marker, lambda c: c.update(inference))
        expected = f"refusing {'post-processing' if where == 'postprocess' else 'inferer'} class '{class_path}'"
    out = tmp_path / "out"
    capsys.readouterr()
    if where != "inferer":  # segzoo infer builds its own sliding-window inferer from the recorded window size
        assert main(["infer", "--ckpt", str(pretrained), "--input", str(image), "--output", str(out)]) == 2
        err = _one_error_line(capsys, "infer")
        assert str(culprit) in err and expected in err
    if where == "net":
        assert main(["export", "--ckpt", str(pretrained), "--format", "onnx", "--out", str(out / "x.onnx")]) == 2
        err = _one_error_line(capsys, "export")
        assert str(culprit) in err and expected in err
        with pytest.raises(CheckpointError, match=expected.replace("(", r"\(")) as info:
            segzoo.from_pretrained(pretrained)
        assert "\n" not in str(info.value)
    else:
        loaded = load_checkpoint(pretrained)
        with pytest.raises(CheckpointError, match=expected):
            loaded.postprocess() if where == "postprocess" else loaded.inferer()
    assert not marker.exists() and not (tmp_path / "MARKER").exists(), "the payload ran"
    assert not out.exists()


@pytest.mark.slow
def test_checkpoint_naming_other_code_is_refused(ckpt_3d, image, tmp_path, capsys):
    marker = tmp_path / "MARKER"
    raw = torch.load(ckpt_3d, map_location="cpu", weights_only=True)
    raw[FORMAT_KEY]["net"] = {"class_path": "subprocess.run", "init_args": {"args": ["touch", str(marker)]}}
    torch.save(raw, tmp_path / "evil.ckpt")
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(["infer", "--ckpt", str(tmp_path / "evil.ckpt"), "--input", str(image), "--output", str(out)]) == 2
    err = _one_error_line(capsys, "infer")
    assert str(tmp_path / "evil.ckpt") in err and "refusing net class 'subprocess.run'" in err
    assert not marker.exists() and not out.exists()


def test_unknown_preprocessor_type_is_refused(pretrained, image, tmp_path, capsys):
    (pretrained / "preprocessor.json").write_text(json.dumps({"type": "subprocess.run", "args": ["true"]}))
    capsys.readouterr()
    out = tmp_path / "out"
    argv = [
        "infer",
        "--ckpt",
        str(pretrained),
        "--input",
        str(image),
        "--output",
        str(out),
        "--roi-size",
        "8",
        "16",
        "16",
    ]
    assert main(argv) == 2
    err = _one_error_line(capsys, "infer")
    assert str(pretrained) in err and "refusing preprocessor type 'subprocess.run'" in err
    assert not out.exists()


@pytest.mark.parametrize(
    ("version", "expected"),
    [(2, "written by a newer segzoo (segzoo_format version 2"), ("1", "unknown segzoo_format version '1'")],
)
@pytest.mark.slow
def test_format_version_is_checked(ckpt_3d, pretrained, version, expected, tmp_path):
    raw = torch.load(ckpt_3d, map_location="cpu", weights_only=True)
    raw[FORMAT_KEY]["version"] = version
    torch.save(raw, tmp_path / "v.ckpt")
    with pytest.raises(CheckpointError, match=r"v\.ckpt: " + expected.replace("(", r"\(")):
        load_checkpoint(tmp_path / "v.ckpt")
    _rewrite(pretrained / "config.json", tmp_path, lambda c: c.update({FORMAT_KEY: version}))
    with pytest.raises(CheckpointError, match=r"config\.json: " + expected.replace("(", r"\(")):
        segzoo.from_pretrained(pretrained)


def test_net_resolution_imports_nothing_from_the_file(pretrained, monkeypatch):
    import importlib

    imported = []
    real = importlib.import_module
    monkeypatch.setattr(importlib, "import_module", lambda name, *a: imported.append(name) or real(name, *a))
    _rewrite(pretrained / "config.json", pretrained, lambda c: c.update({"class_path": "json.decoder.JSONDecoder"}))
    with pytest.raises(CheckpointError, match="refusing net class 'json.decoder.JSONDecoder'"):
        segzoo.from_pretrained(pretrained)
    assert "json.decoder" not in imported
    # a public re-export of an allowed class is accepted (it is the same class object)
    _rewrite(pretrained / "config.json", pretrained, lambda c: c.update({"class_path": "segzoo.nets.MSSUNet"}))
    assert isinstance(segzoo.from_pretrained(pretrained), segzoo.nets.MSSUNet)


def test_drnet_config_written_before_map_norm_act_rebuilds_its_net():
    """A DR-Net stored before the direction maps had norm + act (issue 25) has no ``map_norm_act`` in its config: it
    rebuilds with linear maps and its state dict loads; a few overrides (no full config) get today's default."""
    import segzoo
    from segzoo.nets import build_net

    old = segzoo.create_net("drnet", map_norm_act=False)
    cfg = old.init_config
    stored = {k: v for k, v in cfg["init_args"].items() if k != "map_norm_act"}
    rebuilt = build_net({"class_path": cfg["class_path"], "init_args": stored})
    rebuilt.load_state_dict(old.state_dict())  # strict: the same keys and shapes
    assert rebuilt.init_config["init_args"]["map_norm_act"] is False
    assert build_net({"registry_name": "drnet", "init_args": {"out_channels": 5}}).init_config["init_args"][
        "map_norm_act"
    ]


def test_infer_uses_the_window_stored_with_the_model(tmp_path):
    """The stored inferer's blending (mode, sigma, padding), overlap and windows per pass reach `segzoo infer`; flags
    override overlap / windows per pass only when given; mirroring stays the deployment flag."""
    from segzoo.inference.predict import load_predictor
    from segzoo.nets.pretrained import save_pretrained

    net = segzoo.create_net("mss_unet3d_small").eval()
    stored = SlidingWindowTTAInferer(
        roi_size=ROI, sw_batch_size=3, overlap=0.25, mode="constant", sigma_scale=0.2, mirror_axes=None
    )
    fmt = checkpoint_format(net, inferer=stored, preprocessor=PRE)
    folder = save_pretrained(LoadedModel(net, fmt, tmp_path), tmp_path / "m")
    p = load_predictor(folder, tta="none", crop="none")
    got = {k: getattr(p.inferer, k) for k in ("sw_batch_size", "overlap", "mode", "sigma_scale")}
    assert got == {"sw_batch_size": 3, "overlap": 0.25, "mode": "constant", "sigma_scale": 0.2}
    p = load_predictor(folder, tta="all", crop="none", overlap=0.5, sw_batch_size=1)
    assert (p.inferer.overlap, p.inferer.sw_batch_size, p.inferer.mode) == (0.5, 1, "constant")
    assert p.inferer.mirror_axes == (0, 1, 2)
    # a record whose window cannot be used is one error naming the folder
    inference = json.loads((folder / "inference.json").read_text())
    inference["inferer"]["init_args"]["overlap"] = 1.5
    (folder / "inference.json").write_text(json.dumps(inference))
    with pytest.raises(DataError, match=r"m: the stored sliding-window settings are not usable"):
        load_predictor(folder)
