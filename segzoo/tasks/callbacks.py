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
        from segzoo.checkpoint import labels_on_original_grid
        from segzoo.data.io import DataError, save_nifti

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
            # the net saw the case in the training orientation: restore there, flip back, keep the input's header
            import nibabel as nib

            from segzoo.data.geometry import Reorientation

            oriented = tuple(int(s) for s in batch["oriented_shape"][i])
            labels = labels_on_original_grid(probs, oriented, preprocessor, pl_module.postprocess)
            labels = Reorientation.from_transform(batch["orientation_transform"][i].tolist(), shape).undo(labels)
            header = nib.load(batch["source_image"][i]).header
            save_nifti(labels, None, out_dir / f"{case_id}.nii.gz", header=header)
