"""A class the net cannot learn is named in one warning line at the end of validation and of the fit (issue 25)."""

from __future__ import annotations

import json
import logging
from functools import partial

import lightning.pytorch as pl
import pytest
import torch
from conftest import TINY_NET
from monai.losses import DiceCELoss
from toydata import ToyDataModule

from segzoo.losses import DeepSupervisionLoss
from segzoo.metrics import KiTS19Metric
from segzoo.nets import build_net
from segzoo.tasks import SegmentationTask

pytestmark = pytest.mark.usefixtures("one_thread")

LOGGER = "segzoo.tasks.segmentation"


class NoTumourInTraining(ToyDataModule):
    """The toy blobs with the tumour (label 2) relabelled kidney in every training case, kept in validation: the net
    never sees class 2, so it cannot learn it, whatever the budget."""

    def setup(self, stage: str) -> None:
        super().setup(stage)
        g = torch.Generator().manual_seed(0)
        for item in self.train.items:
            item["label"][item["label"] == 2] = 1
            item["image"] = item["label"].float() + 0.3 * torch.randn(item["label"].shape, generator=g)


def _fit(tmp_path, datamodule: ToyDataModule, epochs: int = 3) -> SegmentationTask:
    torch.manual_seed(0)
    task = SegmentationTask(
        net=build_net(TINY_NET),
        loss=DeepSupervisionLoss(DiceCELoss(to_onehot_y=True, softmax=True)),
        metric=KiTS19Metric(),
        optimizer=partial(torch.optim.Adam, lr=1e-2),
    )
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
    )
    trainer.fit(task, datamodule=datamodule)
    return task


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]


def test_unlearnable_class_is_named_in_one_line(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger=LOGGER)
    task = _fit(tmp_path, NoTumourInTraining(shape=(8, 16, 16), train_cases=4, val_cases=3))
    line = "segzoo: dead class on 3 validation cases: class 2 'tumour' was never predicted (present in 3)"
    # logged at the first validation (where the untrained net may still put a few voxels there: then "Dice 0"), not
    # again while the set of dead classes stays the same, restated when the fit ends
    first, last = _warnings(caplog)
    assert first.startswith("segzoo: dead class on 3 validation cases: class 2 'tumour' ") and "\n" not in first
    assert last == "segzoo fit ended with " + line.removeprefix("segzoo: ")
    assert task.dead_class_warning == line
    assert task.last_summary["mean"]["kidney/dice"] > 0.3  # the rest was learned: only the tumour is named
    summary = json.loads((tmp_path / "metrics.json").read_text())
    assert summary["dead_classes"] == ["class 2 'tumour' was never predicted (present in 3)"]


def test_learnable_classes_give_no_warning(tmp_path, caplog):
    # the same budget on the toy data with the tumour in training: every class is predicted, nothing is logged
    caplog.set_level(logging.WARNING, logger=LOGGER)
    task = _fit(tmp_path, ToyDataModule(shape=(8, 16, 16), train_cases=4, val_cases=3))
    assert task.last_summary["mean"]["tumour/dice"] > 0
    assert _warnings(caplog) == [] and task.dead_class_warning is None
    assert json.loads((tmp_path / "metrics.json").read_text())["dead_classes"] == []
