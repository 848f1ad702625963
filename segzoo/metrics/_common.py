"""Helpers shared by the challenge metrics: input checks, Dice, surfaces and surface distances (numpy/scipy)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree


def check_label_maps(pred: np.ndarray, target: np.ndarray, max_label: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate a pair of 2D/3D integer label maps with values in ``0..max_label`` and return them as int64."""
    pred, target = np.asarray(pred), np.asarray(target)
    if pred.shape != target.shape:
        raise ValueError(f"{name}: prediction shape {pred.shape} differs from target shape {target.shape}")
    if pred.ndim not in (2, 3):
        raise ValueError(f"{name}: expected 2D or 3D label maps (*spatial), got shape {pred.shape}")
    out = []
    for label, what in ((pred, "prediction"), (target, "target")):
        if label.dtype == bool:
            label = label.astype(np.int64)
        if np.issubdtype(label.dtype, np.floating):
            if not np.array_equal(label, np.round(label)):
                raise ValueError(f"{name}: {what} must be an integer label map, got non-integral values")
        elif not np.issubdtype(label.dtype, np.integer):
            raise ValueError(f"{name}: {what} must be an integer label map, got dtype {label.dtype}")
        label = label.astype(np.int64)
        if label.size and (label.min() < 0 or label.max() > max_label):
            raise ValueError(
                f"{name}: {what} values must be class indices in 0..{max_label}, "
                f"got values in {label.min()}..{label.max()}"
            )
        out.append(label)
    return out[0], out[1]


def check_spacing(
    spacing: Sequence[float] | None, ndim: int, name: str, undefined_slices: bool = False
) -> tuple[float, ...]:
    """Spacing in mm per spatial axis (same order as the array axes); ``None`` means 1 mm.

    With ``undefined_slices`` the first of 3 values may be NaN: the slices of the stack are a selection, not
    neighbours (the 2D datamodules mark ``largest<k>`` and ``lesion`` stacks so).
    """
    if spacing is None:
        return (1.0,) * ndim
    values = tuple(float(s) for s in np.asarray(spacing, dtype=float).reshape(-1))
    checked = values[1:] if undefined_slices and ndim == 3 and len(values) == 3 and np.isnan(values[0]) else values
    if len(values) != ndim or not all(np.isfinite(v) and v > 0 for v in checked):
        raise ValueError(f"{name}: spacing must be {ndim} positive finite values (mm per axis), got {spacing!r}")
    return values


def slices_are_a_selection(spacing: Sequence[float]) -> bool:
    """True when a 3D stack's slice spacing is undefined (NaN): its slices are not neighbours."""
    return len(spacing) == 3 and bool(np.isnan(spacing[0]))


def dice(pred: np.ndarray, ref: np.ndarray, empty_value: float = 1.0) -> float:
    """Dice ``2|P & R| / (|P| + |R|)`` of two boolean masks; ``empty_value`` when both are empty."""
    total = int(pred.sum()) + int(ref.sum())
    if total == 0:
        return float(empty_value)
    return 2.0 * int(np.logical_and(pred, ref).sum()) / total


def border_voxels(mask: np.ndarray) -> np.ndarray:
    """Surface voxels as in the CHAOS evaluation: foreground voxels with a face neighbour in the background.

    Erosion uses the face-connected (cross) structuring element and ``border_value=1``, so the edge of the image
    is not a surface by itself (CHAOS ``CHAOSmetrics.SSD``). A mask with no such voxel although non-empty (it
    fills the whole image, where the CHAOS code would fail) falls back to treating the image edge as surface.

    Returns:
        ``(N, ndim)`` integer voxel indices.
    """
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    eroded = ndimage.binary_erosion(mask, structure=structure, border_value=1)
    points = np.argwhere(mask & ~eroded)
    if len(points) == 0 and mask.any():
        points = np.argwhere(mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0))
    return points


def foreground_box(mask: np.ndarray, margin: int = 1) -> tuple[slice, ...]:
    """Slices of the bounding box of ``mask`` grown by ``margin`` voxels (clipped to the image); whole image if empty.

    Cropping to it changes no surface or distance: voxels beyond the margin are background, and where the box meets
    the image edge it is still the image edge.
    """
    if not mask.any():
        return tuple(slice(None) for _ in mask.shape)
    box = []
    for axis in range(mask.ndim):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        box.append(slice(max(int(hits[0]) - margin, 0), min(int(hits[-1]) + margin + 1, mask.shape[axis])))
    return tuple(box)


def surface_distances(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from each border voxel of ``pred`` to the nearest of ``ref`` and vice versa.

    Both masks must be non-empty. Voxel centres are placed at ``index * spacing`` (the CHAOS evaluation maps
    indices to patient coordinates with the DICOM affine; distances only depend on the spacing).

    Returns:
        ``(pred_to_ref, ref_to_pred)`` 1D float arrays.
    """
    box = foreground_box(pred | ref)
    pred, ref = pred[box], ref[box]
    scale = np.asarray(spacing, dtype=np.float64)
    pred_pts = border_voxels(pred) * scale
    ref_pts = border_voxels(ref) * scale
    pred_to_ref = cKDTree(ref_pts).query(pred_pts, k=1)[0]
    ref_to_pred = cKDTree(pred_pts).query(ref_pts, k=1)[0]
    return np.asarray(pred_to_ref, dtype=np.float64), np.asarray(ref_to_pred, dtype=np.float64)


def image_diagonal(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """Length (mm) of the image diagonal: the largest distance two voxel centres of the image can have."""
    return float(np.sqrt(sum(((n - 1) * s) ** 2 for n, s in zip(shape, spacing))))
