"""BraTS 2018-2021 reader: four co-registered MR modalities and the tumour labels, in the released layouts.

Dataset: Menze et al., IEEE TMI 2015; Bakas et al., arXiv:1811.02629; used by You et al., "DR-Net: dual-rotation
network with feature map enhancement for medical image segmentation", Complex & Intelligent Systems 2022.

Layouts (``.nii`` or ``.nii.gz``)::

    <root>/<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz          (2019-2021)
    <root>/{HGG,LGG}/<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz  (2018)

Labels: 0 background, 1 necrotic / non-enhancing tumour core, 2 peritumoural oedema, 4 enhancing tumour.
BraTS 2023 writes the enhancing tumour as 3 (and renames the files); pass ``et_label=3`` to read such seg files:
the returned seg is always in the 0/1/2/4 convention. Any other value is an error: a silent remap would
corrupt the ET/TC regions.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from segzoo.data.geometry import Reorientation, spacing_from_affine
from segzoo.data.io import (
    DataError,
    check_label_values,
    check_same_geometry,
    is_nifti_name,
    load_nifti,
    load_nifti_with_header,
    strip_nifti_suffix,
)

BRATS_MODALITIES = ("t1", "t1ce", "t2", "flair")
# the label map: class index i is BraTS label BRATS_LABELS[i] (the datamodules train on indices 0-3, label 4 -> 3)
BRATS_LABELS = (0, 1, 2, 4)
BRATS_CLASS_NAMES = ("background", "necrotic_core", "edema", "enhancing_tumor")
# label value -> class index, built once (read-only); labels are uint8 after load_brats_case
_LABEL_TO_INDEX = np.zeros(256, dtype=np.uint8)
_LABEL_TO_INDEX[list(BRATS_LABELS)] = np.arange(len(BRATS_LABELS))
_LABEL_TO_INDEX.flags.writeable = False


def brats_label_to_index(label: np.ndarray) -> np.ndarray:
    """BraTS labels {0, 1, 2, 4} (uint8, as :func:`load_brats_case` returns them) -> class indices {0, 1, 2, 3}."""
    return _LABEL_TO_INDEX[label]


class BratsCase(NamedTuple):
    """One BraTS case.

    Attributes:
        image: (4, X, Y, Z) float32, modalities in the order t1, t1ce, t2, flair (on-disk voxel order).
        label: (X, Y, Z) uint8 with values in {0, 1, 2, 4}.
        affine: (4, 4) voxel-to-world matrix of the t1 file.
        spacing: voxel size (x, y, z) in mm, from the affine.
        case_id: the case folder name.
    """

    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]
    case_id: str


def brats_file(case_dir: Path, suffix: str) -> Path | None:
    """``<case_dir>/<case>_<suffix>.nii.gz`` or ``.nii`` (any letter case), whichever exists (None if neither)."""
    for ext in (".nii.gz", ".nii"):
        path = case_dir / f"{case_dir.name}_{suffix}{ext}"
        if path.is_file():
            return path
    want = f"{case_dir.name}_{suffix}".lower()
    try:
        found = sorted(p for p in case_dir.iterdir() if is_nifti_name(p) and strip_nifti_suffix(p.name).lower() == want)
    except OSError:
        return None
    return found[0] if found else None


def find_brats_cases(root: str | os.PathLike) -> list[Path]:
    """Case folders under ``root`` (flat 2019-2021 layout or 2018 ``HGG/``/``LGG/``), sorted by case name.

    A case folder is one holding ``<folder name>_flair.nii[.gz]``; it is searched for at depth 1 and 2.

    Raises:
        DataError: ``root`` missing, no case found, or the same case name twice (e.g. under HGG and LGG).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: BraTS data folder not found")
    found: dict[str, Path] = {}
    candidates = [d for d in root.iterdir() if d.is_dir()]
    candidates += [d for parent in candidates for d in parent.iterdir() if d.is_dir()]
    for d in candidates:
        if d.name.startswith(".") or brats_file(d, "flair") is None:
            continue
        if d.name in found:
            raise DataError(f"{d}: case {d.name} also found at {found[d.name]}; expected each case once")
        found[d.name] = d
    if not found:
        raise DataError(
            f"{root}: no BraTS cases found; expected <root>/<case>/<case>_flair.nii.gz (2019-2021) "
            "or <root>/HGG/<case>/... (2018)"
        )
    return [found[name] for name in sorted(found)]


class BratsImages(NamedTuple):
    """The four modalities of one BraTS case, as read for prediction (no seg needed).

    Attributes:
        image: (4, *spatial) float32, t1, t1ce, t2, flair, in ``orientation`` (or on-disk order without one).
        affine: (4, 4) affine of ``image`` (of the reoriented array).
        header: NIfTI header of the t1 file as stored (to write a label map on the input's grid).
        reorientation: the exact permutation/flip applied (undo it to get back to the stored order).
        paths: the four files, by modality.
    """

    image: np.ndarray
    affine: np.ndarray
    header: object
    reorientation: Reorientation
    paths: dict


def load_brats_images(case_dir: str | os.PathLike, orientation=None) -> BratsImages:
    """Read the four co-registered modalities of one BraTS case (no seg), optionally brought to ``orientation``.

    Args:
        case_dir: the case folder ``<case>`` with ``<case>_{t1,t1ce,t2,flair}.nii[.gz]`` (any letter case).
        orientation: axis codes to bring the volumes to (exact permutation/flip), e.g. ``("L", "P", "S")`` as the
            BraTS release stores them; ``None`` keeps the on-disk order.

    Raises:
        DataError: a missing, corrupt, non-scalar or non-finite file, a non-3D volume, or modalities of different
            shape or affine.
    """
    case_dir = Path(case_dir)
    if not case_dir.is_dir():
        raise DataError(f"{case_dir}: BraTS case folder not found")
    paths = {}
    for suffix in BRATS_MODALITIES:
        path = brats_file(case_dir, suffix)
        if path is None:
            raise DataError(f"{case_dir / f'{case_dir.name}_{suffix}.nii.gz'}: file not found (nor .nii)")
        paths[suffix] = path
    channels = []
    ref_path, ref_shape, ref_affine, ref_header = None, None, None, None
    for modality in BRATS_MODALITIES:
        data, affine, header = load_nifti_with_header(paths[modality], dtype=np.float32)
        if data.ndim != 3:
            raise DataError(f"{paths[modality]}: expected a 3D volume, got shape {data.shape}")
        if ref_path is None:
            ref_path, ref_shape, ref_affine, ref_header = paths[modality], data.shape, affine, header
        elif data.shape != ref_shape:
            raise DataError(
                f"{paths[modality]}: shape {data.shape} differs from {ref_path.name} shape {ref_shape}; "
                "the four modalities must be co-registered"
            )
        elif not np.allclose(affine, ref_affine, atol=1e-3):
            raise DataError(f"{paths[modality]}: affine differs from {ref_path.name}; modalities not co-registered")
        channels.append(data)
    r = Reorientation.to_codes(ref_affine, ref_shape, orientation, name=ref_path)
    image = r.apply(np.stack(channels), first_axis=1)
    return BratsImages(image, r.apply_affine(ref_affine), ref_header, r, paths)


def load_brats_case(case_dir: str | os.PathLike, et_label: int = 4, orientation=None) -> BratsCase:
    """Read the four modalities and the seg of one BraTS case, checking that they are co-registered.

    Args:
        case_dir: the case folder ``<case>``.
        et_label: value of the enhancing tumour in the seg file: 4 (BraTS 2018-2021) or 3 (BraTS 2023);
            it is returned as 4 either way.
        orientation: axis codes to bring image and seg to (exact permutation/flip); ``None`` keeps the on-disk order.

    Returns:
        :class:`BratsCase`; image (4, X, Y, Z) float32 in the order t1, t1ce, t2, flair, label (X, Y, Z) uint8.

    Raises:
        DataError: a missing, corrupt or non-finite file, modalities or seg of different shape or affine,
            a non-3D image, seg values outside {0, 1, 2, et_label} or non-integer seg values.
    """
    if et_label not in (3, 4):
        raise ValueError(f"et_label must be 4 (BraTS 2018-2021) or 3 (BraTS 2023), got {et_label}")
    case_dir = Path(case_dir)
    if not case_dir.is_dir():
        raise DataError(f"{case_dir}: BraTS case folder not found")
    seg_path = brats_file(case_dir, "seg")
    if seg_path is None:
        raise DataError(f"{case_dir / f'{case_dir.name}_seg.nii.gz'}: file not found (nor .nii)")
    images = load_brats_images(case_dir, orientation)
    r, ref_path = images.reorientation, images.paths[BRATS_MODALITIES[0]]
    seg, seg_affine = load_nifti(seg_path)
    stored_affine = images.affine @ np.linalg.inv(r.apply_affine(np.eye(4)))  # the t1 file's own affine
    check_same_geometry(ref_path, r.shape, stored_affine, seg_path, seg.shape, seg_affine)
    if np.issubdtype(seg.dtype, np.floating):
        if not np.array_equal(seg, np.round(seg)):
            raise DataError(f"{seg_path}: non-integer label values; expected integer labels {{0, 1, 2, 4}}")
    seg = seg.astype(np.int64, copy=False)
    check_label_values(seg_path, seg, {0, 1, 2, et_label})
    label = r.apply(seg.astype(np.uint8))
    if et_label != 4:
        label[label == et_label] = 4
    return BratsCase(images.image, label, images.affine, spacing_from_affine(images.affine), case_dir.name)
