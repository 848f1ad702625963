"""Reading and writing medical images with one clear error per bad file, and atomic writes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from segzoo.utils import atomic_path


class DataError(ValueError):
    """Bad input data: the message names the file (or case) and says what was expected."""


def load_nifti(path: str | os.PathLike, dtype: type | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read a NIfTI file fully into memory.

    Args:
        path: ``.nii`` or ``.nii.gz`` file.
        dtype: if given, cast the data to it (``np.float32`` for images); otherwise keep the on-disk dtype.

    Returns:
        ``(array, affine)`` with the array in on-disk voxel order and the 4x4 affine.

    Raises:
        DataError: missing, truncated or corrupt file, or non-finite intensities.
    """
    import nibabel as nib

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj)
        if dtype is not None:
            data = data.astype(dtype, copy=False)
    except Exception as e:  # nibabel/gzip/zlib raise many types for truncated or corrupt files
        raise DataError(
            f"{path}: cannot read NIfTI ({type(e).__name__}: {e}); the file is corrupt or truncated"
        ) from None
    if np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
        bad = int((~np.isfinite(data)).sum())
        raise DataError(f"{path}: {bad} non-finite (NaN/inf) voxel values; expected finite intensities")
    return data, np.asarray(img.affine, dtype=np.float64)


def save_nifti(array: np.ndarray, affine: np.ndarray, path: str | os.PathLike) -> Path:
    """Write ``array`` with ``affine`` to ``path`` atomically (temporary file in the same folder, then rename)."""
    import nibabel as nib

    path = Path(path)
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else ".nii"
    img = nib.Nifti1Image(np.asarray(array), np.asarray(affine, dtype=np.float64))
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    with atomic_path(path, suffix=f".tmp{suffix}") as tmp:
        nib.save(img, str(tmp))
    return path


def check_same_geometry(
    image_path: Path,
    image_shape,
    image_affine,
    label_path: Path,
    label_shape,
    label_affine,
    atol: float = 1e-3,
) -> None:
    """Raise :class:`DataError` naming both files when image and label differ in shape or affine."""
    if tuple(image_shape) != tuple(label_shape):
        raise DataError(
            f"{label_path}: label shape {tuple(label_shape)} differs from image {image_path} shape {tuple(image_shape)}"
        )
    if not np.allclose(image_affine, label_affine, atol=atol):
        raise DataError(f"{label_path}: label affine differs from image {image_path} affine (not co-registered)")


def check_label_values(path: Path, label: np.ndarray, allowed: set[int]) -> None:
    """Raise :class:`DataError` if ``label`` holds values outside ``allowed``."""
    values = set(np.unique(label).tolist())
    extra = values - set(allowed)
    if extra:
        raise DataError(f"{path}: unexpected label values {sorted(extra)}; expected a subset of {sorted(allowed)}")
