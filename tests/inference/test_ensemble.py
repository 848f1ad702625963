"""Ensembles in `segzoo infer`: two identical checkpoints predict what one does; two different ones the argmax of
their mean probabilities computed by hand; members that disagree are refused in one line; a cv run folder gives its
folds (``--folds`` picks) and its own post-processing decision."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from expect import expect_cli_error

from segzoo.checkpoint import checkpoint_format
from segzoo.cli import main
from segzoo.data.io import DataError, load_nifti, save_nifti
from segzoo.data.preprocessor import CTPreprocessor
from segzoo.data.slice2d import SlicePreprocessor
from segzoo.inference import KiTSPostprocess, SlidingWindowTTAInferer
from segzoo.inference.ensemble import (
    EnsemblePredictor,
    load_ensemble_predictor,
    load_members,
)
from segzoo.inference.labels import labels_on_original_grid
from segzoo.inference.predict import Predictor, load_predictor
from segzoo.nets import MSSUNet

pytestmark = pytest.mark.usefixtures("one_thread")

PRE = CTPreprocessor(clip_low=-1.0, clip_high=3.0, mean=0.5, std=0.7, target_spacing=(2.0, 1.5, 1.5))
ROI = [8, 16, 16]
INFER = ["--tta", "inplane", "--crop", "none", "--overlap", "0.25"]


def _ckpt(path: Path, seed: int, pre=PRE, out_channels: int = 3, in_channels: int = 1, post=None) -> Path:
    torch.manual_seed(seed)
    net = MSSUNet(3, in_channels, out_channels, kernel_size=[3, 3, 3], strides=[1, 2, 2], base_features=4)
    inferer = SlidingWindowTTAInferer(roi_size=ROI, mirror_axes=None)
    fmt = checkpoint_format(net, inferer, post, pre)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"segzoo_format": fmt, "state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}}, path)
    return path


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    rng = np.random.default_rng(0)
    volume = rng.normal(0.5, 1.0, (12, 40, 36)).astype(np.float32)
    volume[4:9, 10:30, 8:24] += 2.0
    return save_nifti(volume, np.diag([2.0, 1.5, 1.5, 1.0]), tmp_path_factory.mktemp("img") / "ct.nii.gz")


def _infer(ckpts, image, out, *extra) -> np.ndarray:
    args = ["infer", *(x for c in ckpts for x in ("--ckpt", str(c))), "--input", str(image), "--output", str(out)]
    assert main([*args, *INFER, *extra]) == 0
    return load_nifti(out / "ct.nii.gz")[0]


def _scores(ckpt: Path, volume: np.ndarray, spacing) -> torch.Tensor:
    """One member's mean TTA probabilities ``(K, *preprocessed)``, straight from its own predictor."""
    p = load_predictor(ckpt, tta="inplane", overlap=0.25, crop="none", postprocess=False)
    with torch.inference_mode():
        return p.inferer(p.prepare(volume, spacing), p.net)[0].clone()


def test_two_identical_checkpoints_equal_one(tmp_path, image):
    a = _ckpt(tmp_path / "a.ckpt", 1)
    one = _infer([a], image, tmp_path / "one")
    two = _infer([a, a], image, tmp_path / "two")
    np.testing.assert_array_equal(one, two)
    assert len(np.unique(one)) > 1  # a prediction with more than one label, so the comparison could fail


def test_two_different_checkpoints_average_their_probabilities(tmp_path, image):
    a, b = _ckpt(tmp_path / "a.ckpt", 1), _ckpt(tmp_path / "b.ckpt", 2)
    volume, affine = load_nifti(image)
    spacing = (2.0, 1.5, 1.5)  # the image's (RAS, axes already in the training orientation of an identity record)
    pa, pb = _scores(a, volume, spacing), _scores(b, volume, spacing)
    by_hand = labels_on_original_grid((pa + pb) / 2, volume.shape, PRE, None)
    alone = [labels_on_original_grid(p, volume.shape, PRE, None) for p in (pa, pb)]
    assert all((by_hand != x).any() for x in alone)  # the mean is neither member's answer
    members = load_members([a, b])
    predictor = load_ensemble_predictor(members, tta="inplane", overlap=0.25, crop="none", postprocess=False)
    assert isinstance(predictor, EnsemblePredictor) and len(predictor.members) == 2
    np.testing.assert_array_equal(predictor.predict_array(volume, spacing), by_hand)
    np.testing.assert_array_equal(_infer([a, b], image, tmp_path / "cli"), by_hand)  # the CLI writes the same


@pytest.mark.parametrize(
    "kind, expected",
    [
        ("preprocessing", "preprocessing: mean 0.5 vs 0.9"),
        ("labels", "labels: 3 vs 4"),
        ("channels", "channels: 1 vs 2"),
    ],
)
def test_members_that_disagree_are_refused_in_one_line(tmp_path, image, capsys, kind, expected):
    a = _ckpt(tmp_path / "a.ckpt", 1)
    other = {
        "preprocessing": {"pre": CTPreprocessor(-1.0, 3.0, 0.9, 0.7, target_spacing=(2.0, 1.5, 1.5))},
        "labels": {"out_channels": 4},
        "channels": {"in_channels": 2},
    }[kind]
    b = _ckpt(tmp_path / "b.ckpt", 2, **other)
    args = ["infer", "--ckpt", a, "--ckpt", b, "--input", image, "--output", tmp_path / "out"]
    expect_cli_error(args, capsys, b, "must agree", expected)
    assert not (tmp_path / "out").exists()


def test_post_processing_must_agree_or_be_off(tmp_path, image, capsys):
    a = _ckpt(tmp_path / "a.ckpt", 1, post=KiTSPostprocess(keep_largest=True))
    b = _ckpt(tmp_path / "b.ckpt", 2, post=KiTSPostprocess(keep_largest=False))
    args = ["infer", "--ckpt", a, "--ckpt", b, "--input", image, "--output", tmp_path / "out"]
    expect_cli_error(args, capsys, b, "post-processing", "--no-postprocess")
    _infer([a, b], image, tmp_path / "off", "--no-postprocess")


def test_cv_run_folder_gives_its_folds_and_its_decision(tmp_path, image, capsys):
    run = tmp_path / "run"
    members = [
        _ckpt(run / f"fold_{k}" / "checkpoints" / "last.ckpt", k, post=KiTSPostprocess(keep_largest=k == 0))
        for k in range(3)
    ]
    # no cv_metrics.json yet: every fold's last.ckpt, and their own (differing) post-processing
    assert [m.source for m in load_members([run])] == members
    np.testing.assert_array_equal(
        _infer([run], image, tmp_path / "f1", "--folds", "1"), _infer([members[1]], image, tmp_path / "m1")
    )
    expect_cli_error(
        ["infer", "--ckpt", run, "--folds", "0", "4", "--input", image, "--output", tmp_path / "x"],
        capsys,
        run,
        "fold(s) [4]",
        "holds folds [0, 1, 2]",
    )
    expect_cli_error(
        ["infer", "--ckpt", members[0], "--folds", "0", "--input", image, "--output", tmp_path / "x"],
        capsys,
        members[0],
        "--folds",
    )
    # segzoo cv's record: the checkpoints it scored and the post-processing decided on the out-of-fold predictions
    decided = KiTSPostprocess(keep_largest=True).with_steps([])
    record = {
        "folds": {str(k): {"checkpoint": f"fold_{k}/checkpoints/last.ckpt"} for k in range(3)},
        "postprocess": checkpoint_format(MSSUNet(3, 1, 3), None, decided, None)["postprocess"],
    }
    (run / "cv_metrics.json").write_text(json.dumps(record))
    loaded = load_members([run], folds=[0, 2])
    assert [m.source for m in loaded] == [members[0], members[2]]
    assert all(m.format["postprocess"] == record["postprocess"] for m in loaded)
    _infer([run], image, tmp_path / "all")  # members' own decisions differ; the run's is used: no refusal
    (run / "cv_metrics.json").write_text('{"folds": 3}')
    expect_cli_error(
        ["infer", "--ckpt", run, "--input", image, "--output", tmp_path / "y"],
        capsys,
        "cv_metrics.json",
        "not a segzoo cv record",
    )


def test_slice_ensemble_averages_softmax(tmp_path):
    """2D members run through the same EnsemblePredictor as 3D ones (MONAI's SliceInferer over the volume)."""
    from monai.inferers import SliceInferer

    pre = SlicePreprocessor("chaos", 1, (16, 16), "resize", sequence="T2SPIR")
    nets = []
    for seed in (3, 4):
        torch.manual_seed(seed)
        nets.append(torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.Tanh(), torch.nn.Conv2d(4, 5, 1)))
    inferer = SliceInferer(roi_size=(16, 16), sw_batch_size=4, spatial_dim=0)
    members = [Predictor(n.eval(), inferer, pre) for n in nets]
    volume = np.random.default_rng(1).normal(size=(3, 20, 24)).astype(np.float32)  # CHAOS: (S, H, W)
    x = torch.from_numpy(pre.preprocess(volume))[None]
    with torch.inference_mode():
        mean = sum(torch.softmax(m.inferer(x, m.net), dim=1) for m in members) / 2
    by_hand = pre.restore(mean[0], volume.shape)
    assert all((by_hand != m.predict_array(volume, (1, 1, 1))).any() for m in members)
    ensemble = EnsemblePredictor(nets[0], inferer, pre, members=members)
    np.testing.assert_array_equal(ensemble.predict_array(volume, (1, 1, 1)), by_hand)
    same = EnsemblePredictor(nets[0], inferer, pre, members=[members[0], members[0]])
    np.testing.assert_array_equal(same.predict_array(volume, (1, 1, 1)), members[0].predict_array(volume, (1, 1, 1)))


def test_an_empty_ensemble_is_refused():
    from segzoo.inference.ensemble import check_members

    with pytest.raises(DataError, match="at least one"):
        check_members([])
