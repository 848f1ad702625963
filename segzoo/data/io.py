"""Reading and writing medical images with one clear error per bad file, and atomic writes.

Data from other tools is normal input: any scalar dtype, ``.nii`` / ``.nii.gz`` in any letter case, a 3D image
stored as ``(X, Y, Z, 1)``, NIfTI-1 or NIfTI-2. A label map is written with the header of the image it was
predicted from (qform and sform with their codes, units, pixdim, description): only the data type (``uint8``),
the scaling (``scl_slope``/``scl_inter``) and the display window (``cal_min``/``cal_max``, which an intensity window
would make labels invisible in) change, so the output overlays its input in any viewer (ITK-SNAP, 3D Slicer and
SimpleITK read the qform or the sform depending on their codes; keeping both keeps every reader on the input's grid).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from segzoo.utils import DataError, atomic_path

NIFTI_SUFFIXES = (".nii.gz", ".nii")
_FLOAT32_MAX = float(np.finfo(np.float32).max)


class Case(Protocol):
    """One case of a dataset as the generic data code sees it (fingerprint, preprocessing cache): an id, the source
    files (their size and mtime key the cache) and a checked reader. :class:`segzoo.data.kits19.KiTS19Case` is one."""

    case_id: str
    image: Path
    label: Path | None

    def load(self) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """``(image, label or None, affine)`` of the case, checked by its dataset's reader."""
        ...


def read_json(path: Path, what: str) -> Any:
    """The JSON content of ``path``; :class:`DataError` naming the file and ``what`` it is when missing or invalid."""
    if not path.is_file():
        raise DataError(f"{path}: {what} not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: {what} is not valid JSON ({e})") from None


def is_nifti_name(path: str | os.PathLike) -> bool:
    """True for ``*.nii`` / ``*.nii.gz`` in any letter case (``CT.NII.GZ`` included)."""
    return Path(path).name.lower().endswith(NIFTI_SUFFIXES)


def strip_nifti_suffix(name: str) -> str:
    """``name`` without its ``.nii`` / ``.nii.gz`` suffix (any letter case)."""
    lower = name.lower()
    for suffix in NIFTI_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _scalar_check(path: Path, img: Any) -> None:
    """Refuse RGB, vector and complex images with the type they are (before reading any voxel)."""
    dtype = img.get_data_dtype()
    header = img.header
    kind = None
    if dtype.fields is not None:  # RGB24 / RGBA32: structured dtype
        first = next(iter(dtype.fields.values()))[0]
        kind = {3: "RGB", 4: "RGBA"}.get(len(dtype.fields), "structured") + f" ({len(dtype.fields)} x {first.name})"
    elif dtype.kind == "c":
        kind = f"complex ({dtype.name})"
    else:
        try:
            intent = header.get_intent()[0]
        except Exception:  # unknown intent code: not our business
            intent = None
        shape = img.shape
        if intent in (
            "vector",
            "rgb vector",
            "rgba vector",
            "symmetric matrix",
            "general matrix",
            "displacement vector",
        ):
            kind = f"{intent} (intent, shape {shape})"
        elif len(shape) > 4 and int(np.prod(shape[4:])) > 1:
            kind = f"vector / multi-component (shape {shape})"
    if kind is not None:
        raise DataError(f"{path}: expected a scalar image, got {kind}; split it into scalar volumes first")


def _squeezed_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """``(X, Y, Z, 1)`` (or more trailing length-1 axes) -> ``(X, Y, Z)``; other shapes unchanged."""
    shape = tuple(shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    return shape


def _squeeze_trailing(data: np.ndarray) -> np.ndarray:
    return data.reshape(_squeezed_shape(data.shape))


def load_nifti_with_header(path: str | os.PathLike, dtype: type | None = None) -> tuple[np.ndarray, np.ndarray, Any]:
    """Read a NIfTI file fully into memory, with a copy of its header.

    Args:
        path: ``.nii`` or ``.nii.gz`` file (any letter case).
        dtype: if given, cast the data to it (``np.float32`` for images); otherwise keep the on-disk dtype (after the
            header's scaling, as nibabel applies it).

    Returns:
        ``(array, affine, header)``: the array in on-disk voxel order (trailing length-1 axes beyond the third
        dropped, so ``(X, Y, Z, 1)`` reads as 3D), the 4x4 affine (nibabel's choice: sform, else qform) and the
        header (NIfTI-1 or NIfTI-2), to write a result on the same grid with :func:`save_nifti`.

    Raises:
        DataError: missing, truncated or corrupt file; an RGB, vector or complex image ("expected a scalar image, got
            <type>"); non-finite intensities; finite values beyond float32 when ``dtype`` is float32.
    """
    import nibabel as nib

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    with tempfile.TemporaryDirectory(prefix="segzoo-nifti-") as tmp:
        source = str(path)
        if is_nifti_name(path) and not path.name.endswith(NIFTI_SUFFIXES):
            # nibabel finds the file type from a lower-case suffix (and rewrites "Ct.Nii" to "Ct.nii"): read
            # ".NII.GZ" / ".Nii" files through a lower-case link
            source = os.path.join(tmp, "image.nii.gz" if path.name.lower().endswith(".gz") else "image.nii")
            os.symlink(path.resolve(), source)
        try:
            img = nib.load(source)
        except Exception as e:  # nibabel/gzip raise many types for a damaged header
            raise DataError(
                f"{path}: cannot read NIfTI ({type(e).__name__}: {e}); the file is corrupt or truncated"
            ) from None
        if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
            raise DataError(f"{path}: {type(img).__name__} file; expected a single-file NIfTI (.nii or .nii.gz)")
        _scalar_check(path, img)
        try:
            data = np.asarray(img.dataobj)
        except Exception as e:  # truncated data / bad gzip stream
            raise DataError(
                f"{path}: cannot read NIfTI ({type(e).__name__}: {e}); the file is corrupt or truncated"
            ) from None
    data = _squeeze_trailing(data)
    if np.issubdtype(data.dtype, np.floating):
        finite = np.isfinite(data)
        if not finite.all():
            bad = int((~finite).sum())
            raise DataError(f"{path}: {bad} non-finite (NaN/inf) voxel values; expected finite intensities")
        if dtype is not None and np.dtype(dtype) == np.float32 and data.dtype.itemsize > 4 and data.size:
            peak = float(np.abs(data).max())
            if peak > _FLOAT32_MAX:
                raise DataError(
                    f"{path}: intensities up to {peak:.3g} exceed float32 range (+-{_FLOAT32_MAX:.3g}); "
                    "expected values a float32 can hold (rescale the image)"
                )
    if dtype is not None:
        data = data.astype(dtype, copy=False)
    return data, np.asarray(img.affine, dtype=np.float64), img.header.copy()


def read_nifti_header(path: str | os.PathLike) -> Any:
    """A copy of the header of a NIfTI file (any letter case of ``.nii`` / ``.nii.gz``), without reading its voxels.

    Raises:
        DataError: missing or unreadable file, or not a single-file NIfTI.
    """
    import nibabel as nib

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    with tempfile.TemporaryDirectory(prefix="segzoo-nifti-") as tmp:
        source = str(path)
        if is_nifti_name(path) and not path.name.endswith(NIFTI_SUFFIXES):  # nibabel wants a lower-case suffix
            source = os.path.join(tmp, "image.nii.gz" if path.name.lower().endswith(".gz") else "image.nii")
            os.symlink(path.resolve(), source)
        try:
            img = nib.load(source)
        except Exception as e:  # nibabel/gzip raise many types for a damaged header
            raise DataError(f"{path}: cannot read NIfTI header ({type(e).__name__}: {e})") from None
        if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
            raise DataError(f"{path}: {type(img).__name__} file; expected a single-file NIfTI (.nii or .nii.gz)")
        return img.header.copy()


def label_map_header(path: str | os.PathLike) -> Any | None:
    """The header a label map predicted on the grid of NIfTI file ``path`` is written with (qform, sform and their
    codes kept); ``None`` for a 4D file, whose intent and dimensions do not describe a label map (write a fresh 3D
    header from the affine instead)."""
    header = read_nifti_header(path)
    shape = header.get_data_shape()
    return header if len(shape) <= 3 or int(np.prod(shape[3:])) == 1 else None


def load_nifti(path: str | os.PathLike, dtype: type | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(array, affine)`` of a NIfTI file; see :func:`load_nifti_with_header` for what is accepted and refused."""
    data, affine, _ = load_nifti_with_header(path, dtype)
    return data, affine


def save_nifti(
    array: np.ndarray, affine: np.ndarray | None, path: str | os.PathLike, header: Any | None = None
) -> Path:
    """Write ``array`` to ``path`` atomically (temporary file in the same folder, then rename).

    Args:
        array: voxel data, in the voxel order of ``affine`` / ``header``.
        affine: 4x4 voxel-to-world matrix, written as qform and sform with code 1 (scanner); ignored when ``header``
            is given.
        path: ``.nii`` or ``.nii.gz`` output.
        header: the NIfTI header of the image ``array`` was computed from: written unchanged (qform, sform, their
            codes, units, pixdim, description) except for the data type (the array's), the scaling (reset to none)
            and the display window (reset), so the output overlays that image exactly. ``array`` may drop
            trailing length-1 axes of the header's shape (``(X, Y, Z)`` for a ``(X, Y, Z, 1)`` input): they are
            restored, so the output has the input's shape.
    """
    import nibabel as nib

    path = Path(path)
    suffix = ".nii.gz" if path.name.lower().endswith(".nii.gz") else ".nii"
    array = np.asarray(array)
    if header is None:
        img = nib.Nifti1Image(array, np.asarray(affine, dtype=np.float64))
        img.set_qform(img.affine, code=1)
        img.set_sform(img.affine, code=1)
    else:
        hdr = header.copy()
        shape = tuple(int(s) for s in hdr.get_data_shape())
        if array.shape != shape and _squeezed_shape(shape) == array.shape:
            array = array.reshape(shape)
        hdr.set_data_dtype(array.dtype)
        klass = nib.Nifti2Image if isinstance(hdr, nib.Nifti2Header) else nib.Nifti1Image
        img = klass(array, None, hdr)  # no affine: the header's qform/sform and codes stay as they are
        img.header.set_slope_inter(1.0, 0.0)
        img.header["cal_min"] = 0
        img.header["cal_max"] = 0
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
