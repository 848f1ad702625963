"""Every YAML under configs/ parses and instantiates; the DR-Net configs train end to end on tiny synthetic data."""

import json
from pathlib import Path

import pytest
import torch
from monai.inferers import SliceInferer

import segzoo
from segzoo.cli import SegzooCLI, main

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
CONFIGS = sorted(CONFIG_DIR.rglob("*.yaml"))
ZOO_2D = sorted(p for p in CONFIGS if p.parent != CONFIG_DIR)


def _instantiate(config: Path, tmp_path: Path) -> SegzooCLI:
    # run=False parses the file and builds trainer, task (net, loss, inferer, metric) and datamodule without fitting
    return SegzooCLI(args=["--config", str(config), "--trainer.default_root_dir", str(tmp_path)], run=False)


def test_config_folder_layout():
    names = {p.relative_to(CONFIG_DIR).as_posix() for p in CONFIGS}
    for family in ("drnet", "unet2d", "cenet", "denseaspp", "msdual"):
        assert {f"{family}/chaos.yaml", f"{family}/brats.yaml"} <= names
    assert "kits19.yaml" in names


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.relative_to(CONFIG_DIR).as_posix())
def test_config_instantiates(config, tmp_path):
    cli = _instantiate(config, tmp_path)
    assert isinstance(cli.model, segzoo.tasks.SegmentationTask)
    assert isinstance(cli.model.net, torch.nn.Module) and isinstance(cli.model.loss, torch.nn.Module)
    assert cli.model.metric is not None
    assert cli.trainer.default_root_dir == str(tmp_path)
    assert not any(tmp_path.iterdir()), "instantiating a config must not write anything"
    if config in ZOO_2D:
        _check_2d_config(cli, config.stem)


def _check_2d_config(cli: SegzooCLI, dataset: str) -> None:
    """Paper settings, and the net, inferer, datamodule and metric agree with each other."""
    task, dm, trainer = cli.model, cli.datamodule, cli.trainer
    assert type(dm).__name__ == {"chaos": "CHAOSDataModule", "brats": "BraTSDataModule"}[dataset]
    assert type(task.metric).__name__ == {"chaos": "CHAOSMetric", "brats": "BraTSMetric"}[dataset]
    # the net takes the datamodule's channels and predicts its classes (SegNet records its constructor args)
    net_args = task.net.init_config["init_args"]
    assert (net_args["in_channels"], net_args["out_channels"]) == (dm.in_channels, dm.num_classes)
    # whole-case inference slice by slice at the training size
    assert isinstance(task.inferer, SliceInferer)
    assert task.inferer.spatial_dim == 0
    assert tuple(task.inferer.roi_size) == dm.image_size == (256, 256)
    # the paper: Adam lr 1e-3 betas (0.9, 0.999), cross-entropy, 300 epochs, 3:2 split
    opt = task.optimizer_factory([torch.nn.Parameter(torch.zeros(1))])
    assert isinstance(opt, torch.optim.Adam)
    assert opt.defaults["lr"] == 1e-3 and opt.defaults["betas"] == (0.9, 0.999)
    assert type(task.loss).__name__ == "CELoss"
    assert trainer.max_epochs == 300
    assert dm.train_fraction == 0.6
    # a fresh machine gets synthetic data in a gitignored folder
    assert dm.synthetic_cases > 0 and dm.data_dir.parts[0] == "runs"
    if dataset == "brats":
        assert dm.resize_mode == "pad" and dm.slice_selection == "largest2" and dm.synthetic_size == "large"
    callbacks = {type(c).__name__: c for c in trainer.callbacks}
    assert callbacks["RunCheckpoint"].monitor == "val/score" and callbacks["RunCheckpoint"].mode == "max"
    assert callbacks["RunCheckpoint"].save_last and "RunArtifacts" in callbacks
    if type(task.net).__name__ == "DRNet":
        # the registered default; the paper: 2,700,581 (CHAOS) and 2,704,156 (BraTS), aimed within +-10 %
        count = sum(p.numel() for p in task.net.parameters())
        if dataset == "chaos":
            assert count == 2_790_309
        assert abs(count / {"chaos": 2_700_581, "brats": 2_704_156}[dataset] - 1) < 0.1


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["chaos", "brats"])
def test_drnet_config_fits_on_tiny_synthetic_data(dataset, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # whatever the logger's save_dir resolves to, it stays in the temp folder
    run, data = tmp_path / "run", tmp_path / "data"
    args = [
        "fit",
        "--config",
        str(CONFIG_DIR / "drnet" / f"{dataset}.yaml"),
        "--trainer.default_root_dir",
        str(run),
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=1",
        "--trainer.check_val_every_n_epoch=1",
        "--trainer.accelerator=cpu",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--model.inferer.init_args.roi_size=[64, 64]",
        "--data.data_dir",
        str(data),
        "--data.image_size=[64, 64]",
        "--data.batch_size=2",
        "--data.num_workers=0",
        "--data.synthetic_cases=2",
        "--data.synthetic_size=small",
        # CHAOS metrics are volumetric: whole cases only (a slice selection is refused by CHAOSMetric)
        f"--data.slice_selection={'largest2' if dataset == 'brats' else 'all'}",
    ]
    if dataset == "brats":
        args.append("--data.resize_mode=resize")  # 96x96 synthetic slices do not pad into 64x64
    assert main(args) == 0
    assert any(data.iterdir()), "synthetic cases were not written"
    assert (run / "checkpoints" / "last.ckpt").is_file()
    summary = json.loads((run / "metrics.json").read_text())
    dice_keys = {"chaos": {"liver/dice", "spleen/dice", "mean/dice"}, "brats": {"WT/dice", "TC/dice", "ET/dice"}}
    assert dice_keys[dataset] <= set(summary["mean"]) and "score" in summary["mean"]
    assert len(summary["cases"]) == 1  # 2 cases, 3:2 split -> 1 held out
    assert list(tmp_path.rglob("lightning_logs/*/metrics.csv")), "the CSVLogger wrote no metrics.csv"
