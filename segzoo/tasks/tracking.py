"""Experiment tracking with pictures: validation overlays, parameter count and the resolved config for any logger.

:class:`OverlayImages` is a Lightning callback. At the end of every validation epoch it draws the slices that
:class:`~segzoo.tasks.SegmentationTask` keeps in ``task.overlays`` (image, ground truth, prediction) and hands
them to each attached logger: ``WandbLogger.log_image``, TensorBoard ``add_image``; with a ``CSVLogger`` or no
logger it writes PNGs to ``<default_root_dir>/overlays/epoch_XXXX/<case_id>.png``. Once, at fit start, it logs the
parameter count and the resolved config (the ``config.yaml`` LightningCLI saved, else the net's constructor
config) as hyper-parameters, which wandb shows as the run config.

wandb never blocks on the network: when no API key is configured (``WANDB_API_KEY`` or a ``~/.netrc`` entry for
``api.wandb.ai``) and ``WANDB_MODE`` is unset, the callback passes ``mode="offline"`` to the ``WandbLogger``'s
``wandb.init`` arguments before its run starts (the process environment is left alone), so a misconfigured
``offline: false`` logs locally instead of waiting for a login prompt.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info

IMAGE_KEY = "val/overlays"


def wandb_has_api_key() -> bool:
    """True when wandb could authenticate without asking: ``WANDB_API_KEY`` or a netrc entry for the API host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        import netrc

        host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0]
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def figure_to_array(fig) -> np.ndarray:
    """RGB ``uint8`` array ``(H, W, 3)`` of a matplotlib figure (Agg canvas)."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def _safe_name(case_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", case_id) or "case"


class OverlayImages(Callback):
    """Log the task's validation overlays as images every validation epoch, plus parameter count and config once.

    Args:
        save_png: write PNGs under ``<default_root_dir>/overlays/epoch_XXXX/``; ``None`` (default) writes them
            only when no attached logger can show images (no logger, or only ``CSVLogger``-like ones).
        log_config: log the parameter count and the resolved config as hyper-parameters at fit start.
        key: image key / tag prefix in the loggers.
    """

    def __init__(self, save_png: bool | None = None, log_config: bool = True, key: str = IMAGE_KEY) -> None:
        super().__init__()
        self.save_png = save_png
        self.log_config = log_config
        self.key = key
        self.saved: list[Path] = []

    # ------------------------------------------------------------------ wandb safety
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        from lightning.pytorch.loggers import WandbLogger

        loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        # an explicit WANDB_MODE, a mode argument or a run that already exists is the user's choice
        pending = [lg for lg in loggers if lg._experiment is None and "mode" not in lg._wandb_init]
        if pending and "WANDB_MODE" not in os.environ and not wandb_has_api_key():
            for logger in pending:
                logger._wandb_init["mode"] = "offline"  # WandbLogger passes these to wandb.init
            rank_zero_info("segzoo: no wandb API key configured; logging offline (sync later with `wandb sync`)")

    # ------------------------------------------------------------------ config and parameter count
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.log_config or not trainer.loggers:
            return
        params = resolved_hparams(trainer, pl_module)
        for logger in trainer.loggers:
            logger.log_hyperparams(params)

    # ------------------------------------------------------------------ overlays
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        overlays = getattr(pl_module, "overlays", None)
        if trainer.sanity_checking or not overlays or not trainer.is_global_zero:
            return
        import matplotlib.pyplot as plt

        from segzoo.viz import overlay_figure

        epoch, step = trainer.current_epoch, trainer.global_step
        images, captions = [], []
        for item in overlays:
            fig = overlay_figure(item["image"], item.get("label"), item.get("pred"), title=f"{item['case_id']}")
            try:
                images.append(figure_to_array(fig))
            finally:
                plt.close(fig)
            captions.append(f"{item['case_id']} (epoch {epoch})")

        shown = False
        for logger in trainer.loggers:
            shown |= self._log_to(logger, images, overlays, captions, step)
        if self.save_png or (self.save_png is None and not shown):
            self._save_pngs(Path(trainer.default_root_dir) / "overlays" / f"epoch_{epoch:04d}", images, overlays)

    def _log_to(self, logger, images, overlays, captions, step: int) -> bool:
        from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

        if isinstance(logger, WandbLogger):
            logger.log_image(key=self.key, images=images, caption=captions, step=step)
            return True
        if isinstance(logger, TensorBoardLogger):
            for image, item in zip(images, overlays):
                logger.experiment.add_image(f"{self.key}/{item['case_id']}", image, step, dataformats="HWC")
            return True
        return False

    def _save_pngs(self, folder: Path, images: list[np.ndarray], overlays: list[dict[str, Any]]) -> None:
        from PIL import Image

        folder.mkdir(parents=True, exist_ok=True)
        for image, item in zip(images, overlays):
            path = folder / f"{_safe_name(str(item['case_id']))}.png"
            tmp = path.with_name(f".{path.name}.tmp")
            Image.fromarray(image).save(tmp, format="PNG")
            os.replace(tmp, path)
            self.saved.append(path)


def parameter_counts(module) -> dict[str, int]:
    """``{"params": total, "trainable_params": trainable}`` of a module."""
    total = sum(p.numel() for p in module.parameters())
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return {"params": total, "trainable_params": trainable}


def resolved_hparams(trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
    """Parameter counts of the net plus the resolved run config.

    The config is the ``config.yaml`` LightningCLI wrote (in ``trainer.log_dir`` or ``default_root_dir``); without
    one (a fit from Python) it is the net's constructor config and the module's saved hyper-parameters.
    """
    import yaml

    net = getattr(pl_module, "net", pl_module)
    out: dict[str, Any] = {"model": {**parameter_counts(net), "net_class": type(net).__name__}}
    name = getattr(net, "registry_name", None)
    if name:
        out["model"]["registry_name"] = name
    folders = [Path(trainer.default_root_dir)]
    try:
        if trainer.log_dir:
            folders.insert(0, Path(trainer.log_dir))
    except Exception:  # some loggers have no log_dir before their experiment exists
        pass
    for folder in folders:
        path = folder / "config.yaml"
        if path.is_file():
            try:
                config = yaml.safe_load(path.read_text())
            except yaml.YAMLError:
                continue
            if isinstance(config, dict):
                out["config"] = config
                return out
    config: dict[str, Any] = {}
    if hasattr(net, "init_config"):
        config["net"] = net.init_config
    if getattr(pl_module, "hparams", None):
        config["model"] = dict(pl_module.hparams)
    if config:
        out["config"] = config
    return out
