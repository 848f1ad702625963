"""OverlayImages: validation overlays reach wandb (offline), TensorBoard or PNG files; config and parameter count."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import toydata
from PIL import Image

from segzoo.nets import MSSUNet
from segzoo.tasks.tracking import OverlayImages, parameter_counts, resolved_hparams


def _overlays(n=2, size=24):
    items = []
    for i in range(n):
        label = np.zeros((size, size), np.int64)
        label[6:18, 6:18] = 1
        label[9:13, 9:13] = 2
        items.append(
            {"case_id": f"case/{i}", "image": label + 0.1 * np.random.rand(size, size), "label": label, "pred": label}
        )
    return items


def _fake(tmp_path, loggers, epoch=3):
    trainer = SimpleNamespace(
        loggers=loggers, sanity_checking=False, is_global_zero=True, current_epoch=epoch, global_step=7,
        default_root_dir=str(tmp_path),
    )  # fmt: skip
    return trainer, SimpleNamespace(overlays=_overlays())


def test_pngs_without_logger(tmp_path):
    cb = OverlayImages()
    trainer, module = _fake(tmp_path, [])
    cb.on_validation_epoch_end(trainer, module)
    files = sorted((tmp_path / "overlays" / "epoch_0003").glob("*.png"))
    assert [f.name for f in files] == ["case_0.png", "case_1.png"]  # "/" in case ids made file-safe
    img = np.asarray(Image.open(files[0]))
    assert img.ndim == 3 and img.shape[2] == 3 and img.shape[0] > 100
    # the overlays are coloured: some pixels are far from grey
    assert (img.astype(int).max(-1) - img.astype(int).min(-1)).max() > 100


def test_sanity_check_and_empty_overlays_log_nothing(tmp_path):
    cb = OverlayImages()
    trainer, module = _fake(tmp_path, [])
    trainer.sanity_checking = True
    cb.on_validation_epoch_end(trainer, module)
    trainer.sanity_checking = False
    module.overlays = []
    cb.on_validation_epoch_end(trainer, module)
    assert not (tmp_path / "overlays").exists()


def test_csv_logger_gets_pngs_and_hparams(tmp_path, tiny_net):
    import yaml
    from lightning.pytorch.loggers import CSVLogger

    logger = CSVLogger(tmp_path / "logs")
    cb = OverlayImages()
    trainer, module = _fake(tmp_path, [logger], epoch=0)
    cb.on_validation_epoch_end(trainer, module)
    assert len(list((tmp_path / "overlays" / "epoch_0000").glob("*.png"))) == 2
    # the hyper-parameters really reach the logger: parameter count and the net's constructor config
    trainer.log_dir = None
    module = SimpleNamespace(net=tiny_net, hparams={"score_key": "tumor/dice"})
    cb.on_fit_start(trainer, module)
    logger.save()
    logged = yaml.safe_load((Path(logger.log_dir) / "hparams.yaml").read_text())
    n = sum(p.numel() for p in tiny_net.parameters())
    assert logged["model"] == {"params": n, "trainable_params": n, "net_class": "MSSUNet"}
    assert logged["config"]["net"] == tiny_net.init_config
    assert logged["config"]["model"] == {"score_key": "tumor/dice"}
    OverlayImages(log_config=False).on_fit_start(trainer, SimpleNamespace(net=torch.nn.Linear(2, 2), hparams={}))
    logger.save()  # log_config=False: nothing new logged
    assert yaml.safe_load((Path(logger.log_dir) / "hparams.yaml").read_text()) == logged


def test_tensorboard_receives_images(tmp_path):
    pytest.importorskip("tensorboard")
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(tmp_path / "tb")
    cb = OverlayImages()
    trainer, module = _fake(tmp_path, [logger])
    cb.on_validation_epoch_end(trainer, module)
    logger.experiment.flush()
    acc = EventAccumulator(str(logger.log_dir), size_guidance={"images": 0})
    acc.Reload()
    tags = acc.Tags()["images"]
    assert sorted(tags) == ["val/overlays/case/0", "val/overlays/case/1"]
    event = acc.Images(tags[0])[0]
    assert event.step == 7 and event.width > 100
    assert not (tmp_path / "overlays").exists()  # shown by the logger: no PNG copies by default


def test_resolved_hparams_reads_cli_config(tmp_path):
    net = MSSUNet(kernel_size=[3, 3], strides=[1, 2], base_features=4)
    module = SimpleNamespace(net=net, hparams={})
    trainer = SimpleNamespace(default_root_dir=str(tmp_path), log_dir=None)
    out = resolved_hparams(trainer, module)
    assert out["model"]["params"] == sum(p.numel() for p in net.parameters())
    assert out["config"]["net"]["class_path"] == "segzoo.nets.mss_unet.MSSUNet"
    (tmp_path / "config.yaml").write_text("seed_everything: 3\nmodel:\n  score_key: composite/dice\n")
    out = resolved_hparams(trainer, module)
    assert out["config"] == {"seed_everything": 3, "model": {"score_key": "composite/dice"}}


def test_parameter_counts_trainable():
    lin = torch.nn.Linear(3, 2)  # 8 parameters
    lin.bias.requires_grad_(False)
    assert parameter_counts(lin) == {"params": 8, "trainable_params": 6}


def test_wandb_forced_offline_without_key(tmp_path, monkeypatch):
    import os

    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    logger = WandbLogger(save_dir=str(tmp_path), offline=False)
    OverlayImages().setup(SimpleNamespace(loggers=[logger]), None, "fit")
    assert logger._wandb_init["mode"] == "offline"  # what wandb.init receives
    assert "WANDB_MODE" not in os.environ  # the process environment is left alone
    online = WandbLogger(save_dir=str(tmp_path), mode="online")  # an explicit mode is kept
    OverlayImages().setup(SimpleNamespace(loggers=[online]), None, "fit")
    assert online._wandb_init["mode"] == "online"
    monkeypatch.setenv("WANDB_MODE", "online")  # so is an explicit WANDB_MODE
    other = WandbLogger(save_dir=str(tmp_path))
    OverlayImages().setup(SimpleNamespace(loggers=[other]), None, "fit")
    assert "mode" not in other._wandb_init


@pytest.mark.slow
def test_fit_logs_overlays_to_offline_wandb_run(tmp_path, monkeypatch):
    import lightning.pytorch as pl
    import wandb
    from lightning.pytorch.loggers import WandbLogger
    from monai.losses import DiceCELoss

    from segzoo.losses import DeepSupervisionLoss
    from segzoo.metrics import KiTS19Metric
    from segzoo.tasks import SegmentationTask

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    torch.manual_seed(0)
    net = MSSUNet(kernel_size=[3, 3], strides=[1, 2], base_features=4)
    task = SegmentationTask(
        net=net,
        loss=DeepSupervisionLoss(loss=DiceCELoss(to_onehot_y=True, softmax=True)),
        metric=KiTS19Metric(),
        num_overlays=2,
    )
    logger = WandbLogger(save_dir=str(tmp_path), offline=True, project="segzoo-test")
    trainer = pl.Trainer(
        max_epochs=2, logger=logger, callbacks=[OverlayImages()], accelerator="cpu", enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0,
        default_root_dir=str(tmp_path),
    )  # fmt: skip
    trainer.fit(task, datamodule=toydata.ToyDataModule(shape=(8, 16, 16), train_cases=2, val_cases=2))
    run_dir = Path(logger.experiment.dir).parent
    config = dict(logger.experiment.config)
    wandb.finish()
    assert run_dir.name.startswith("offline-run-")
    images = sorted((run_dir / "files" / "media" / "images").rglob("*.png"))
    assert len(images) == 4  # two validation epochs x two overlays
    assert all(np.asarray(Image.open(p)).shape[0] > 100 for p in images)
    assert config["model"]["params"] == sum(p.numel() for p in net.parameters())
    assert config["config"]["net"]["class_path"] == "segzoo.nets.mss_unet.MSSUNet"
