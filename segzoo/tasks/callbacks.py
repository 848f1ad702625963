"""Callbacks that give every run the same layout: ``RUN/checkpoints/{last,best}.ckpt`` and ``RUN/fingerprint.json``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from segzoo.utils import atomic_write_text


class RunCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that defaults to ``<trainer.default_root_dir>/checkpoints`` whatever the logger.

    Lightning's default puts checkpoints under the logger's version folder (for wandb a random id), which makes
    ``RUN/checkpoints/last.ckpt`` unpredictable; with ``dirpath`` unset this callback pins it to the run folder.
    """

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.dirpath is None:
            self.dirpath = os.path.join(trainer.default_root_dir, "checkpoints")
        super().setup(trainer, pl_module, stage)


class RunArtifacts(Callback):
    """Writes the dataset fingerprint the run used to ``<default_root_dir>/fingerprint.json`` at fit start."""

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        fingerprint = getattr(trainer.datamodule, "fingerprint", None)
        if fingerprint:
            path = Path(trainer.default_root_dir) / "fingerprint.json"
            atomic_write_text(path, json.dumps(fingerprint, indent=2, default=float))
