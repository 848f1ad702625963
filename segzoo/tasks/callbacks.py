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


class NiftiPredictionWriter(Callback):
    """Writes ``segzoo predict`` outputs as ``<output_dir>/<case_id>.nii.gz`` on each input's own grid.

    Needs predict batches with ``case_id``, ``original_shape`` and ``affine`` (``KiTS19DataModule`` provides them) and a
    datamodule ``preprocessor`` with ``restore(probabilities, original_shape)``; the task's ``postprocess`` is applied
    after restoring. Labels are ``uint8``; each file is written atomically. ``segzoo infer`` does the same from a
    checkpoint alone, on arbitrary NIfTI files.

    Args:
        output_dir: folder for the predictions; default ``<trainer.default_root_dir>/predictions``.
    """

    def __init__(self, output_dir: str | None = None) -> None:
        self.output_dir = output_dir

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        from segzoo.data.io import DataError, save_nifti
        from segzoo.inference.labels import labels_on_original_grid

        preprocessor = getattr(trainer.datamodule, "preprocessor", None)
        for key in ("case_id", "original_shape", "affine"):
            if key not in batch:
                raise DataError(f"NiftiPredictionWriter: predict batches carry no '{key}'; use a KiTS19DataModule")
        out_dir = Path(self.output_dir or os.path.join(trainer.default_root_dir, "predictions"))
        for i, case_id in enumerate(batch["case_id"]):
            probs = outputs["output"][i]
            shape = tuple(int(s) for s in batch["original_shape"][i])
            if "orientation_transform" not in batch:
                labels = labels_on_original_grid(probs, shape, preprocessor, pl_module.postprocess)
                save_nifti(labels, batch["affine"][i].cpu().numpy(), out_dir / f"{case_id}.nii.gz")
                continue
            # the net saw the case in the training orientation: the one way back of `segzoo infer`
            from segzoo.data.geometry import Reorientation
            from segzoo.inference.predict import write_labels

            r = Reorientation.from_transform(batch["orientation_transform"][i].tolist(), shape)
            labels = r.undo(labels_on_original_grid(probs, r.oriented_shape, preprocessor, pl_module.postprocess))
            write_labels(labels, Path(batch["source_image"][i]), out_dir / f"{case_id}.nii.gz")


class MovingAverage(Callback):
    """Logs the moving average of a validation value, for checkpoint selection on a smoothed curve.

    The paper selected its checkpoint on "a moving validation loss" (its Fig. 3); the window is not given, so it is
    an argument here (docs/training.md). After every validation the mean of the last ``window`` values of
    ``monitor`` is written to ``trainer.callback_metrics[name]`` (and the loggers), before any ``ModelCheckpoint``
    reads it (Lightning runs checkpoint callbacks last). The history is part of the callback's checkpoint state, so
    a resumed run continues the same average.

    Args:
        monitor: the logged value to average (the task logs ``val/loss``).
        window: number of validations averaged.
        name: key of the average; default ``"<monitor>_avg"``.
    """

    def __init__(self, monitor: str = "val/loss", window: int = 5, name: str | None = None) -> None:
        if window < 1:
            raise ValueError(f"MovingAverage: window must be >= 1, got {window}")
        self.monitor, self.window, self.name = monitor, int(window), name or f"{monitor}_avg"
        self.history: list[float] = []

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        import torch

        self.history.append(float(trainer.callback_metrics[self.monitor]))
        value = sum(self.history[-self.window :]) / len(self.history[-self.window :])
        trainer.callback_metrics[self.name] = torch.tensor(value)
        for logger in trainer.loggers:
            logger.log_metrics({self.name: value}, step=trainer.global_step)

    def state_dict(self) -> dict:
        return {"history": list(self.history)}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = [float(v) for v in state_dict.get("history", [])]


class LRFloorStop(Callback):
    """Stops training once every learning rate has been reduced to ``min_lr`` (the paper trained "until the learning
    rate reached our limit", ~700 epochs). Pair it with ``ReduceLROnPlateau(min_lr=...)`` at the same value.

    Args:
        min_lr: the floor; training stops at the end of the first epoch whose learning rates are all <= it
            (relative tolerance 1e-6).
    """

    def __init__(self, min_lr: float) -> None:
        if not min_lr > 0:
            raise ValueError(f"LRFloorStop: min_lr must be > 0, got {min_lr}")
        self.min_lr = float(min_lr)
        self.stopped_epoch: int | None = None

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        lrs = [g["lr"] for opt in trainer.optimizers for g in opt.param_groups]
        if lrs and all(lr <= self.min_lr * (1 + 1e-6) for lr in lrs):
            self.stopped_epoch = trainer.current_epoch
            trainer.should_stop = True
