"""CHAOS MR reader: DICOM series + 8-bit PNG ground truth, in the layout of the released training set.

Dataset: Kavur et al., "CHAOS Challenge - combined (CT-MR) healthy abdominal organ segmentation", MedIA 2021;
used by You et al., "DR-Net: dual-rotation network with feature map enhancement for medical image
segmentation", Complex & Intelligent Systems 2022.

Layout (``root`` may be the folder holding ``Train_Sets``, ``Train_Sets`` itself, or its ``MR`` folder)::

    Train_Sets/MR/<id>/T1DUAL/DICOM_anon/{InPhase,OutPhase}/*.dcm   T1DUAL/Ground/*.png
    Train_Sets/MR/<id>/T2SPIR/DICOM_anon/*.dcm                      T2SPIR/Ground/*.png

Slices follow the file names (natural sort), as the challenge defines; the PNG of slice k is the k-th PNG.
Ground-truth grey values are mapped by the official ranges: 55-70 liver (1), 110-135 right kidney (2),
175-200 left kidney (3), 240-255 spleen (4), 0 background. Any other grey value is an error by default
(``strict=True``): it means a wrong folder or a damaged mask; ``strict=False`` warns and maps it to background.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from segzoo.data.io import DataError

CHAOS_SEQUENCES = ("T1DUAL_InPhase", "T1DUAL_OutPhase", "T2SPIR")
CHAOS_CLASS_NAMES = ("background", "liver", "right_kidney", "left_kidney", "spleen")
# inclusive grey-value ranges of the official CHAOS evaluation, index = class
CHAOS_GREY_RANGES = {1: (55, 70), 2: (110, 135), 3: (175, 200), 4: (240, 255)}


class ChaosCase(NamedTuple):
    """One CHAOS series with its ground truth.

    Attributes:
        image: (S, H, W) float32 MR signal (rescale slope/intercept applied).
        label: (S, H, W) uint8 class indices 0..4 (background, liver, right kidney, left kidney, spleen).
        spacing: (slice, row, col) in mm, the order of the array axes.
        case_id: the case folder name (``"1"``, ``"2"``, ...).
    """

    image: np.ndarray
    label: np.ndarray
    spacing: tuple[float, float, float]
    case_id: str


class ChaosSeries(NamedTuple):
    """One DICOM series, stacked in file-name order (no ground truth needed).

    Attributes:
        image: (S, H, W) float32 MR signal (rescale slope/intercept applied).
        spacing: (slice, row, col) in mm.
        affine: (4, 4) NIfTI (RAS) voxel-to-world matrix of the (S, H, W) array, from ImagePositionPatient,
            ImageOrientationPatient and PixelSpacing (:func:`series_affine`).
        files: the slice files, in stacking order.
    """

    image: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray
    files: list


def natural_key(path: Path) -> list:
    """Sort key that orders ``IMG-2.dcm`` before ``IMG-10.dcm`` (and zero-padded names as usual)."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]


def _sequence_dirs(case_dir: Path, sequence: str) -> tuple[Path, Path]:
    if sequence not in CHAOS_SEQUENCES:
        raise ValueError(f"CHAOS sequence must be one of {CHAOS_SEQUENCES}, got {sequence!r}")
    if sequence == "T2SPIR":
        return case_dir / "T2SPIR" / "DICOM_anon", case_dir / "T2SPIR" / "Ground"
    phase = sequence.split("_")[1]
    return case_dir / "T1DUAL" / "DICOM_anon" / phase, case_dir / "T1DUAL" / "Ground"


def _mr_folder(root: Path) -> Path:
    for candidate in (root / "Train_Sets" / "MR", root / "MR", root):
        if candidate.is_dir() and any(
            (d / "T1DUAL").is_dir() or (d / "T2SPIR").is_dir() for d in candidate.iterdir() if d.is_dir()
        ):
            return candidate
    raise DataError(
        f"{root}: no CHAOS MR cases found; expected <root>/Train_Sets/MR/<id>/{{T1DUAL,T2SPIR}}/ "
        "(or <root>/MR/<id>/... or <root>/<id>/...)"
    )


def find_chaos_cases(root: str | os.PathLike, sequence: str = "T2SPIR") -> list[Path]:
    """Case folders of the CHAOS MR training set under ``root``, in natural id order.

    Args:
        root: the folder holding ``Train_Sets``, or ``Train_Sets``, or ``Train_Sets/MR``.
        sequence: ``"T1DUAL_InPhase"``, ``"T1DUAL_OutPhase"`` or ``"T2SPIR"``; every case must have it.

    Raises:
        DataError: ``root`` missing or holding no case, or a case folder lacking the sequence folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: CHAOS data folder not found")
    mr = _mr_folder(root)
    cases = sorted(
        (d for d in mr.iterdir() if d.is_dir() and ((d / "T1DUAL").is_dir() or (d / "T2SPIR").is_dir())),
        key=natural_key,
    )
    _sequence_dirs(mr, sequence)  # validates the name
    for case in cases:
        top = case / sequence.split("_")[0]
        if not top.is_dir():
            raise DataError(f"{top}: missing {sequence.split('_')[0]} folder; every case needs sequence {sequence}")
    return cases


# what decodes each family of compressed transfer syntaxes (pydicom's pixel-data plugins)
_DECODERS = (
    (("1.2.840.10008.1.2.4.5", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70"), "pylibjpeg-libjpeg"),  # JPEG
    (("1.2.840.10008.1.2.4.8",), "pylibjpeg-libjpeg"),  # JPEG-LS
    (("1.2.840.10008.1.2.4.9", "1.2.840.10008.1.2.4.20"), "pylibjpeg-openjpeg"),  # JPEG 2000, HTJ2K
    (("1.2.840.10008.1.2.5",), "pylibjpeg-rle (or pydicom's own RLE decoder)"),
)


def decoder_hint(uid: str) -> str:
    """What to install (or do) to decode pixel data of transfer syntax ``uid``."""
    for prefixes, package in _DECODERS:
        if any(uid.startswith(p) for p in prefixes):
            return f"install {package} (`pip install pylibjpeg {package.split()[0]}`) or python-gdcm"
    if uid.startswith("1.2.840.10008.1.2.4.1"):  # MPEG-2 / MPEG-4 / H.264 / HEVC video
        return (
            "no pydicom decoder reads video transfer syntaxes; export the series uncompressed (e.g. `gdcmconv --raw`)"
        )
    return "install python-gdcm, or export the series uncompressed (e.g. `gdcmconv --raw` or `dcmdjpeg`)"


def _read_slice(path: Path):
    """``(dataset, float32 (H, W) pixels with the rescale slope/intercept applied)`` of one DICOM slice.

    Compressed transfer syntaxes (JPEG baseline/extended/lossless, JPEG-LS, JPEG 2000, RLE) are decoded by pydicom's
    plugins (pylibjpeg with its libjpeg and openjpeg backends are dependencies of segzoo). A file that still cannot
    be decoded names its transfer syntax and what would decode it.
    """
    import pydicom

    try:
        ds = pydicom.dcmread(path)
    except Exception as e:  # InvalidDicomError, truncated header...
        raise DataError(
            f"{path}: cannot read DICOM ({type(e).__name__}: {e}); the file is corrupt or not DICOM"
        ) from None
    meta = getattr(ds, "file_meta", None)
    ts = getattr(meta, "TransferSyntaxUID", None) if meta is not None else None
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if samples > 1:
        kind = f"{ds.get('PhotometricInterpretation', 'colour')} ({samples} samples per pixel)"
        raise DataError(f"{path}: expected a scalar image, got {kind}; CHAOS series are greyscale MR")
    try:
        pixels = ds.pixel_array
    except Exception as e:  # no plugin for the transfer syntax, damaged pixel data, missing tags...
        reason = " ".join(f"{type(e).__name__}: {e}".split())
        if len(reason) > 300:
            reason = reason[:297] + "..."
        if ts is not None and ts.is_compressed:
            raise DataError(
                f"{path}: cannot decode pixel data compressed with {ts.name} ({ts}); {decoder_hint(str(ts))} [{reason}]"
            ) from None
        raise DataError(f"{path}: cannot read DICOM pixel data ({reason}); the file is corrupt or truncated") from None
    if pixels.ndim != 2:
        raise DataError(f"{path}: expected a single-frame greyscale slice, got pixel array of shape {pixels.shape}")
    slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
    return ds, pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept)


def _slice_spacing(datasets: list, files: list[Path]) -> float:
    """Distance between slice centres along the slice normal; falls back to SpacingBetweenSlices, SliceThickness."""
    try:
        iop = np.asarray([float(v) for v in datasets[0].ImageOrientationPatient])
        normal = np.cross(iop[:3], iop[3:])
        pos = np.asarray([[float(v) for v in ds.ImagePositionPatient] for ds in datasets]) @ normal
        if len(pos) > 1:
            steps = np.abs(np.diff(pos))
            if np.all(steps > 1e-3):
                return float(np.median(steps))
    except (AttributeError, TypeError, ValueError):
        pass
    for tag in ("SpacingBetweenSlices", "SliceThickness"):
        value = datasets[0].get(tag)
        if value is not None and float(value) > 0:
            return float(value)
    warnings.warn(f"{files[0].parent}: no slice spacing in the DICOM tags; using 1 mm", stacklevel=3)
    return 1.0


def check_series_geometry(datasets: list, files: list[Path]) -> None:
    """Raise :class:`DataError` when the slices of one series do not form one evenly spaced stack.

    Checks, where the tags are present: every slice has the ``ImageOrientationPatient`` of the first one (mixed
    orientations: files of two series in one folder), and consecutive ``ImagePositionPatient`` (in file-name order)
    advance along the slice normal by the same step within 10% (a gap means a missing slice, a reversal or a
    repeated position a misplaced or duplicated file). Series without these tags are not checked.
    """
    try:
        orientations = [np.asarray([float(v) for v in ds.ImageOrientationPatient]) for ds in datasets]
        positions = [np.asarray([float(v) for v in ds.ImagePositionPatient]) for ds in datasets]
    except (AttributeError, TypeError, ValueError):
        return
    if any(o.shape != (6,) for o in orientations) or any(p.shape != (3,) for p in positions):
        return
    for f, o in zip(files[1:], orientations[1:]):
        if not np.allclose(o, orientations[0], atol=1e-3):
            raise DataError(
                f"{f}: ImageOrientationPatient {o.round(4).tolist()} differs from {files[0].name} "
                f"{orientations[0].round(4).tolist()}; expected one orientation per series "
                "(files of several series in one folder?)"
            )
    if len(positions) < 3:
        return
    normal = np.cross(orientations[0][:3], orientations[0][3:])
    steps = np.diff(np.stack(positions) @ normal)
    step = float(np.median(steps))
    bad = np.flatnonzero(np.abs(steps - step) > max(0.1 * abs(step), 1e-2))
    if abs(step) < 1e-3:
        bad = np.arange(len(steps))
    if bad.size:
        i = int(bad[0])
        raise DataError(
            f"{files[i + 1]}: slice position moves {steps[i]:.3f} mm along the slice normal from {files[i].name}, "
            f"the series steps {step:.3f} mm; expected evenly spaced slices (ImagePositionPatient) - "
            "a missing, duplicated or misplaced slice"
        )


def grey_to_label(grey: np.ndarray, path: Path | str = "<array>", strict: bool = True) -> np.ndarray:
    """Map CHAOS ground-truth grey values (H, W) to class indices 0..4 by the official ranges.

    Raises:
        DataError: with ``strict``, grey values that are neither 0 nor in any organ range.
    """
    label = np.zeros(grey.shape, dtype=np.uint8)
    known = grey == 0
    for cls, (lo, hi) in CHAOS_GREY_RANGES.items():
        inside = (grey >= lo) & (grey <= hi)
        label[inside] = cls
        known |= inside
    if not known.all():
        bad = sorted(set(np.unique(grey[~known]).tolist()))
        msg = (
            f"{path}: grey values {bad[:10]} are outside the CHAOS ranges (0; liver 55-70, right kidney 110-135, "
            "left kidney 175-200, spleen 240-255)"
        )
        if strict:
            raise DataError(msg)
        warnings.warn(msg + "; mapped to background", stacklevel=2)
    return label


def _read_png(path: Path, shape: tuple[int, int], strict: bool) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("RGB", "RGBA", "LA", "P"):
                im = im.convert("L")
            grey = np.asarray(im)
    except Exception as e:
        raise DataError(f"{path}: cannot read PNG ({type(e).__name__}: {e})") from None
    if grey.ndim != 2 or grey.dtype != np.uint8:
        raise DataError(f"{path}: expected an 8-bit greyscale PNG, got mode with array {grey.dtype}{grey.shape}")
    if grey.shape != shape:
        raise DataError(f"{path}: mask size {grey.shape} (rows, cols) differs from the DICOM slice size {shape}")
    return grey_to_label(grey, path, strict)


def series_affine(datasets: list, spacing: Sequence[float]) -> np.ndarray:
    """NIfTI (RAS) affine of a slice stack ``(S, H, W)`` from its DICOM tags.

    Axis 0 steps from the first slice's ``ImagePositionPatient`` towards the last one's, axis 1 along the column
    direction (``ImageOrientationPatient[3:]``, rows of the pixel array) by ``PixelSpacing[0]``, axis 2 along the
    row direction (``ImageOrientationPatient[:3]``) by ``PixelSpacing[1]``; DICOM's LPS becomes NIfTI's RAS by
    negating x and y. Without the position/orientation tags: a diagonal affine of ``spacing`` (geometry unknown).
    """
    try:
        iop = np.asarray([float(v) for v in datasets[0].ImageOrientationPatient])
        positions = np.asarray([[float(v) for v in ds.ImagePositionPatient] for ds in datasets])
        row_mm, col_mm = (float(v) for v in datasets[0].PixelSpacing)
    except (AttributeError, TypeError, ValueError):
        return np.diag([*map(float, spacing), 1.0])
    if iop.shape != (6,) or positions.shape[1:] != (3,):
        return np.diag([*map(float, spacing), 1.0])
    along_row, along_col = iop[:3], iop[3:]
    if len(positions) > 1:
        step = (positions[-1] - positions[0]) / (len(positions) - 1)
    else:
        step = np.cross(along_row, along_col) * float(spacing[0])
    lps = np.eye(4)
    lps[:3, 0] = step
    lps[:3, 1] = along_col * row_mm
    lps[:3, 2] = along_row * col_mm
    lps[:3, 3] = positions[0]
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def series_files(dicom_dir: str | os.PathLike) -> list[Path]:
    """The ``.dcm`` files of a series folder in natural file-name order (the order the series is stacked in).

    Raises:
        DataError: a missing folder, or no ``.dcm`` file in it.
    """
    dicom_dir = Path(dicom_dir)
    if not dicom_dir.is_dir():
        raise DataError(f"{dicom_dir}: DICOM series folder not found")
    files = sorted((p for p in dicom_dir.iterdir() if p.is_file() and p.suffix.lower() == ".dcm"), key=natural_key)
    if not files:
        raise DataError(f"{dicom_dir}: no .dcm files; expected one DICOM file per slice")
    return files


def _series_spacing(datasets: list, files: list[Path]) -> tuple[float, float, float]:
    """``(slice, row, column)`` spacing in mm of a series whose geometry is checked first
    (:func:`check_series_geometry`)."""
    check_series_geometry(datasets, files)
    try:
        row, col = (float(v) for v in datasets[0].PixelSpacing)
    except (AttributeError, TypeError, ValueError):
        raise DataError(f"{files[0]}: missing or invalid PixelSpacing; expected two values in mm") from None
    return (_slice_spacing(datasets, files), row, col)


def load_chaos_series(dicom_dir: str | os.PathLike) -> ChaosSeries:
    """Read one DICOM series folder (``*.dcm``, natural file-name order): pixels, spacing and affine.

    Raises:
        DataError: missing folder or no ``.dcm`` file, unreadable or undecodable DICOM (the transfer syntax is
            named), colour or multi-frame slices, slices of different sizes, mixed orientations or unevenly spaced
            slices, missing PixelSpacing.
    """
    files = series_files(dicom_dir)
    datasets, slices = [], []
    for f in files:
        ds, pixels = _read_slice(f)
        if slices and pixels.shape != slices[0].shape:
            raise DataError(f"{f}: slice size {pixels.shape} differs from {files[0].name} {slices[0].shape}")
        datasets.append(ds)
        slices.append(pixels)
    spacing = _series_spacing(datasets, files)
    return ChaosSeries(np.stack(slices), spacing, series_affine(datasets, spacing), files)


def chaos_series_geometry(dicom_dir: str | os.PathLike) -> tuple[np.ndarray, tuple[int, int, int]]:
    """``(affine, (S, H, W))`` of the volume :func:`load_chaos_series` reads from ``dicom_dir``, from the slice
    headers alone (no pixel data decoded): what planning needs of a case.

    Raises:
        DataError: as :func:`load_chaos_series` for a missing folder, no ``.dcm`` file, an unreadable header, slices
            of different sizes, mixed orientations, unevenly spaced slices or a missing PixelSpacing.
    """
    import pydicom

    files = series_files(dicom_dir)
    datasets, size = [], None
    for f in files:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
            rows_cols = (int(ds.Rows), int(ds.Columns))
        except Exception as e:  # InvalidDicomError, truncated header, no Rows/Columns...
            raise DataError(
                f"{f}: cannot read DICOM ({type(e).__name__}: {e}); the file is corrupt or not DICOM"
            ) from None
        if size is not None and rows_cols != size:
            raise DataError(f"{f}: slice size {rows_cols} differs from {files[0].name} {size}")
        size = rows_cols
        datasets.append(ds)
    spacing = _series_spacing(datasets, files)
    return series_affine(datasets, spacing), (len(files), *size)


def load_chaos_case(case_dir: str | os.PathLike, sequence: str = "T2SPIR", strict: bool = True) -> ChaosCase:
    """Read one sequence of one CHAOS MR case with its ground truth.

    Args:
        case_dir: ``.../Train_Sets/MR/<id>``.
        sequence: ``"T1DUAL_InPhase"``, ``"T1DUAL_OutPhase"`` or ``"T2SPIR"``.
        strict: raise on unknown ground-truth grey values (else warn and map them to background).

    Returns:
        :class:`ChaosCase` with image (S, H, W) float32, label (S, H, W) uint8 in 0..4 and spacing
        (slice, row, col) in mm, slices in file-name order.

    Raises:
        DataError: missing DICOM or Ground folder, unreadable DICOM or PNG, slices of different sizes, mixed
            orientations or unevenly spaced slices (:func:`check_series_geometry`), PNG count or size not matching
            the series, unknown grey values (``strict``).
    """
    case_dir = Path(case_dir)
    dicom_dir, ground_dir = _sequence_dirs(case_dir, sequence)
    if not dicom_dir.is_dir():
        raise DataError(f"{dicom_dir}: missing DICOM folder for sequence {sequence}")
    files = sorted((p for p in dicom_dir.iterdir() if p.is_file() and p.suffix.lower() == ".dcm"), key=natural_key)
    if not files:
        raise DataError(f"{dicom_dir}: no .dcm files; expected one DICOM file per slice")
    if not ground_dir.is_dir():
        raise DataError(f"{ground_dir}: missing Ground folder (the PNG masks of {sequence})")
    pngs = sorted((p for p in ground_dir.iterdir() if p.is_file() and p.suffix.lower() == ".png"), key=natural_key)
    if len(pngs) != len(files):
        raise DataError(f"{ground_dir}: {len(pngs)} PNG masks for {len(files)} DICOM slices in {dicom_dir}")
    series = load_chaos_series(dicom_dir)
    label = np.stack([_read_png(p, series.image.shape[1:], strict) for p in pngs])
    return ChaosCase(image=series.image, label=label, spacing=series.spacing, case_id=case_dir.name)
