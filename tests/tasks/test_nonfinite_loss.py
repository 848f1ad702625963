"""A NaN loss stops ``fit`` with :class:`NonFiniteLossError` naming the global step and the batch's case ids; from the
CLI, one error line."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from monai.losses import DiceCELoss
from toydata import EpochShuffleSampler, ToyDataModule

from segzoo.cli import main
from segzoo.losses import DeepSupervisionLoss
from segzoo.tasks import SegmentationTask
from segzoo.tasks.segmentation import NonFiniteLossError

pytestmark = pytest.mark.usefixtures("one_thread")


class NaNToy(ToyDataModule):
    """The toy data with one NaN voxel in the image of training case ``toy_0_1``."""

    def setup(self, stage: str) -> None:
        super().setup(stage)
        self.train.items[1]["image"][0, 2, 3, 4] = float("nan")


def _first_bad_step(batch_size: int = 2, cases: int = 4) -> int:
    order = list(EpochShuffleSampler(cases))  # epoch 0 order of the toy training cases
    return order.index(1) // batch_size


def test_nan_loss_stops_fit_naming_step_and_cases(tmp_path, tiny_net):
    torch.manual_seed(0)
    task = SegmentationTask(net=tiny_net, loss=DeepSupervisionLoss(DiceCELoss(to_onehot_y=True, softmax=True)))
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
          class_path: test_nonfinite_loss.NaNToy
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
