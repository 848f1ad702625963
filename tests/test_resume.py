"""Resume exactness: fit 2 epochs + resume from last.ckpt to 4 epochs == fit 4 epochs uninterrupted (issue 6).

Exactness needs the training batches of epochs 3-4 to be the same in both runs. A ``shuffle=True`` DataLoader draws its
order from the global torch RNG, which no checkpoint holds, so the toy datamodule shuffles with
``toydata.EpochShuffleSampler`` (order a function of seed and epoch; Lightning calls ``set_epoch`` every epoch), and
``KiTS19DataModule`` seeds every patch and its augmentation by (seed, epoch, rank, position).
"""

import textwrap

import pytest
import torch

from segzoo.cli import main

CONFIG = textwrap.dedent(
    """
    seed_everything: 0
    trainer:
      max_epochs: 4
      logger: false
      enable_progress_bar: false
      enable_model_summary: false
      accelerator: cpu
      deterministic: true
      num_sanity_val_steps: 0
      limit_val_batches: 0
      callbacks:
        - class_path: segzoo.tasks.RunCheckpoint
          init_args: {save_last: true}
    model:  # net and loss: the tiny ones of conftest.write_config
      optimizer:
        class_path: torch.optim.Adam
        init_args: {lr: 0.01}
      scheduler:
        class_path: torch.optim.lr_scheduler.StepLR
        init_args: {step_size: 1, gamma: 0.5}
    """
)
TOY_DATA = """
    data:
      class_path: toydata.ToyDataModule
      init_args: {shape: [8, 16, 16], train_cases: 6, batch_size: 2}
"""
KITS_DATA = """
    data:
      class_path: segzoo.data.KiTS19DataModule
      init_args:
        data_dir: DATA_DIR
        target_spacing: [3.0, 2.5, 2.5]
        patch_size: [8, 32, 32]
        batch_size: 2
        iterations_per_epoch: 3
        num_val_cases: 1
        num_workers: 0
        synthetic_cases: 3
        augment: {rotate_prob: 0.5, elastic_prob: 0.5}
"""


pytestmark = pytest.mark.usefixtures("one_thread")


def _fit(config, run, *extra):
    argv = ["fit", "--config", str(config), "--trainer.default_root_dir", str(run), *extra]
    assert main(argv) == 0
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)


CHAOS_DATA = """
    data:
      class_path: segzoo.data.datamodule_2d.CHAOSDataModule
      init_args:
        data_dir: DATA_DIR
        image_size: [32, 32]
        batch_size: 4
        train_fraction: 0.67
        synthetic_cases: 3
        augment: true
"""


@pytest.mark.slow
@pytest.mark.parametrize("data", ["toy", "kits19", "chaos"])
def test_resume_matches_uninterrupted_run(tmp_path, data, write_config):
    extra = {"toy": TOY_DATA, "kits19": KITS_DATA, "chaos": CHAOS_DATA}[data].replace("DATA_DIR", str(tmp_path / data))
    overrides = {}
    if data == "chaos":  # 2D slices, 5 classes; 3 steps per epoch out of a shuffled epoch of slices
        overrides = {"model": {"net": {"init_args": {"out_channels": 5, "spatial_dims": 2}}},
                     "trainer": {"limit_train_batches": 3}}  # fmt: skip
    config = write_config(CONFIG + textwrap.dedent(extra), **overrides)
    full = _fit(config, tmp_path / "full")

    half = _fit(config, tmp_path / "half", "--trainer.max_epochs", "2")
    assert half["global_step"] == 2 * 3 and half["epoch"] == 1
    last = tmp_path / "half" / "checkpoints" / "last.ckpt"
    resumed = _fit(config, tmp_path / "half", "--ckpt_path", str(last))

    # 3 steps per epoch (toy: 6 cases / batch 2; kits19: iterations_per_epoch; chaos: limit_train_batches)
    assert resumed["global_step"] == full["global_step"] == 4 * 3
    assert resumed["epoch"] == full["epoch"] == 3

    # optimizer state: Adam's step count continued from the checkpoint (not restarted at 0), moments equal
    opt_full, opt_res = full["optimizer_states"][0], resumed["optimizer_states"][0]
    assert set(opt_full["state"]) == set(opt_res["state"])
    for k, s in opt_full["state"].items():
        assert float(s["step"]) == float(opt_res["state"][k]["step"]) == 12
        torch.testing.assert_close(s["exp_avg"], opt_res["state"][k]["exp_avg"], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(s["exp_avg_sq"], opt_res["state"][k]["exp_avg_sq"], rtol=1e-5, atol=1e-9)

    # LR scheduler: StepLR halved the LR once per epoch in both runs: 0.01 * 0.5**4
    sched_full, sched_res = full["lr_schedulers"][0], resumed["lr_schedulers"][0]
    assert sched_full["last_epoch"] == sched_res["last_epoch"] == 4
    assert sched_full["_last_lr"] == pytest.approx([0.01 * 0.5**4])
    assert sched_res["_last_lr"] == pytest.approx([0.01 * 0.5**4])
    assert opt_res["param_groups"][0]["lr"] == pytest.approx(0.01 * 0.5**4)

    # the weights: same to float round-off (a different batch order in epochs 3-4 changes them by ~1e-2)
    w_full, w_res = full["state_dict"], resumed["state_dict"]
    assert w_full.keys() == w_res.keys()
    for k in w_full:
        torch.testing.assert_close(w_res[k], w_full[k], rtol=1e-5, atol=1e-6, msg=f"weight {k} differs after resume")
    # and training did move them: the check is not comparing two untouched initialisations
    w_half = half["state_dict"]
    assert any(not torch.allclose(w_half[k], w_full[k]) for k in w_full if w_full[k].is_floating_point())
