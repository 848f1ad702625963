"""A DICOM series of single-frame slices (CT, MR, ...) read into one volume with its true geometry.

A hospital export is a folder of files (any names, ``.dcm`` or none) holding one or several series (a study).
:func:`load_dicom_series` groups the files by ``SeriesInstanceUID``, refuses a folder of several series unless one is
picked (the refusal lists them, one line each), orders the slices by ``ImagePositionPatient`` along the slice normal
(``ImageOrientationPatient`` row x column direction; file names and ``InstanceNumber`` are not trusted), and returns

- ``image``: float32 ``(columns, rows, slices)``, ``RescaleSlope``/``RescaleIntercept`` applied (Hounsfield units for
  CT): ITK's index order, the order dcm2niix and the CHAOS path of ``segzoo infer`` write NIfTI files in;
- ``affine``: the NIfTI (RAS) voxel-to-world matrix of that array, as :func:`segzoo.data.io.load_nifti` gives for a
  NIfTI file: axis 0 along a row by ``PixelSpacing[1]``, axis 1 down a column by ``PixelSpacing[0]``, axis 2 along the
  slice normal by the spacing of the positions (not ``SliceThickness``), origin at the first slice's position; DICOM's
  LPS becomes RAS by negating x and y. SimpleITK's ``ImageSeriesReader`` gives the same grid (tests check it).

What cannot be one volume is refused with one line naming the folder or file: several series, slices of different
size, spacing or orientation, two slices at one position, missing or unevenly spaced slices, a gantry tilt (positions
that drift in-plane from slice to slice), multi-frame or colour files, missing geometry tags. Compressed transfer
syntaxes are decoded by pydicom's plugins, with :func:`segzoo.data.chaos.decoder_hint` naming what is missing.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from segzoo.data.io import DataError, is_nifti_name

# two slices of one series must agree this closely in orientation (direction cosines) and pixel spacing (relative)
ORIENTATION_ATOL = 1e-4
PIXEL_SPACING_RTOL = 1e-3
# consecutive slice steps may differ from their median by this fraction (or SPACING_ATOL_MM): a missing slice is a 100%
# step, rounding of positions written with few decimals stays far below it
SPACING_RTOL = 0.02
SPACING_ATOL_MM = 1e-2
# a slice may sit this fraction of the smallest pixel spacing off the line through the first slice along the normal
TILT_TOL_PIXELS = 0.05


class DicomSeries(NamedTuple):
    """One series read as a volume.

    Attributes:
        image: float32 ``(columns, rows, slices)``, rescale slope/intercept applied.
        affine: ``(4, 4)`` NIfTI (RAS) voxel-to-world matrix of ``image``.
        files: the slice files, in volume order (ascending along the slice normal, ``image[..., k]`` is ``files[k]``).
        headers: the slices' pydicom datasets without pixel data, in the same order (what a DICOM-SEG references).
        series_uid: ``SeriesInstanceUID``.
    """

    image: np.ndarray
    affine: np.ndarray
    files: list[Path]
    headers: list[Any]
    series_uid: str


class SeriesInfo(NamedTuple):
    """One series found under a folder: its UID, what identifies it to a person, and its image files."""

    uid: str
    modality: str
    number: str
    description: str
    files: list[Path]

    def line(self, root: Path) -> str:
        """``UID  CT  #3  'ABDOMEN'  120 files in sub/folder``: how a refusal lists it."""
        folders = sorted({str(f.parent.relative_to(root)) if f.parent != root else "." for f in self.files})
        where = folders[0] if len(folders) == 1 else f"{len(folders)} folders"
        return (
            f"{self.uid}  {self.modality or '?'}  #{self.number or '?'}  {self.description!r}  "
            f"{len(self.files)} file{'s' if len(self.files) != 1 else ''} in {where}"
        )


def _is_dicom_file(path: Path) -> bool:
    """``.dcm`` files, and files of any name with the ``DICM`` marker after the 128-byte preamble."""
    if path.suffix.lower() == ".dcm":
        return True
    if is_nifti_name(path) or path.name.startswith("."):
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM"


def dicom_files(root: str | os.PathLike) -> list[Path]:
    """DICOM files under ``root`` (recursively, sorted by path): ``.dcm`` names and files with the ``DICM`` marker."""
    root = Path(root)
    found = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(p for p in (Path(folder) / n for n in sorted(names)) if p.is_file() and _is_dicom_file(p))
    return found


def is_dicom_folder(root: str | os.PathLike) -> bool:
    """True when ``root`` is a folder holding DICOM files (at any depth) and no NIfTI file at its top."""
    root = Path(root)
    if not root.is_dir() or any(p.is_file() and is_nifti_name(p) for p in root.iterdir()):
        return False
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        if any(_is_dicom_file(Path(folder) / n) for n in names):
            return True
    return False


def _read_header(path: Path):
    """The header of ``path`` (no pixel data); files without the file meta header (old exports) are read too."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        try:
            return pydicom.dcmread(path, stop_before_pixels=True)
        except InvalidDicomError:  # no preamble / file meta: read as a raw data set when it holds DICOM elements
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
            if "SOPClassUID" not in ds:
                raise
            return ds
    except Exception as e:  # InvalidDicomError, truncated header...
        reason = " ".join(f"{type(e).__name__}: {e}".split())
        raise DataError(f"{path}: cannot read DICOM ({reason}); the file is corrupt or not DICOM") from None


def _sop_class(ds: Any) -> str:
    meta = getattr(ds, "file_meta", None)
    return str(ds.get("SOPClassUID", None) or (meta.get("MediaStorageSOPClassUID", "") if meta is not None else ""))


def _is_image(path: Path, ds: Any) -> bool:
    """True for an image; False for what holds no pixels (DICOMDIR, reports, RT structure sets); a DataError for a
    file of an image storage class whose header stops before its image attributes (a truncated file)."""
    if "Rows" in ds and "SeriesInstanceUID" in ds:
        return True
    from pydicom.uid import UID

    sop = _sop_class(ds)
    if sop and "Image Storage" in UID(sop).name:
        missing = [k for k in ("SeriesInstanceUID", "Rows") if k not in ds]
        raise DataError(
            f"{path}: a {UID(sop).name} file without {' and '.join(missing)}; the file is corrupt or truncated"
        )
    return False


def list_series(root: str | os.PathLike) -> tuple[list[SeriesInfo], dict[Path, Any]]:
    """The image series under ``root`` (by ``SeriesNumber``, then UID) and the header of every image file.

    Files without pixel rows (DICOMDIR, structured reports, RT structure sets) are not images and are left out.

    Raises:
        DataError: ``root`` missing or holding no DICOM image; a DICOM file that cannot be read (named).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: DICOM folder not found")
    headers: dict[Path, Any] = {}
    groups: dict[str, list[Path]] = {}
    for path in dicom_files(root):
        ds = _read_header(path)
        if not _is_image(path, ds):
            continue
        headers[path] = ds
        groups.setdefault(str(ds.SeriesInstanceUID), []).append(path)
    if not groups:
        raise DataError(f"{root}: no DICOM image files (*.dcm or files with the DICM marker) found")
    series = []
    for uid, files in groups.items():
        first = headers[files[0]]
        series.append(
            SeriesInfo(
                uid,
                str(first.get("Modality", "") or ""),
                str(first.get("SeriesNumber", "") or ""),
                str(first.get("SeriesDescription", "") or ""),
                files,
            )
        )

    def order(s: SeriesInfo):
        return (0, int(s.number), s.uid) if s.number.lstrip("-").isdigit() else (1, 0, s.uid)

    return sorted(series, key=order), headers


def pick_series(root: str | os.PathLike, series_uid: str | None = None) -> tuple[SeriesInfo, dict[Path, Any]]:
    """The one series of ``root``, or the one ``series_uid`` names; with the headers of ``root``'s image files.

    Raises:
        DataError: several series and no ``series_uid`` (the message lists them, one line each), or no series with
            ``series_uid``.
    """
    root = Path(root)
    series, headers = list_series(root)
    if series_uid is not None:
        chosen = [s for s in series if s.uid == series_uid]
        if not chosen:
            listing = "\n".join(f"  {s.line(root)}" for s in series)
            raise DataError(f"{root}: no DICOM series with SeriesInstanceUID {series_uid}; found:\n{listing}")
        return chosen[0], headers
    if len(series) > 1:
        listing = "\n".join(f"  {s.line(root)}" for s in series)
        raise DataError(
            f"{root}: {len(series)} DICOM series (a study folder?); pick one by its SeriesInstanceUID "
            f"(segzoo infer --series UID):\n{listing}"
        )
    return series[0], headers


def _floats(ds: Any, keyword: str, n: int, path: Path) -> np.ndarray:
    value = ds.get(keyword)
    try:
        out = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        out = np.empty(0)
    if out.shape != (n,) or not np.all(np.isfinite(out)):
        raise DataError(f"{path}: missing or invalid {keyword} ({value!r}); expected {n} numbers to place the slice")
    return out


def _check_slices(files: Sequence[Path], headers: Sequence[Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(orientation (6,), pixel spacing (2,), positions (N, 3))`` of slices that can form one volume."""
    first = files[0]
    ref = headers[0]
    iop = _floats(ref, "ImageOrientationPatient", 6, first)
    spacing = _floats(ref, "PixelSpacing", 2, first)
    if np.any(spacing <= 0):
        raise DataError(f"{first}: PixelSpacing {spacing.tolist()} must be positive")
    rows, cols = int(ref.Rows), int(ref.Columns)
    positions = []
    for path, ds in zip(files, headers):
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        if frames > 1:
            raise DataError(
                f"{path}: a multi-frame file ({frames} frames, {ds.get('SOPClassUID', 'unknown SOP class')}); expected "
                "one slice per file (export the series as single-frame images)"
            )
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        if samples != 1:
            raise DataError(
                f"{path}: expected a greyscale slice, got {ds.get('PhotometricInterpretation', 'colour')} "
                f"({samples} samples per pixel)"
            )
        if (int(ds.Rows), int(ds.Columns)) != (rows, cols):
            raise DataError(
                f"{path}: slice size {int(ds.Rows)}x{int(ds.Columns)} (rows x columns) differs from {first.name} "
                f"{rows}x{cols}; a series of mixed sizes is not one volume"
            )
        o = _floats(ds, "ImageOrientationPatient", 6, path)
        if not np.allclose(o, iop, atol=ORIENTATION_ATOL):
            raise DataError(
                f"{path}: ImageOrientationPatient {np.round(o, 4).tolist()} differs from {first.name} "
                f"{np.round(iop, 4).tolist()}; a series of mixed orientations (e.g. with localizers) is not one volume"
            )
        s = _floats(ds, "PixelSpacing", 2, path)
        if not np.allclose(s, spacing, rtol=PIXEL_SPACING_RTOL, atol=0):
            raise DataError(
                f"{path}: PixelSpacing {s.tolist()} differs from {first.name} {spacing.tolist()}; a series of mixed "
                "pixel spacings is not one volume"
            )
        positions.append(_floats(ds, "ImagePositionPatient", 3, path))
    return iop, spacing, np.stack(positions)


def _check_stack(files: Sequence[Path], positions: np.ndarray, normal: np.ndarray, pixel_mm: float) -> float:
    """The slice step in mm of positions sorted along ``normal``; DataError for duplicates, gaps, uneven steps, tilt."""
    along = positions @ normal
    steps = np.diff(along)
    for i in np.flatnonzero(steps < SPACING_ATOL_MM):
        raise DataError(
            f"{files[i + 1]}: at the same position along the slice normal as {files[i].name} ({along[i]:.3f} mm); "
            "two slices at one position (several acquisitions, echoes or phases in one series?) are not one volume"
        )
    step = float(np.median(steps))
    off = np.abs(steps - step) > max(SPACING_RTOL * step, SPACING_ATOL_MM)
    if off.any():
        i = int(np.flatnonzero(off)[0])
        what = "a missing slice" if steps[i] > 1.5 * step else "uneven spacing"
        raise DataError(
            f"{files[i + 1]}: {steps[i]:.3f} mm along the slice normal from {files[i].name}, the series steps "
            f"{step:.3f} mm ({what}); expected evenly spaced slices"
        )
    # in-plane drift of each slice from the line through the first slice along the normal: a gantry tilt shears the
    # stack (each slice shifted by the same amount more), which a NIfTI affine of orthogonal axes cannot hold
    drift = positions - positions[0] - np.outer(along - along[0], normal)
    shift = np.linalg.norm(drift, axis=1)
    worst = int(np.argmax(shift))
    if shift[worst] > TILT_TOL_PIXELS * pixel_mm:
        angle = float(np.degrees(np.arctan2(shift[worst], along[worst] - along[0])))
        raise DataError(
            f"{files[worst]}: shifted {shift[worst]:.3f} mm in-plane over {along[worst] - along[0]:.3f} mm along the "
            f"slice normal from {files[0].name} (gantry tilt of {angle:.2f} degrees, or a sheared stack); resample the "
            "series to an orthogonal grid first (e.g. dcm2niix corrects gantry tilt)"
        )
    return float((along[-1] - along[0]) / (len(along) - 1))


def series_affine_ras(iop: np.ndarray, pixel_spacing: np.ndarray, origin: np.ndarray, step: np.ndarray) -> np.ndarray:
    """NIfTI (RAS) affine of a ``(columns, rows, slices)`` array.

    Args:
        iop: ``ImageOrientationPatient`` (row direction, then column direction, LPS).
        pixel_spacing: ``PixelSpacing`` (between rows, between columns) in mm.
        origin: ``ImagePositionPatient`` of the first slice (LPS, mm).
        step: LPS vector from one slice to the next.
    """
    lps = np.eye(4)
    lps[:3, 0] = iop[:3] * pixel_spacing[1]
    lps[:3, 1] = iop[3:] * pixel_spacing[0]
    lps[:3, 2] = step
    lps[:3, 3] = origin
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def load_dicom_series(root: str | os.PathLike, series_uid: str | None = None) -> DicomSeries:
    """Read the series in folder ``root`` (or the one ``series_uid`` picks from a study folder) as a volume.

    Args:
        root: a folder of DICOM files, searched recursively (any file names).
        series_uid: the ``SeriesInstanceUID`` to read when ``root`` holds several series.

    Returns:
        :class:`DicomSeries`: ``image`` ``(columns, rows, slices)`` float32 and its RAS ``affine``, see the module
        docstring.

    Raises:
        DataError: one line naming the folder or file (the study refusal lists one line per series) for what cannot
            be a volume; see the module docstring.
    """
    from segzoo.data.chaos import _read_slice  # pydicom decoding with the decoder hint of each transfer syntax

    root = Path(root)
    info, headers = pick_series(root, series_uid)
    files = info.files
    if len(files) < 2:
        raise DataError(f"{files[0]}: the only slice of series {info.uid}; a volume needs at least 2 slices")
    iop, pixel_spacing, positions = _check_slices(files, [headers[f] for f in files])
    row_dir, col_dir = iop[:3], iop[3:]
    if abs(np.dot(row_dir, col_dir)) > 1e-3 or not np.allclose(
        np.linalg.norm([row_dir, col_dir], axis=1), 1, atol=1e-3
    ):
        raise DataError(
            f"{files[0]}: ImageOrientationPatient {iop.tolist()} is not two orthogonal unit vectors; the file is damaged"
        )
    normal = np.cross(row_dir, col_dir)
    order = np.argsort(positions @ normal, kind="stable")
    files = [files[i] for i in order]
    positions = positions[order]
    step_mm = _check_stack(files, positions, normal, float(pixel_spacing.min()))
    slices = []
    for f in files:
        _, pixels = _read_slice(f)
        if pixels.shape != (int(headers[f].Rows), int(headers[f].Columns)):
            raise DataError(
                f"{f}: pixel data of shape {pixels.shape} for Rows x Columns {headers[f].Rows}x{headers[f].Columns}"
            )
        slices.append(pixels)
    image = np.ascontiguousarray(np.stack(slices, axis=-1).transpose(1, 0, 2))  # (rows, cols, S) -> (cols, rows, S)
    affine = series_affine_ras(iop, pixel_spacing, positions[0], normal * step_mm)
    return DicomSeries(image, affine, files, [headers[f] for f in files], info.uid)
