"""Evaluation protocol of SegmentationTask: post-processing decided on validation only, stored, used by test;
metrics with and without post-processing; scoring on the original grid; val loss; MovingAverage and LRFloorStop."""

from __future__ import annotations

import json
from types import SimpleNamespace

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from segzoo.inference.postprocess import KiTSPostprocess
from segzoo.losses import CELoss
from segzoo.metrics import KiTS19Metric
from segzoo.tasks import LRFloorStop, MovingAverage, SegmentationTask


class EchoNet(nn.Module):
    """Predicts the label map it is given as image: logits = 10 x one-hot(image)."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        onehot = torch.nn.functional.one_hot(x[:, 0].long(), 3).movedim(-1, 1).float()
        return 10.0 * onehot + 0.0 * self.dummy


def two_kidneys() -> np.ndarray:
    a = np.zeros((16, 16, 24), dtype=np.int64)
    a[2:8, 2:8, 2:8] = 1
    a[2:8, 2:8, 14:20] = 1
    a[4:7, 4:7, 19:21] = 2
    return a


def batch(case_id: str, pred: np.ndarray, truth: np.ndarray) -> dict:
    return {
        "image": torch.from_numpy(pred).float()[None, None],
        "label": torch.from_numpy(truth)[None, None],
        "case_id": [case_id],
        "spacing": torch.ones(1, 3),
    }


def make_task(root) -> tuple[SegmentationTask, pl.Trainer]:
    task = SegmentationTask(
        net=EchoNet(),
        loss=CELoss(),
        metric=KiTS19Metric(),
        postprocess=KiTSPostprocess(keep_largest=True),
        score_key="composite/dice",
    )
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, default_root_dir=str(root))
    return task, trainer


def test_postprocess_decided_on_validation_stored_and_used_by_test(tmp_path):
    truth = two_kidneys()
    with_fp = truth.copy()
    with_fp[12:14, 12:14, 10:12] = 1  # a small false positive: removing small organs helps
    task, trainer = make_task(tmp_path)
    val = DataLoader([batch("v0", with_fp, truth), batch("v1", truth, truth)], batch_size=None)
    trainer.validate(task, dataloaders=val)
    # remove_detached_tumour and keep_largest change nothing here (a tie): only remove_small is kept
    assert task.postprocess.steps == ("remove_small",)
    assert task.postprocess_decision.tolist() == [1, 0, 1, 0]
    summary = json.loads((tmp_path / "metrics.json").read_text())
    assert summary["postprocess"]["steps"] == ["remove_small"]
    assert summary["mean"]["composite/dice"] == pytest.approx(1.0)
    assert summary["without_postprocess"]["mean"]["composite/dice"] < 1.0
    decisions = {d["step"]: d for d in summary["postprocess"]["validation"]["decisions"]}
    assert decisions["remove_small"]["kept"] and not decisions["keep_largest"]["kept"]
    assert "val/loss" in trainer.callback_metrics and float(trainer.callback_metrics["val/loss"]) > 0

    # test: the decision is used as is, never re-made on test cases (here keep_largest would help, but stays off)
    three = truth.copy()
    three[10:16, 10:16, 2:8] = 1  # a third "kidney" (false positive) of the same size
    trainer.test(task, dataloaders=DataLoader([batch("t0", three, truth)], batch_size=None))
    assert task.postprocess.steps == ("remove_small",)
    test_summary = json.loads((tmp_path / "metrics.json").read_text())
    assert test_summary["mean"]["kidney/dice"] < 1.0  # the false positive is kept: removing it was not validated

    # the decision travels in the state dict (any checkpoint format): a fresh task adopts it before testing
    fresh, trainer2 = make_task(tmp_path / "fresh")
    fresh.load_state_dict(task.state_dict())
    trainer2.test(fresh, dataloaders=DataLoader([batch("t0", with_fp, truth)], batch_size=None))
    assert fresh.postprocess.steps == ("remove_small",)
    assert json.loads((tmp_path / "fresh" / "metrics.json").read_text())["mean"]["composite/dice"] == pytest.approx(1.0)


def test_original_grid_batches_are_scored_against_the_stored_label(tmp_path):
    """With ``original_label`` the prediction is restored (here: no preprocessor, same grid) and scored on it."""
    truth = two_kidneys()
    task, trainer = make_task(tmp_path)
    b = batch("v0", truth, np.zeros_like(truth))  # the resampled label is wrong on purpose ...
    b["original_label"] = torch.from_numpy(truth)[None]  # ... the stored annotation is right
    b["original_shape"] = torch.tensor([list(truth.shape)])
    trainer.validate(task, dataloaders=DataLoader([b], batch_size=None))
    summary = json.loads((tmp_path / "metrics.json").read_text())
    assert summary["scored_on"] == "original grid" and summary["mean"]["composite/dice"] == pytest.approx(1.0)


def test_moving_average_callback():
    cb = MovingAverage(monitor="val/loss", window=2)
    logged = []
    logger = SimpleNamespace(log_metrics=lambda m, step: logged.append((m, step)))
    trainer = SimpleNamespace(sanity_checking=False, callback_metrics={}, loggers=[logger], global_step=7)
    for v in (4.0, 2.0, 1.0):
        trainer.callback_metrics["val/loss"] = torch.tensor(v)
        cb.on_validation_end(trainer, None)
    assert float(trainer.callback_metrics["val/loss_avg"]) == pytest.approx(1.5)  # mean of the last 2
    assert [m["val/loss_avg"] for m, _ in logged] == [4.0, 3.0, 1.5]
    restored = MovingAverage(window=2)
    restored.load_state_dict(cb.state_dict())
    assert restored.history == [4.0, 2.0, 1.0]
    with pytest.raises(ValueError, match="window"):
        MovingAverage(window=0)


def test_lr_floor_stop():
    param = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1e-3)
    trainer = SimpleNamespace(optimizers=[opt], should_stop=False, current_epoch=3)
    cb = LRFloorStop(min_lr=1e-4)
    cb.on_train_epoch_end(trainer, None)
    assert not trainer.should_stop
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.1, patience=0, min_lr=1e-4)
    for _ in range(3):
        sched.step(1.0)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-4)
    cb.on_train_epoch_end(trainer, None)
    assert trainer.should_stop and cb.stopped_epoch == 3
    with pytest.raises(ValueError, match="min_lr"):
        LRFloorStop(min_lr=0.0)
