"""KiTS19 reader: the official layout as-is (``case_XXXXX/imaging.nii.gz`` and ``segmentation.nii.gz``).

Reference: Heller et al., "The KiTS19 challenge data" (arXiv:1904.00445). Arrays are ``(slices, H, W)`` with a non-RAS
affine whose first column carries the slice thickness; labels 0 background, 1 kidney, 2 tumour. Cases without
``segmentation.nii.gz`` (KiTS19 cases 210-299) are inference-only. See ``docs/data/kits19.md``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segzoo.data.io import (
    DataError,
    check_label_values,
    check_same_geometry,
    is_nifti_name,
    load_nifti,
    strip_nifti_suffix,
)

KITS19_LABELS = {0: "background", 1: "kidney", 2: "tumour"}
IMAGE_NAME = "imaging.nii.gz"
LABEL_NAME = "segmentation.nii.gz"


@dataclass(frozen=True)
class KiTS19Case:
    """One case folder.

    Args:
        case_id: folder name, e.g. ``"case_00042"``.
        image: path of ``imaging.nii.gz``.
        label: path of ``segmentation.nii.gz``, or ``None`` for an inference-only case.
    """

    case_id: str
    image: Path
    label: Path | None = None

    def load(self) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """``(image, label or None, affine)``, checked: :func:`load_kits19_case`."""
        return load_kits19_case(self)


def find_kits19_cases(data_dir: str | os.PathLike) -> list[KiTS19Case]:
    """List the cases of a KiTS19 data folder, sorted by case id.

    Args:
        data_dir: folder holding ``case_XXXXX/`` sub-folders.

    ``imaging`` / ``segmentation`` may be ``.nii.gz`` or ``.nii`` in any letter case.

    Raises:
        DataError: the folder is missing, holds no ``case_*`` folder, or a case folder lacks ``imaging.nii.gz``.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: KiTS19 data folder not found; expected a folder of case_XXXXX/ sub-folders")
    folders = sorted(p for p in data_dir.iterdir() if p.is_dir() and p.name.startswith("case_"))
    if not folders:
        raise DataError(
            f"{data_dir}: no case_XXXXX/ folders found; expected case_XXXXX/{IMAGE_NAME} (+ {LABEL_NAME}) per case"
        )
    cases = []
    for folder in folders:
        image = case_file(folder, "imaging")
        if image is None:
            raise DataError(f"{folder / IMAGE_NAME}: missing; every KiTS19 case folder must hold {IMAGE_NAME}")
        cases.append(KiTS19Case(folder.name, image, case_file(folder, "segmentation")))
    return cases


def case_file(folder: Path, stem: str) -> Path | None:
    """``folder/<stem>.nii.gz`` or ``.nii``, in any letter case (``IMAGING.NII.GZ`` too); ``None`` if absent."""
    found = sorted(
        p for p in folder.iterdir() if p.is_file() and is_nifti_name(p) and strip_nifti_suffix(p.name).lower() == stem
    )
    return found[0] if found else None


def load_kits19_case(case: KiTS19Case) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Read and check one case.

    Returns:
        ``(image float32 (D, H, W), label uint8 (D, H, W) or None, affine 4x4)``.

    Raises:
        DataError: corrupt/truncated NIfTI, non-finite intensities, image/label shape or affine mismatch, label values
            outside {0, 1, 2} or non-integer label values, or a non-3D array; the message names the file.
    """
    image, affine = load_nifti(case.image, dtype=np.float32)
    if image.ndim != 3:
        raise DataError(f"{case.image}: expected a 3D (slices, H, W) volume, got shape {image.shape}")
    if case.label is None:
        return image, None, affine
    label, label_affine = load_nifti(case.label)
    check_same_geometry(case.image, image.shape, affine, case.label, label.shape, label_affine)
    if not np.issubdtype(label.dtype, np.integer):
        if not np.array_equal(label, np.round(label)):
            raise DataError(f"{case.label}: non-integer label values; expected class indices {sorted(KITS19_LABELS)}")
    if label.size and not (0 <= label.min() and label.max() <= max(KITS19_LABELS)):  # fast check; unique() sorts
        check_label_values(case.label, label, set(KITS19_LABELS))
    return image, label.astype(np.uint8, copy=False), affine
