"""Numerical guards and nothing half-written (issue 6).

- a NaN loss stops ``fit`` with :class:`NonFiniteLossError` naming the global step and the batch's case ids;
- constant-intensity inputs (std 0) normalise to finite values (CT preprocessing, CHAOS/BraTS z-score);
- an interrupted ``segzoo infer`` leaves no partial or temporary file, ``--continue`` predicts only the missing cases;
- a changed source file invalidates its preprocessing-cache entry (and only its).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from monai.losses import DiceCELoss
from toydata import EpochShuffleSampler, ToyDataModule

from segzoo.cli import main
from segzoo.data.datamodule_2d import zscore
from segzoo.data.io import load_nifti, save_nifti
from segzoo.data.kits19 import KiTS19Case
from segzoo.data.preprocessing import CTPreprocessor, cache_paths, compute_fingerprint, preprocess_dataset
from segzoo.inference.predict import Predictor
from segzoo.losses import DeepSupervisionLoss
from segzoo.nets import MSSUNet
from segzoo.tasks import SegmentationTask
from segzoo.tasks.segmentation import NonFiniteLossError

SHAPE = (6, 8, 8)
AFFINE = np.diag([3.0, 0.8, 0.8, 1.0])


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_net() -> MSSUNet:
    return MSSUNet(kernel_size=[3, 3, 3], strides=[1, 2, 2], base_features=4, out_channels=3)


# ------------------------------------------------------------------------------------------------------ NaN loss
class NaNToy(ToyDataModule):
    """The toy data with one NaN voxel in the image of training case ``toy_0_1``."""

    def setup(self, stage: str) -> None:
        super().setup(stage)
        self.train.items[1]["image"][0, 2, 3, 4] = float("nan")


def _first_bad_step(batch_size: int = 2, cases: int = 4) -> int:
    order = list(EpochShuffleSampler(cases))  # epoch 0 order of the toy training cases
    return order.index(1) // batch_size


def test_nan_loss_stops_fit_naming_step_and_cases(tmp_path):
    torch.manual_seed(0)
    task = SegmentationTask(net=tiny_net(), loss=DeepSupervisionLoss(DiceCELoss(to_onehot_y=True, softmax=True)))
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
    )
    with pytest.raises(NonFiniteLossError) as info:
        trainer.fit(task, datamodule=NaNToy(shape=(8, 16, 16)))
    msg = str(info.value)
    step = _first_bad_step()
    assert f"at global step {step}," in msg and "toy_0_1" in msg and "nan" in msg.lower()
    assert trainer.global_step == step  # stopped there: no optimizer step on the NaN batch


def test_nan_loss_cli_is_one_line(tmp_path, capsys, write_config):
    config = write_config(  # net and loss: the tiny ones of conftest.write_config
        """
        trainer: {max_epochs: 1, logger: false, accelerator: cpu, enable_progress_bar: false,
                  enable_model_summary: false, enable_checkpointing: false, num_sanity_val_steps: 0}
        data:
          class_path: test_guards.NaNToy
          init_args: {shape: [8, 16, 16]}
        """,
        "nan.yaml",
    )
    capsys.readouterr()
    assert main(["fit", "--config", str(config), "--trainer.default_root_dir", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if ": error:" in line]
    assert "Traceback" not in err and len(errors) == 1
    assert errors[0].startswith("segzoo fit: error: non-finite training loss") and "toy_0_1" in errors[0]


# ------------------------------------------------------------------------------------------- constant intensities
def test_ct_preprocessor_constant_intensity_fingerprint(tmp_path):
    folder = tmp_path / "case_00000"
    label = np.zeros(SHAPE, np.uint8)
    label[2:4, 2:6, 2:6] = 1
    save_nifti(np.full(SHAPE, 40.0, np.float32), AFFINE, folder / "imaging.nii.gz")  # std 0 everywhere
    save_nifti(label, AFFINE, folder / "segmentation.nii.gz")
    fp = compute_fingerprint([KiTS19Case("case_00000", folder / "imaging.nii.gz", folder / "segmentation.nii.gz")])
    assert fp["foreground"]["std"] == 0.0
    pre = CTPreprocessor.from_fingerprint(fp, target_spacing=(3.0, 0.8, 0.8))
    for image in (np.full(SHAPE, 40.0), np.full(SHAPE, -1000.0), np.linspace(-500, 500, 384).reshape(SHAPE)):
        out = pre.preprocess(image, (3.0, 0.8, 0.8))
        assert out.shape == (1, *SHAPE) and np.isfinite(out).all()
        assert np.array_equal(out, np.zeros_like(out))  # clipped to the one value, which is the mean


def test_ct_preprocessor_std_zero_and_resampling_stay_finite():
    pre = CTPreprocessor(-100.0, 300.0, 120.0, 0.0, target_spacing=(2.0, 1.0, 1.0))
    out = pre.preprocess(np.full((5, 9, 9), 120.0), (3.0, 0.8, 0.8))
    assert out.shape == (1, *pre.new_shape((5, 9, 9), (3.0, 0.8, 0.8))) and np.isfinite(out).all()
    assert np.abs(out).max() == 0.0


@pytest.mark.parametrize("nonzero", [False, True], ids=["chaos", "brats"])
def test_zscore_constant_channels(nonzero):
    image = np.stack(
        [
            np.full((3, 4, 4), 300.0, np.float32),  # constant MR signal
            np.zeros((3, 4, 4), np.float32),  # an empty channel
            np.arange(48, dtype=np.float32).reshape(3, 4, 4),  # an ordinary one
        ]
    )
    out = zscore(image, nonzero=nonzero)
    assert np.isfinite(out).all()
    assert np.array_equal(out[0], np.zeros((3, 4, 4))) and np.array_equal(out[1], np.zeros((3, 4, 4)))
    values = image[2][image[2] != 0] if nonzero else image[2].ravel()
    expected = (image[2] - values.mean()) / values.std()
    if nonzero:
        expected[image[2] == 0] = 0
    np.testing.assert_allclose(out[2], expected, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------- infer: atomic, --continue
@pytest.fixture
def infer_setup(tmp_path):
    torch.manual_seed(0)
    model = tmp_path / "model"
    tiny_net().save_pretrained(model)
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
    real = Predictor.predict_file

    def counting(self, image_path, output_path):
        calls.append(Path(image_path).name)
        return real(self, image_path, output_path)

    monkeypatch.setattr(Predictor, "predict_file", counting)
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


# ------------------------------------------------------------------------------------------- stale cache entries
def test_changed_source_file_invalidates_its_cache_entry(tmp_path):
    rng = np.random.default_rng(0)
    cases = []
    for k in range(2):
        folder = tmp_path / "data" / f"case_{k:05d}"
        label = np.zeros(SHAPE, np.uint8)
        label[2:4, 2:6, 2:6] = 1
        save_nifti(rng.normal(100, 20, SHAPE).astype(np.float32), AFFINE, folder / "imaging.nii.gz")
        save_nifti(label, AFFINE, folder / "segmentation.nii.gz")
        cases.append(KiTS19Case(folder.name, folder / "imaging.nii.gz", folder / "segmentation.nii.gz"))
    pre = CTPreprocessor(0.0, 200.0, 100.0, 20.0, target_spacing=(3.0, 0.8, 0.8))  # no resampling
    cache = tmp_path / "cache"
    preprocess_dataset(cases, cache, pre, progress=False)
    p0, p1 = cache_paths(cache, "case_00000"), cache_paths(cache, "case_00001")
    untouched = {p: p.stat().st_mtime_ns for p in p1.values()}

    # the image of case 0 replaced by other data (same shape and size on disk class: only content and mtime differ)
    new = np.full(SHAPE, 150.0, np.float32)
    save_nifti(new, AFFINE, cases[0].image)
    preprocess_dataset(cases, cache, pre, progress=False)
    np.testing.assert_allclose(np.load(p0["image"])[0], pre.normalize(new))
    assert {p: p.stat().st_mtime_ns for p in p1.values()} == untouched

    # a touch alone (same bytes, new mtime) also counts as a change: size+mtime key, no stale cache served
    before = p0["image"].stat().st_mtime_ns
    stat = cases[0].label.stat()
    os.utime(cases[0].label, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    preprocess_dataset(cases, cache, pre, progress=False)
    assert p0["image"].stat().st_mtime_ns != before
    assert {p: p.stat().st_mtime_ns for p in p1.values()} == untouched
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no temporary files left


# ------------------------------------------------------------------------------------------- atomic writes: modes
def test_atomic_outputs_get_normal_permissions(tmp_path):
    from segzoo.utils import _UMASK, atomic_dir, atomic_write_text

    path = atomic_write_text(tmp_path / "a" / "out.json", "{}")
    assert path.read_text() == "{}"
    assert path.stat().st_mode & 0o777 == 0o666 & ~_UMASK  # not mkstemp's private 0o600
    with atomic_dir(tmp_path / "case") as folder:
        (folder / "x.txt").write_text("x")
    assert (tmp_path / "case").stat().st_mode & 0o777 == 0o777 & ~_UMASK  # not mkdtemp's 0o700
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left behind


# ---------------------------------------------------------------------------------------------- CPU allocator
@pytest.mark.parametrize(
    "env, applied",
    [({}, True), ({"MALLOC_MMAP_THRESHOLD_": "65536"}, False), ({"LD_PRELOAD": "libjemalloc.so.2"}, False)],
)
def test_tune_cpu_allocator_respects_the_users_choice(env, applied):
    import subprocess
    import sys

    if not sys.platform.startswith("linux"):
        pytest.skip("glibc only")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "SEGZOO_CPU")) and k != "LD_PRELOAD"}
    # a preload library that is not installed only makes ld.so print a warning; the variable is what counts
    code = "from segzoo.utils import tune_cpu_allocator; print(tune_cpu_allocator())"
    out = subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(applied)
