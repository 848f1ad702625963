"""2D nets (DR-Net, 2D baselines) in ``segzoo infer``: BraTS case folders and CHAOS DICOM series, slice by slice.

A 2D checkpoint carries its data preprocessing (:class:`segzoo.data.slice2d.SlicePreprocessor`, ``type: "slice2d"``):
the dataset kind, channels, z-score, in-plane size and fitting, label values and, for BraTS, the orientation the
training volumes were brought to. Prediction runs MONAI's ``SliceInferer`` over the whole slice stack, undoes the
in-plane fitting on the class scores, and writes

- BraTS: ``OUT/<case>_seg.nii.gz``, labels 0/1/2/4, with the header (grid) of the case's t1 file;
- CHAOS: ``OUT/<name>.nii.gz`` (class indices 0-4: liver, right kidney, left kidney, spleen) on the series' grid,
  ``(columns, rows, slices)`` like dcm2niix, and with ``png=True`` one Ground-style PNG per slice (grey values
  63/126/189/252), named after its DICOM file, in ``OUT/<name>_png/``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from segzoo.data.io import DataError, is_nifti_name, save_nifti
from segzoo.data.slice2d import SlicePreprocessor
from segzoo.utils import atomic_path

if TYPE_CHECKING:
    from segzoo.checkpoint import LoadedModel
    from segzoo.inference.outputs import CaseWriter

CHAOS_PNG_STEP = 63  # Ground grey value of class k is 63 * k (liver 63, right kidney 126, left kidney 189, spleen 252)


@dataclass
class Input2D:
    """One thing to predict: a BraTS case folder or a DICOM series folder, and the output name."""

    kind: str  # "brats" or "chaos"
    path: Path
    name: str


def _dicom_files(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".dcm"]


def _chaos_series_in_tree(root: Path, sequence: str | None) -> list[tuple[Path, str]]:
    """``(series folder, name)`` of every case of a CHAOS ``Train_Sets`` / ``Test_Sets`` tree (or its ``MR`` folder,
    or a folder of case folders) for the training ``sequence``; name ``<case>_<sequence>``."""
    from segzoo.data.chaos import CHAOS_SEQUENCES, _sequence_dirs, natural_key

    sequences = [sequence] if sequence in CHAOS_SEQUENCES else list(CHAOS_SEQUENCES)

    def is_mr(d: Path) -> bool:
        return d.is_dir() and any((c / "T1DUAL").is_dir() or (c / "T2SPIR").is_dir() for c in d.iterdir() if c.is_dir())

    if is_mr(root):
        mr_folders = [root]
    else:
        mr_folders = [d for d in (root / "Train_Sets" / "MR", root / "Test_Sets" / "MR", root / "MR") if is_mr(d)]
    found = []
    for mr in mr_folders:
        prefix = f"{mr.parent.name}_" if len(mr_folders) > 1 else ""  # Train_Sets_1_T2SPIR vs Test_Sets_1_T2SPIR
        cases = sorted((c for c in mr.iterdir() if (c / "T1DUAL").is_dir() or (c / "T2SPIR").is_dir()), key=natural_key)
        for case in cases:
            for seq in sequences:
                series = _sequence_dirs(case, seq)[0]
                if series.is_dir() and _dicom_files(series):
                    found.append((series, f"{prefix}{case.name}_{seq}"))
    return found


def _series_name(folder: Path) -> str:
    """``<case>_<sequence>`` for a series folder in the CHAOS layout (``<id>/T2SPIR/DICOM_anon``,
    ``<id>/T1DUAL/DICOM_anon/InPhase``), else the folder name."""
    parts = folder.resolve().parts
    if len(parts) >= 3 and parts[-1] == "DICOM_anon" and parts[-2] in ("T1DUAL", "T2SPIR"):
        return f"{parts[-3]}_{parts[-2]}"
    if len(parts) >= 4 and parts[-2] == "DICOM_anon" and parts[-3] == "T1DUAL":
        return f"{parts[-4]}_T1DUAL_{parts[-1]}"
    return folder.name


def find_2d_inputs(input_path: str | os.PathLike, preprocessor: SlicePreprocessor) -> list[Input2D]:
    """What a 2D checkpoint predicts under ``input_path``.

    BraTS checkpoints: a case folder (``<case>/<case>_{t1,t1ce,t2,flair}.nii[.gz]``) or a folder of them (also
    2018's ``HGG/``, ``LGG/``). CHAOS checkpoints: a DICOM series folder (``*.dcm``) or a CHAOS ``Train_Sets`` /
    ``Test_Sets`` tree (every case's series of the sequence the checkpoint was trained on).

    Raises:
        DataError: one line, when ``input_path`` holds nothing of that kind (e.g. a NIfTI volume for a 2D net).
    """
    root = Path(input_path)
    if not root.exists():
        raise DataError(f"{root}: no such file or folder")
    kind = preprocessor.dataset
    if root.is_file():
        what = "a NIfTI volume" if is_nifti_name(root) else "a file"
        expected = (
            "a BraTS case folder (<case>/<case>_{t1,t1ce,t2,flair}.nii.gz) or a folder of them"
            if kind == "brats"
            else "a CHAOS DICOM series folder (*.dcm) or a CHAOS Train_Sets/Test_Sets tree"
        )
        raise DataError(
            f"{root}: {what}; this checkpoint is a 2D net trained on {kind.upper()}, it predicts {expected}"
        )
    if kind == "brats":
        from segzoo.data.brats import brats_file, find_brats_cases

        if brats_file(root, "flair") is not None:
            cases = [root]
        else:
            try:
                cases = find_brats_cases(root)
            except DataError:
                raise DataError(
                    f"{root}: no BraTS case folder (<case>/<case>_{{t1,t1ce,t2,flair}}.nii.gz) found; this checkpoint "
                    "is a 2D net trained on BraTS"
                    + (" - for NIfTI volumes use a 3D checkpoint" if any(map(is_nifti_name, root.iterdir())) else "")
                ) from None
        return [Input2D("brats", c, f"{c.name}_seg") for c in cases]
    if _dicom_files(root):
        return [Input2D("chaos", root, _series_name(root))]
    series = _chaos_series_in_tree(root, preprocessor.sequence)
    if not series:
        raise DataError(
            f"{root}: no DICOM series (*.dcm) and no CHAOS Train_Sets/Test_Sets/MR/<id>/{{T1DUAL,T2SPIR}} cases found; "
            "this checkpoint is a 2D net trained on CHAOS"
        )
    return [Input2D("chaos", path, name) for path, name in series]


@dataclass
class SlicePredictor:
    """A 2D net with its stored preprocessing and a slice-by-slice inferer, ready to predict BraTS / CHAOS inputs.

    Args:
        net: the 2D net (eval mode), on ``device``.
        preprocessor: the checkpoint's :class:`SlicePreprocessor`.
        inferer: ``inferer(x (1, C, S, H, W), net) -> (1, K, S, H, W)``, e.g. ``monai.inferers.SliceInferer``.
        device: where the net runs.
    """

    net: nn.Module
    preprocessor: SlicePreprocessor
    inferer: Callable[[torch.Tensor, nn.Module], torch.Tensor]
    device: torch.device = torch.device("cpu")

    @classmethod
    def build(
        cls, net: nn.Module, preprocessor: SlicePreprocessor, device: str = "cpu", sw_batch_size: int = 16
    ) -> SlicePredictor:
        from monai.inferers import SliceInferer

        dev = torch.device(device)
        inferer = SliceInferer(
            roi_size=preprocessor.image_size, sw_batch_size=sw_batch_size, spatial_dim=0, progress=False
        )
        return cls(net.to(dev).eval(), preprocessor, inferer, dev)

    def predict_stack(self, image: np.ndarray) -> np.ndarray:
        """Class indices ``(S, H, W)`` uint8 for a raw slice stack ``(C, S, H, W)``."""
        x = self.preprocessor.prepare(image)[None].to(self.device)
        with torch.inference_mode():
            out = self.inferer(x, self.net)
        if isinstance(out, list | tuple):  # deep supervision in eval: full resolution first
            out = out[0]
        return self.preprocessor.restore(out[0], image.shape[-2:])

    def predict(self, item: Input2D, out_dir: Path, png: bool = False, writer: CaseWriter | None = None) -> list[Path]:
        """Predict one input and write its outputs into ``out_dir`` (atomically); returns the files written.

        ``writer``: writes the label map instead (NIfTI and/or, for CHAOS DICOM series, DICOM-SEG; statistics).
        """
        if item.kind != self.preprocessor.dataset:
            raise DataError(f"{item.path}: a {item.kind} input for a checkpoint trained on {self.preprocessor.dataset}")
        if item.kind == "brats":
            return self._brats(item, out_dir, writer)
        return self._chaos(item, out_dir, png, writer)

    def _brats(self, item: Input2D, out_dir: Path, writer: CaseWriter | None = None) -> list[Path]:
        from segzoo.data.brats import load_brats_images

        images = load_brats_images(item.path, self.preprocessor.orientation)
        stack = np.transpose(images.image, (0, 3, 1, 2))  # axial slices (last axis) first: (C, Z, X, Y)
        indices = self.predict_stack(stack)  # (Z, X, Y)
        labels = self.preprocessor.to_label_values(np.transpose(indices, (1, 2, 0)))  # (X, Y, Z), 0/1/2/4
        labels = images.reorientation.undo(labels)
        if writer is not None:  # the voxel volume (the affine's determinant) is the same in any axis order
            return writer.write(item.name, labels, images.affine, header=images.header)
        return [save_nifti(labels, None, out_dir / f"{item.name}.nii.gz", header=images.header)]

    def _chaos(self, item: Input2D, out_dir: Path, png: bool, writer: CaseWriter | None = None) -> list[Path]:
        from PIL import Image

        from segzoo.data.chaos import load_chaos_series

        series = load_chaos_series(item.path)
        if self.preprocessor.in_channels != 1:
            raise DataError(f"{item.path}: one DICOM series, but the checkpoint's net takes "
                            f"{self.preprocessor.in_channels} channels")  # fmt: skip
        indices = self.predict_stack(series.image[None])  # (S, H, W) class indices
        labels = self.preprocessor.to_label_values(indices)
        affine = series.affine[:, [2, 1, 0, 3]]  # (columns, rows, slices) as dcm2niix writes DICOM series
        volume = np.ascontiguousarray(labels.transpose(2, 1, 0))
        if writer is not None:
            sources = _dicom_headers(series.files) if writer.dicom_seg else None
            written = writer.write(item.name, volume, affine, seg_frames=labels, seg_sources=sources)
        else:
            written = [save_nifti(volume, affine, out_dir / f"{item.name}.nii.gz")]
        if png:
            png_dir = out_dir / f"{item.name}_png"
            for k, f in enumerate(series.files):
                grey = (labels[k].astype(np.uint16) * CHAOS_PNG_STEP).astype(np.uint8)
                path = png_dir / f"{Path(f).stem}.png"
                with atomic_path(path, suffix=".tmp.png") as tmp:
                    Image.fromarray(grey).save(tmp)  # uint8 (H, W): an 8-bit grey PNG
                written.append(path)
        return written


def _dicom_headers(files: list) -> list:
    """The pydicom headers (no pixel data) of a series' slice files, in the order given."""
    import pydicom

    return [pydicom.dcmread(f, stop_before_pixels=True) for f in files]


def is_2d_preprocessor(config: dict[str, Any] | None) -> bool:
    """True for a stored preprocessor dict of a 2D checkpoint (``type: "slice2d"``)."""
    return isinstance(config, dict) and config.get("type") == "slice2d"


def _load_model(source: Any, trust: bool) -> tuple[nn.Module, dict[str, Any] | None]:
    """``(net, stored preprocessor dict)`` of a checkpoint or pretrained folder (or an already loaded
    :class:`~segzoo.checkpoint.LoadedModel`), through segzoo's safe loader."""
    from segzoo.checkpoint import LoadedModel, load_checkpoint

    loaded = source if isinstance(source, LoadedModel) else load_checkpoint(source, trust=trust)
    return loaded.net, loaded.format.get("preprocessor")


def _spatial_dims(net: nn.Module) -> int | None:
    dims = getattr(net, "spatial_dims", None)
    if dims is None:
        dims = (getattr(net, "init_config", None) or {}).get("init_args", {}).get("spatial_dims")
    return None if dims is None else int(dims)


def load_slice_predictor(
    source: str | os.PathLike | LoadedModel, device: str = "cpu", sw_batch_size: int = 16, trust: bool = False
) -> SlicePredictor | None:
    """A :class:`SlicePredictor` for a 2D checkpoint (its stored preprocessing has ``type: "slice2d"``), else ``None``.

    ``source``: a checkpoint file, a pretrained folder, or what :func:`segzoo.checkpoint.load_checkpoint` returned
    for one (so ``segzoo infer`` reads the file once, whatever the net's dimensionality).

    Raises:
        DataError: an unreadable checkpoint (one line), or a 2D net whose checkpoint holds no 2D preprocessing
            (written before it was stored: it cannot know how its training slices were prepared).
    """
    net, config = _load_model(source, trust)
    source = getattr(source, "source", source)  # the file or folder, for messages
    if is_2d_preprocessor(config):
        from segzoo.checkpoint import build_preprocessor  # the allow-listed way back from a stored record

        return SlicePredictor.build(net, build_preprocessor(config, str(source)), device, sw_batch_size)
    if _spatial_dims(net) == 2 and config is None:
        raise DataError(
            f"{source}: a 2D net without its data preprocessing (checkpoint written before segzoo stored it); "
            "fit or resume it with the current segzoo to predict BraTS case folders or CHAOS series"
        )
    return None
