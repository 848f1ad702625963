"""Whole-case prediction from a checkpoint alone: NIfTI in, NIfTI label map out with the input's shape and affine.

Used by ``segzoo infer``. A Lightning checkpoint written by :class:`segzoo.tasks.SegmentationTask` carries, as plain
data under ``segzoo_format``, the net's constructor config, the sliding-window size, the post-processing and the
datamodule's preprocessing, so no config is needed; a pretrained folder (``config.json`` + ``model.safetensors``,
optionally ``preprocessor.json`` / ``inference.json``) works too. Both are read by :mod:`segzoo.checkpoint`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from segzoo.checkpoint import labels_on_original_grid
from segzoo.data.io import DataError, load_nifti, save_nifti

NIFTI_SUFFIXES = (".nii.gz", ".nii")


def case_name(path: Path) -> str:
    """``case_00012`` for ``.../case_00012/imaging.nii.gz``, else the file name without ``.nii(.gz)``."""
    if path.name.startswith("imaging.nii"):
        return path.parent.name
    for suffix in NIFTI_SUFFIXES:
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)]
    return path.stem


def find_inputs(input_path: str | os.PathLike) -> list[Path]:
    """NIfTI images to predict: one file, a folder of files, or a folder of KiTS-layout case folders."""
    root = Path(input_path)
    if root.is_file():
        if not root.name.endswith(NIFTI_SUFFIXES):
            raise DataError(f"{root}: expected a .nii or .nii.gz file")
        return [root]
    if not root.is_dir():
        raise DataError(f"{root}: no such file or folder")
    found = [p for p in sorted(root.iterdir()) if p.is_file() and p.name.endswith(NIFTI_SUFFIXES)]
    for case in sorted(p for p in root.iterdir() if p.is_dir()):
        images = [case / f"imaging{s}" for s in NIFTI_SUFFIXES if (case / f"imaging{s}").is_file()]
        found.extend(images[:1])
    if not found:
        raise DataError(f"{root}: no .nii/.nii.gz files and no case folders with imaging.nii.gz found")
    names = [case_name(p) for p in found]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise DataError(f"{root}: several inputs map to the same output name(s) {sorted(dupes)}")
    return found


@dataclass
class Predictor:
    """Net + preprocessing + whole-case inferer + post-processing, ready to predict NIfTI files."""

    net: nn.Module
    inferer: Callable[[torch.Tensor, nn.Module], torch.Tensor]
    preprocessor: Any | None = None
    postprocess: Callable | None = None
    device: torch.device = torch.device("cpu")

    def predict_array(self, image: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
        """Label map ``uint8`` with exactly ``image.shape`` for one single-channel volume."""
        if self.preprocessor is not None:
            x = np.asarray(self.preprocessor.preprocess(image, spacing), dtype=np.float32)
        else:
            x = np.asarray(image, dtype=np.float32)[None]
        xt = torch.from_numpy(x)[None]  # the inferer moves it to the net's device (once, when the output fits there)
        with torch.inference_mode():
            out = self.inferer(xt, self.net)[0]
        return labels_on_original_grid(out, image.shape, self.preprocessor, self.postprocess)

    def predict_file(self, image_path: Path, output_path: Path) -> Path:
        from segzoo.data.kits19 import spacing_from_affine

        image, affine = load_nifti(image_path, dtype=np.float32)
        if image.ndim != 3:
            raise DataError(f"{image_path}: expected a 3D image, got shape {image.shape}")
        labels = self.predict_array(image, spacing_from_affine(affine))
        return save_nifti(labels, affine, output_path)


def load_predictor(
    source: str | os.PathLike,
    device: str = "cpu",
    tta: bool = True,
    overlap: float = 0.5,
    sw_batch_size: int = 2,
    postprocess: bool = True,
    roi_size: Sequence[int] | None = None,
    amp: bool | None = None,
    max_batch: int | str | None = "auto",
    memory_budget_gb: float | None = None,
    trust: bool = False,
) -> Predictor:
    """Build a :class:`Predictor` from a ``segzoo fit`` checkpoint or a pretrained folder
    (:func:`segzoo.checkpoint.load_checkpoint`: nothing from the file runs unless ``trust``).

    The net runs on ``device``; the stitched output stays there when it fits (``memory_budget_gb``, default half
    the free accelerator memory) and is streamed to the CPU otherwise. ``amp``: bf16 autocast (``None`` = on for
    CUDA, off on a CPU). ``max_batch``: most windows x flips per forward pass (bounds activation memory; ``"auto"``:
    all flips at once on an accelerator, one per pass on a CPU). ``trust``: unpickle a checkpoint that weights-only
    loading refuses (runs any code it holds; warns).

    Raises:
        segzoo.checkpoint.CheckpointError: (a ``DataError``) one line naming the file and the reason.
    """
    from segzoo.checkpoint import load_checkpoint
    from segzoo.inference.sliding_window import SlidingWindowTTAInferer

    loaded = load_checkpoint(source, trust=trust)
    roi = list(roi_size) if roi_size is not None else loaded.roi_size
    if roi is None:
        raise DataError(f"{source}: holds no sliding-window size; pass --roi-size")
    dev = torch.device(device)
    inferer = SlidingWindowTTAInferer(
        roi_size=roi,
        sw_batch_size=sw_batch_size,
        overlap=overlap,
        mirror_axes=tuple(range(len(roi))) if tta else None,
        sw_device=str(dev),
        device="auto",
        amp=dev.type == "cuda" if amp is None else amp,
        max_batch=max_batch,
        memory_budget_gb=memory_budget_gb,
    )
    return Predictor(
        net=loaded.net.to(dev).eval(),
        inferer=inferer,
        preprocessor=loaded.preprocessor(),
        postprocess=loaded.postprocess() if postprocess else None,
        device=dev,
    )
