"""What every dataset reader yields: :class:`ImageCase` (channel files + label) and :class:`DatasetSource`.

A dataset in any layout (nnU-Net v2 raw, Medical Segmentation Decathlon, a MONAI datalist, KiTS19) is read into the
same two objects, so fingerprinting, planning, preprocessing, the datamodules, ``segzoo verify`` and ``segzoo infer``
never know a dataset's name. Images are ``(C, *spatial)``: one NIfTI file per channel (nnU-Net's ``{case}_{XXXX}``,
a datalist's list of files) or one 4D file whose last axis holds the channels (the Decathlon's).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from segzoo.data.io import DataError, load_nifti

log = logging.getLogger(__name__)

__all__ = ["GEOMETRY_ATOL", "CaseOutput", "DatasetSource", "ImageCase", "check_same_grid", "grid_difference"]

# nnU-Net compares spacing, origin and direction with a tolerance too (verify_dataset_integrity: 1e-4 relative); the
# affine here holds spacing x direction and the origin in mm, so an absolute 1e-3 mm is the same order
GEOMETRY_ATOL = 1e-3


class CaseOutput(NamedTuple):
    """How a label map predicted on a case is written (:meth:`ImageCase.prediction_output`).

    Args:
        labels: the label map to write, uint8.
        affine: its voxel-to-world matrix.
        header: the NIfTI header to write it with (the input's), or ``None`` (a fresh one from ``affine``).
        seg_frames: the same labels as ``(slices, rows, columns)`` frames of a DICOM source, else ``None``.
        seg_sources: the source slices' pydicom headers, ``seg_frames[k]`` on ``seg_sources[k]`` (DICOM-SEG).
        slice_files: the source slice files in frame order (CHAOS Ground-style PNGs are named after them).
    """

    labels: np.ndarray
    affine: np.ndarray
    header: Any | None = None
    seg_frames: np.ndarray | None = None
    seg_sources: Sequence[Any] | None = None
    slice_files: Sequence[Path] = ()


@dataclass(frozen=True)
class ImageCase:
    """One case: its channel files, its label file and the label values its dataset declares.

    Args:
        case_id: the case identifier (nnU-Net's ``{case}`` of ``{case}_0000.nii.gz``).
        images: one file per channel in channel order, or a single 4D file when ``four_d`` (channels on its last axis).
        label: the label map, or ``None`` for an inference-only case.
        label_values: the values a label map may hold (dataset.json's labels); ``None``: not checked.
        four_d: ``images`` is one 4D file ``(X, Y, Z, C)`` (Medical Segmentation Decathlon).
        num_channels: channels the dataset declares (checked against a 4D file's last axis).
    """

    case_id: str
    images: tuple[Path, ...]
    label: Path | None = None
    label_values: tuple[int, ...] | None = None
    four_d: bool = False
    num_channels: int = 1

    def __str__(self) -> str:  # what a folder run's error line names
        return str(self.images[0]) if len(self.images) == 1 else f"{self.images[0].parent}/{self.case_id}_*"

    @property
    def image(self) -> Path:
        """The first channel file: its header gives the case's geometry (and its NIfTI header is the output's)."""
        return self.images[0]

    @property
    def files(self) -> tuple[Path, ...]:
        """Every source file (keys the preprocessing cache by size and mtime)."""
        return (*self.images, *(() if self.label is None else (self.label,)))

    @property
    def output_name(self) -> str:
        """The name ``segzoo infer`` writes this case's prediction under (``OUT/<output_name>.nii.gz``)."""
        return self.case_id

    @property
    def is_dicom(self) -> bool:
        """Whether the image is a DICOM series (a DICOM Segmentation can reference it)."""
        return False

    def prediction_output(self, labels: np.ndarray, affine: np.ndarray, dicom_seg: bool = False) -> CaseOutput:
        """``labels`` predicted on :meth:`load_image`'s array (whose grid is ``affine``) as written: with the first
        channel file's NIfTI header (a fresh one for a 4D file). ``dicom_seg``: also the DICOM-SEG frames (only
        DICOM cases have them)."""
        from segzoo.data.io import label_map_header

        return CaseOutput(labels, affine, label_map_header(self.image))

    def load(self) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """``(image float32 (C, *spatial), label uint8 (*spatial) or None, affine 4x4)``, checked.

        Raises:
            DataError: an unreadable file, a channel or label on another grid, a label value the dataset does not
                declare, non-integer label values, non-finite intensities; the message names the file.
        """
        channels, affine = self.load_image()
        if self.label is None:
            return channels, None, affine
        return channels, self.load_label(channels.shape[1:], affine), affine

    def load_image(self) -> tuple[np.ndarray, np.ndarray]:
        """``(image float32 (C, *spatial), affine)`` with every channel checked to be on the first one's grid."""
        if self.four_d:
            data, affine = load_nifti(self.images[0], dtype=np.float32)
            if data.ndim == 3:
                data = data[..., None]
            if data.ndim != 4:
                raise DataError(f"{self.images[0]}: expected a 4D image (X, Y, Z, channels), got shape {data.shape}")
            if data.shape[-1] != self.num_channels:
                raise DataError(
                    f"{self.images[0]}: {data.shape[-1]} channels on the last axis; the dataset declares "
                    f"{self.num_channels}"
                )
            return np.ascontiguousarray(np.moveaxis(data, -1, 0)), affine
        arrays, affine = [], None
        for path in self.images:
            data, aff = load_nifti(path, dtype=np.float32)
            if data.ndim != 3:
                raise DataError(f"{path}: expected a 3D image (one scalar volume), got shape {data.shape}")
            if affine is None:
                affine = aff
            else:
                check_same_grid(self.images[0], arrays[0].shape, affine, path, data.shape, aff, "channel")
            arrays.append(data)
        return np.stack(arrays), affine

    def load_label(self, shape: Sequence[int], affine: np.ndarray) -> np.ndarray:
        """The label map, checked against the image grid ``(shape, affine)`` and the declared values; uint8."""
        assert self.label is not None
        label, label_affine = load_nifti(self.label)
        if label.ndim != 3:
            raise DataError(f"{self.label}: expected a 3D label map, got shape {label.shape}")
        check_same_grid(self.image, shape, affine, self.label, label.shape, label_affine, "label")
        if not np.issubdtype(label.dtype, np.integer) and not np.array_equal(label, np.round(label)):
            raise DataError(f"{self.label}: non-integer label values; expected class indices")
        values = np.unique(label)
        if self.label_values is not None:
            extra = sorted(set(int(v) for v in values) - set(self.label_values))
            if extra:
                raise DataError(
                    f"{self.label}: label values {extra} not declared in the dataset's labels {list(self.label_values)}"
                )
        if values.size and (values.min() < 0 or values.max() > 255):
            raise DataError(f"{self.label}: label values outside 0..255 ({values.min()}..{values.max()})")
        return label.astype(np.uint8, copy=False)


def grid_difference(ref_shape, ref_affine, shape, affine, atol: float = GEOMETRY_ATOL) -> tuple[str | None, str | None]:
    """``(error, warning)`` comparing a grid with a reference one, as nnU-Net's integrity check does: another shape or
    voxel spacing is an error; the same shape and spacing with another origin or direction is a warning (nnU-Net
    accepts it and trains on the voxels; the reference grid is the one written back)."""
    if tuple(shape) != tuple(ref_shape):
        return f"shape {tuple(shape)} differs from {tuple(ref_shape)}", None
    ref_affine, affine = np.asarray(ref_affine, dtype=np.float64), np.asarray(affine, dtype=np.float64)
    ref_sp, sp = np.linalg.norm(ref_affine[:3, :3], axis=0), np.linalg.norm(affine[:3, :3], axis=0)
    if not np.allclose(ref_sp, sp, rtol=1e-4, atol=atol):
        return f"voxel spacing {np.round(sp, 4).tolist()} differs from {np.round(ref_sp, 4).tolist()} mm", None
    if not np.allclose(ref_affine, affine, atol=atol):
        worst = float(np.abs(ref_affine - affine).max())
        return None, f"origin/direction differ by up to {worst:.3g} (same shape and spacing: the voxels are used)"
    return None, None


def check_same_grid(
    ref_path: Path, ref_shape, ref_affine, path: Path, shape, affine, what: str, atol: float = GEOMETRY_ATOL
) -> None:
    """:class:`DataError` naming both files when ``path`` is not on the grid of ``ref_path`` (shape or spacing); a
    logged warning when only origin or direction differ (:func:`grid_difference`)."""
    error, warning = grid_difference(ref_shape, ref_affine, shape, affine, atol)
    if error is not None:
        raise DataError(f"{path}: {what} {error} of {ref_path} (not on one grid)")
    if warning is not None:
        log.warning("%s: %s %s of %s", path, what, warning, ref_path)


@dataclass
class DatasetSource:
    """A dataset read from its layout: channels, labels, training and test cases.

    Args:
        root: the dataset folder (or the datalist file).
        kind: ``"nnunet"``, ``"msd"``, ``"datalist"``, ``"kits19"``, ``"brats"`` or ``"chaos"``.
        name: the dataset's name (dataset.json ``name``, else the folder's name).
        channel_names: one name per input channel (``"CT"``, ``"T2"``, ``"noNorm"`` ...); they choose the
            normalisation (:mod:`segzoo.data.planning`).
        labels: ``{value: name}``, background (0) included, sorted by value.
        training: the labelled cases.
        test: the cases without labels (``imagesTs``, the Decathlon's ``test`` list).
        num_training: the count dataset.json declares (``numTraining``), checked by ``segzoo verify``.
        file_ending: the image files' suffix (nnU-Net's ``file_ending``).
        regions: nnU-Net region labels: ``{name: [values]}`` for every label given as a list, else ``None``.
        regions_class_order: nnU-Net's ``regions_class_order`` (the value each region paints, in painting order).
        problems: problems found while listing (a missing channel file, a case without image), one line each;
            :func:`segzoo.data.verify.verify_dataset` reports them, :meth:`check` raises the first.
        dropped_training: the ids of the training cases the reader found (or the layout lists) but left out of
            ``training`` (a missing channel, label or file; each also has its ``problems`` line): they still count
            against ``num_training``, as nnU-Net counts them.
        labels_declared_by: what declares the label values, as a problem line names it (``"the BraTS labels"``);
            ``None``: the dataset's metadata file (``dataset.json``, the datalist).
    """

    root: Path
    kind: str
    name: str
    channel_names: list[str]
    labels: dict[int, str]
    training: list[ImageCase]
    test: list[ImageCase] = field(default_factory=list)
    num_training: int | None = None
    file_ending: str = ".nii.gz"
    regions: dict[str, list[int]] | None = None
    regions_class_order: list[int] | None = None
    problems: list[str] = field(default_factory=list)
    dropped_training: list[str] = field(default_factory=list)
    labels_declared_by: str | None = None

    @property
    def in_channels(self) -> int:
        return len(self.channel_names)

    @property
    def num_classes(self) -> int:
        """Output channels of a net: the regions (sigmoid) or the labels, background included (softmax)."""
        return len(self.regions) if self.regions else len(self.labels)

    @property
    def label_names(self) -> dict[int, str]:
        return dict(self.labels)

    def check(self) -> None:
        """Raise the first listing problem as a :class:`DataError` (the full list is ``segzoo verify``'s)."""
        if self.problems:
            more = f" (+{len(self.problems) - 1} more problems; `segzoo verify {self.root}` lists them)"
            raise DataError(self.problems[0] + (more if len(self.problems) > 1 else ""))

    def summary(self) -> dict[str, Any]:
        """Plain data for printing and for the run folder."""
        return {
            "root": str(self.root),
            "kind": self.kind,
            "name": self.name,
            "channel_names": list(self.channel_names),
            "labels": {str(k): v for k, v in self.labels.items()},
            "regions": self.regions,
            "num_training": len(self.training),
            "num_test": len(self.test),
        }
