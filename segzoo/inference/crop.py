"""Regions of a case worth predicting: the body box of a CT and the boxes around a coarse foreground prediction.

Used by :class:`segzoo.inference.sliding_window.SlidingWindowTTAInferer` (``crop=True``, ``coarse_to_fine=True``)
to skip windows that hold only air, or only tissue far from the organs. nnU-Net (Isensee et al., Nature Methods
2021) crops every case to its non-zero region before training and inference; a CT has no zeros (air is about
-1000 HU, after z-scoring a large negative value), so the body is found here by an intensity threshold, the largest
connected component and a margin. Choices (the papers are silent; see ``docs/inference.md``):

- the threshold defaults to "above the case's minimum": after clipping to the foreground 0.5 percentile (the
  KiTS19 preprocessing) air, and fat below that percentile, sit exactly at the minimum, so the mask is the
  soft tissue; a case without such a floor (no clipping, noise everywhere) yields the whole case, never a smaller
  box than the body;
- connectivity is 6 (faces); the box is the largest component's bounding box grown by ``margin`` voxels per axis
  and clamped to the case.

A box is a tuple of ``slice`` objects, one per spatial axis, with explicit non-negative ``start`` and ``stop``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage

Box = tuple[slice, ...]


def full_box(shape: Sequence[int]) -> Box:
    """The box covering a whole case of spatial ``shape``."""
    return tuple(slice(0, int(n)) for n in shape)


def per_axis(value: int | Sequence[int], ndim: int, name: str) -> tuple[int, ...]:
    values = (int(value),) * ndim if isinstance(value, int | np.integer) else tuple(int(v) for v in value)
    if len(values) != ndim or any(v < 0 for v in values):
        raise ValueError(f"{name} must be a non-negative int or one per spatial axis ({ndim}); got {value!r}")
    return values


def expand_box(box: Box, margin: int | Sequence[int], shape: Sequence[int]) -> Box:
    """``box`` grown by ``margin`` voxels on both sides of every axis, clamped to ``shape``."""
    m = per_axis(margin, len(shape), "margin")
    return tuple(slice(max(0, s.start - a), min(int(n), s.stop + a)) for s, a, n in zip(box, m, shape))


def fit_box(box: Box, min_size: Sequence[int], shape: Sequence[int]) -> Box:
    """``box`` grown symmetrically (then shifted inside the case) to at least ``min_size`` per axis where the case
    allows, so a sliding window over the box needs no padding that the whole case would not have needed."""
    out = []
    for s, k, n in zip(box, min_size, shape):
        k = min(int(k), int(n))
        start, stop = s.start, s.stop
        if stop - start < k:
            extra = k - (stop - start)
            start -= extra // 2
            stop = start + k
            if start < 0:
                start, stop = 0, k
            if stop > n:
                start, stop = int(n) - k, int(n)
        out.append(slice(start, stop))
    return tuple(out)


def box_size(box: Box) -> int:
    """Number of voxels in ``box``."""
    return int(np.prod([s.stop - s.start for s in box]))


def intersects(window: Sequence[slice], box: Box) -> bool:
    """Whether the half-open ``window`` (slices with start and stop) and ``box`` share a voxel."""
    return all(w.start < b.stop and b.start < w.stop for w, b in zip(window, box))


def body_box(
    image: torch.Tensor | np.ndarray,
    threshold: float | None = None,
    margin: int | Sequence[int] = 0,
) -> Box:
    """Bounding box of the body in a preprocessed CT: threshold, largest 6-connected component, ``margin``.

    Args:
        image: ``(C, *spatial)`` preprocessed intensities; a voxel is body when any channel is above the threshold.
        threshold: intensity a body voxel exceeds; ``None``: the channel's minimum (the clip floor of z-scored CT
            holds air and fat, so everything above it counts).
        margin: voxels added on both sides of every axis (an int or one per spatial axis), clamped to the case.

    Returns:
        one ``slice`` per spatial axis; the whole case when no voxel is above the threshold.
    """
    x = torch.as_tensor(image)
    if x.ndim < 2:
        raise ValueError(f"image must be (C, *spatial), got shape {tuple(x.shape)}")
    shape = tuple(x.shape[1:])
    flat = x.reshape(x.shape[0], -1)
    if threshold is None:
        thr = flat.min(dim=1).values.view(-1, *([1] * len(shape)))
    else:
        thr = torch.as_tensor(threshold, dtype=x.dtype, device=x.device)
    mask = (x > thr).any(dim=0).cpu().numpy()
    if not mask.any():
        return full_box(shape)
    components, count = ndimage.label(mask)  # 6-connectivity (faces)
    if count > 1:
        sizes = np.bincount(components.ravel())
        sizes[0] = 0
        mask = components == int(sizes.argmax())
    del components
    box = tuple(slice(int(idx.min()), int(idx.max()) + 1) for idx in _nonzero_ranges(mask))
    return expand_box(box, margin, shape)


def _nonzero_ranges(mask: np.ndarray) -> list[np.ndarray]:
    """Indices along each axis where ``mask`` has any true voxel (cheaper than ``np.nonzero`` of the volume)."""
    ranges = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        ranges.append(np.flatnonzero(mask.any(axis=other)))
    return ranges


def foreground_boxes(
    labels: torch.Tensor | np.ndarray, margin: int | Sequence[int], offset: Sequence[int] | None = None, shape=None
) -> list[Box]:
    """One box per connected component (26-connectivity) of ``labels > 0``, grown by ``margin`` voxels.

    Args:
        labels: ``(*spatial)`` label map (any integer or bool dtype).
        margin: voxels added on both sides of every axis.
        offset: position of ``labels``' origin in the case (when it was predicted on a crop); default zeros.
        shape: spatial shape of the case the boxes are clamped to; default ``labels.shape`` shifted by ``offset``.

    Returns:
        boxes in case coordinates; empty when there is no foreground.
    """
    fg = np.asarray(torch.as_tensor(labels).cpu()) > 0
    offset = tuple(int(o) for o in (offset or (0,) * fg.ndim))
    shape = tuple(int(n) for n in (shape or [o + n for o, n in zip(offset, fg.shape)]))
    components, _ = ndimage.label(fg, structure=np.ones((3,) * fg.ndim, dtype=bool))
    boxes = []
    for found in ndimage.find_objects(components):
        if found is None:
            continue
        box = tuple(slice(s.start + o, s.stop + o) for s, o in zip(found, offset))
        boxes.append(expand_box(box, margin, shape))
    return boxes


def merge_boxes(boxes: Sequence[Box]) -> list[Box]:
    """Boxes that share a voxel replaced by their common bounding box, until none overlap (order kept otherwise)."""
    out = list(boxes)
    merged = True
    while merged:
        merged = False
        for i in range(len(out)):
            for j in range(i + 1, len(out)):
                if intersects(out[i], out[j]):
                    out[i] = tuple(slice(min(a.start, b.start), max(a.stop, b.stop)) for a, b in zip(out[i], out[j]))
                    del out[j]
                    merged = True
                    break
            if merged:
                break
    return out


def region_mask(boxes: Sequence[Box], shape: Sequence[int], device: torch.device | str = "cpu") -> torch.Tensor:
    """Boolean ``(*shape)`` mask, true inside any of ``boxes``."""
    mask = torch.zeros(tuple(shape), dtype=torch.bool, device=device)
    for box in boxes:
        mask[box] = True
    return mask
