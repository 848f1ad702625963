"""Planning like nnU-Net: normalisation per channel, target spacing, patch size and the 3D net's topology, all from
the dataset's fingerprint.

Reference: Isensee et al., "nnU-Net", Nature Methods 2021, and nnU-Net v2's ``ExperimentPlanner``
(``determine_fullres_target_spacing``, ``get_pool_and_conv_props``). What segzoo takes from it:

- **normalisation by channel name**: ``CT`` -> clip to the dataset's foreground 0.5 / 99.5 percentiles and z-score with
  its foreground mean / std (the KiTS19 recipe's :class:`~segzoo.data.preprocessor.CTPreprocessor`); ``noNorm`` ->
  none; ``rescale_to_0_1`` -> per-case min-max; anything else (``T1``, ``T2``, ``FLAIR`` ...) -> per-case z-score;
- **target spacing**: the median spacing; where one axis is much coarser than the others (its median spacing more
  than 3x the finest and its median size less than a third of theirs) that axis takes the 10th percentile of its
  spacings instead, so thick-slice outliers do not coarsen the whole dataset;
- **topology** (:func:`plan_topology`): from the patch size and spacing, pool along an axis only while its spacing is
  within 2x the finest and its feature map stays >= ``min_feature_map`` (4) voxels; kernels are in-plane only (1 on
  the coarse axis) until the spacings become comparable; one more level per pooling, up to ``max_levels``;
- **patch size**: the median case shape at the target spacing, shrunk along its largest axis (relative to the median
  shape) until the estimated activation memory of the net fits ``memory_budget_gb``; divisible by the total stride;
- **2D slicing** (:func:`slice_axis`): the 2D nets (:class:`~segzoo.data.datamodule_2d.SliceDataModule`) cut each
  case along its coarsest axis (the thick-slice axis of anisotropic data), as nnU-Net's 2d configuration does.

Shapes and spacings come from the NIfTI headers alone; a case stored otherwise (CHAOS: a DICOM series) is read by its
own reader (:func:`case_geometry`).

Departures (see ``docs/data/own_data.md``): nnU-Net's estimate of GPU memory is its own network's; segzoo counts the
feature maps of :class:`segzoo.nets.MSSUNet` (2 conv-norm-act per level, stored for the backward pass) in float32, so
a budget means the same thing on any device. ``max_levels`` defaults to 5, the paper's depth; nnU-Net has no limit
but the feature-map size (KiTS-like spacing and a 48x192x192 patch give 6 levels there).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from segzoo.data.geometry import Reorientation, axis_codes, majority_codes, spacing_from_affine
from segzoo.data.io import DataError, is_nifti_name, read_nifti_header

__all__ = [
    "NORMALIZATIONS",
    "case_geometry",
    "header_fingerprint",
    "normalization_for",
    "plan_dataset",
    "plan_topology",
    "slice_axis",
    "target_spacing",
]

NORMALIZATIONS = ("ct", "zscore", "none", "rescale_0_1")


def normalization_for(channel_name: str) -> str:
    """nnU-Net's ``channel_name_to_normalization_mapping``: the normalisation a channel name asks for."""
    name = channel_name.strip().lower()
    if name == "ct":
        return "ct"
    if name in ("nonorm", "none"):
        return "none"
    if name in ("rescale_to_0_1", "rescale_0_1", "rgb_to_0_1"):
        return "rescale_0_1"
    return "zscore"


def case_geometry(case: Any) -> tuple[np.ndarray, tuple[int, ...]]:
    """``(affine 4x4, spatial shape)`` of a case's image as its reader gives it (``load()``'s grid).

    A NIfTI image (:class:`~segzoo.data.sources.ImageCase`, :class:`~segzoo.data.kits19.KiTS19Case`) gives both from
    its first file's header, no voxel read; a case with a ``geometry()`` method (a CHAOS series: its slice headers)
    gives it from there; any other image is read through the case's ``load_image()`` (else ``load()``): the reader
    alone knows its voxel order and affine.

    Raises:
        DataError: an unreadable header or image, naming the file.
    """
    if is_nifti_name(case.image):
        header = read_nifti_header(case.image)
        return np.asarray(header.get_best_affine(), dtype=np.float64), tuple(
            int(s) for s in header.get_data_shape()[:3]
        )
    geometry = getattr(case, "geometry", None)  # a reader that knows its grid from headers (CHAOS DICOM series)
    if geometry is not None:
        affine, shape = geometry()
        return np.asarray(affine, dtype=np.float64), tuple(int(s) for s in shape)
    load_image = getattr(case, "load_image", None)
    image, affine = load_image() if load_image is not None else case.load()[::2]
    return np.asarray(affine, dtype=np.float64), tuple(int(s) for s in np.shape(image)[-3:])


def slice_axis(median_spacing: Sequence[float]) -> int:
    """The axis the 2D nets cut slices along: the coarsest of the median spacing (the first of equals)."""
    return int(np.argmax(np.asarray(median_spacing, dtype=float)))


def header_fingerprint(cases: Sequence[Any]) -> dict[str, Any]:
    """Spacings and shapes of the cases in their majority orientation, from the NIfTI headers alone (no voxel read;
    a case of another format is read once, :func:`case_geometry`).

    Returns ``{"orientation", "spacings": [[...]], "shapes": [[...]], "median_spacing", "median_shape"}``.
    """
    headers = [case_geometry(c) for c in cases]
    if not headers:
        raise DataError("planning needs at least one training case")
    orientation = majority_codes([axis_codes(a) for a, _ in headers])
    spacings, shapes = [], []
    for affine, shape in headers:
        r = Reorientation.to_codes(affine, shape, orientation)
        spacings.append(list(r.apply_spacing(spacing_from_affine(affine))))
        shapes.append(list(r.oriented_shape))
    return {
        "orientation": list(orientation),
        "spacings": spacings,
        "shapes": shapes,
        "median_spacing": [float(v) for v in np.median(spacings, axis=0)],
        "median_shape": [float(v) for v in np.median(shapes, axis=0)],
    }


def target_spacing(spacings: Sequence[Sequence[float]], shapes: Sequence[Sequence[int]]) -> list[float]:
    """nnU-Net's ``determine_fullres_target_spacing`` (anisotropy rule in the module doc)."""
    spacings, shapes = np.asarray(spacings, dtype=float), np.asarray(shapes, dtype=float)
    target = np.percentile(spacings, 50, axis=0)
    target_size = np.percentile(shapes, 50, axis=0)
    worst = int(np.argmax(target))
    others = [i for i in range(len(target)) if i != worst]
    aniso_spacing = target[worst] > 3 * max(target[others])
    aniso_voxels = target_size[worst] * 3 < min(target_size[others])
    if aniso_spacing and aniso_voxels:
        coarse = np.percentile(spacings[:, worst], 10)
        if coarse < max(target[others]):
            coarse = max(max(target[others]), coarse) + 1e-5
        target[worst] = coarse
    return [float(v) for v in target]


def plan_topology(
    patch_size: Sequence[int], spacing: Sequence[float], min_feature_map: int = 4, max_levels: int | None = 5
) -> dict[str, Any]:
    """nnU-Net's ``get_pool_and_conv_props`` for :class:`segzoo.nets.MSSUNet`.

    Returns ``{"kernel_size": [...per level], "strides": [...per level, the first 1], "patch_size": [...] padded to
    be divisible by the total stride, "divisor": [...]}``; per-axis values are ints where all axes agree.
    """
    dim = len(spacing)
    current_spacing = [float(s) for s in spacing]
    current_size = [int(s) for s in patch_size]
    strides: list[list[int]] = [[1] * dim]
    kernel = [1] * dim
    for d in range(dim):
        if current_spacing[d] / min(current_spacing) < 2:
            kernel[d] = 3
    kernels: list[list[int]] = [list(kernel)]
    pools = [0] * dim
    while max_levels is None or len(strides) < max_levels:
        valid = [i for i in range(dim) if current_size[i] >= 2 * min_feature_map]
        if not valid:
            break
        finest = min(current_spacing[i] for i in valid)
        valid = [i for i in valid if current_spacing[i] / finest < 2]
        if len(valid) == 1 and current_size[valid[0]] < 3 * min_feature_map:
            break
        if not valid:
            break
        stride = [1] * dim
        for v in valid:
            stride[v] = 2
            pools[v] += 1
            current_spacing[v] *= 2
            current_size[v] = math.ceil(current_size[v] / 2)
        for d in range(dim):
            if kernel[d] != 3 and current_spacing[d] / min(current_spacing) < 2:
                kernel[d] = 3
        strides.append(stride)
        kernels.append(list(kernel))
    divisor = [2**p for p in pools]
    padded = [int(math.ceil(s / d) * d) for s, d in zip(patch_size, divisor)]

    def compact(v: list[int]) -> int | list[int]:
        return v[0] if len(set(v)) == 1 else list(v)

    return {
        "kernel_size": [compact(k) for k in kernels],
        "strides": [compact(s) for s in strides],
        "patch_size": padded,
        "divisor": divisor,
    }


def _features(levels: int, base: int, cap: int) -> list[int]:
    return [min(base * 2**i, cap) for i in range(levels)]


def estimate_memory_gb(
    patch_size: Sequence[int], strides: Sequence[Any], batch_size: int, base_features: int, max_features: int
) -> float:
    """Activation memory (GiB) of one training step of :class:`segzoo.nets.MSSUNet`: each level's feature map is kept
    about 6 times for the backward pass (2 convs, norm and activation outputs, encoder and decoder), float32."""
    voxels = np.array(patch_size, dtype=float)
    total = 0.0
    for level, (stride, feats) in enumerate(zip(strides, _features(len(strides), base_features, max_features))):
        s = np.broadcast_to(np.asarray(stride), voxels.shape)
        voxels = np.ceil(voxels / s)
        total += (6 if level < len(strides) - 1 else 3) * feats * float(np.prod(voxels))
    return total * batch_size * 4 / 2**30


def plan_dataset(
    fingerprint: dict[str, Any],
    channel_names: Sequence[str],
    memory_budget_gb: float = 8.0,
    batch_size: int = 2,
    base_features: int = 30,
    max_features: int = 320,
    max_levels: int | None = 5,
    min_feature_map: int = 4,
    max_patch_voxels: int | None = None,
    spacing: Sequence[float] | None = None,
) -> dict[str, Any]:
    """The plan of a 3D dataset: normalisation, target spacing, patch size and topology (see the module doc).

    Args:
        fingerprint: :func:`header_fingerprint` (or :func:`segzoo.data.fingerprint.compute_fingerprint`) output:
            ``spacings`` and ``shapes`` per case in the training orientation.
        channel_names: the dataset's channel names (they pick the normalisation).
        memory_budget_gb: the activation memory a training step may take.
        batch_size: training batch size the memory estimate assumes.
        base_features, max_features: the net's widths the memory estimate assumes.
        max_levels: most resolution levels (``None``: as many as the feature-map size allows, as nnU-Net).
        min_feature_map: smallest feature map (voxels per axis) at the deepest level.
        max_patch_voxels: optional cap on the patch's voxel count (a CPU budget).
        spacing: a target spacing to use instead of the planned one.

    Returns:
        The plan; besides the 3D net's ``patch_size``, ``kernel_size``, ``strides``, ``slice_axis`` is the axis (of
        ``orientation``) the 2D nets cut slices along (:func:`slice_axis`).
    """
    spacings = fingerprint["spacings"]
    shapes = fingerprint["shapes"]
    spacings = list(spacings.values()) if isinstance(spacings, dict) else list(spacings)
    shapes = list(shapes.values()) if isinstance(shapes, dict) else list(shapes)
    target = [float(s) for s in spacing] if spacing is not None else target_spacing(spacings, shapes)
    new_shapes = np.array(
        [[n * s / t for n, s, t in zip(shape, sp, target)] for shape, sp in zip(shapes, spacings)], dtype=float
    )
    median_shape = np.median(new_shapes, axis=0)
    median_spacing = [float(v) for v in np.median(spacings, axis=0)]
    # nnU-Net's initial patch: the aspect of 1/spacing scaled to 256^3 voxels, capped by the median shape
    aspect = 1.0 / np.asarray(target)
    patch = aspect / np.prod(aspect) ** (1 / 3) * 256
    patch = np.minimum(np.round(patch), np.round(median_shape)).astype(int)
    patch = np.maximum(patch, 1)

    def fits(p: np.ndarray) -> tuple[bool, dict[str, Any]]:
        topo = plan_topology(p, target, min_feature_map, max_levels)
        mem = estimate_memory_gb(topo["patch_size"], topo["strides"], batch_size, base_features, max_features)
        ok = mem <= memory_budget_gb and (max_patch_voxels is None or np.prod(topo["patch_size"]) <= max_patch_voxels)
        return ok, {**topo, "memory_gb": mem}

    ok, topo = fits(patch)
    while not ok:
        axis = int(np.argmax(patch / median_shape))
        divisor = topo["divisor"][axis]
        step = divisor if patch[axis] > divisor else 1
        if patch[axis] - step < 1 or np.all(patch <= 4):
            break
        patch[axis] -= step
        ok, topo = fits(patch)
    return {
        "normalization": [normalization_for(n) for n in channel_names],
        "channel_names": list(channel_names),
        "orientation": fingerprint.get("orientation"),
        "median_spacing": median_spacing,
        "slice_axis": slice_axis(median_spacing),
        "target_spacing": target,
        "median_shape_at_target": [float(v) for v in median_shape],
        "patch_size": [int(v) for v in topo["patch_size"]],
        "kernel_size": topo["kernel_size"],
        "strides": topo["strides"],
        "divisor": topo["divisor"],
        "batch_size": int(batch_size),
        "memory_budget_gb": float(memory_budget_gb),
        "estimated_memory_gb": round(float(topo["memory_gb"]), 3),
        "base_features": int(base_features),
        "max_features": int(max_features),
    }
