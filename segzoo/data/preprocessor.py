"""CT preprocessing: clip, z-score, resample to one voxel spacing, and the way back to the original grid.

Reference: Zhao et al., "Multi Scale Supervised 3D U-Net for Kidney and Tumor Segmentation" (KiTS19), section 2.1:
clip CT intensities to the 0.5 / 99.5 percentiles of foreground voxels, z-score with the global foreground mean and
std, resample every case to one voxel spacing (the statistics come from :mod:`segzoo.data.fingerprint`).

Choices where the paper is silent (see ``docs/data/kits19.md``):
- z-score first, then resample (nnU-Net's order); images resample trilinear (``image_order=1``, torch
  ``F.interpolate``, fast) or cubic (``image_order=3``, ``scipy.ndimage.zoom``, ~10x slower); labels nearest
  (``nearest-exact``); ``restore`` resamples class probabilities linearly back to the original grid, then argmax.
- Every image is first brought to the training orientation (the fingerprint's ``orientation``) by an exact axis
  permutation/flip (:meth:`CTPreprocessor.reorientation`); ``restore`` output is mapped back with the inverse.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from segzoo.data.geometry import Reorientation, check_axis_codes
from segzoo.data.io import DataError

__all__ = ["PAPER_TARGET_SPACING", "CTPreprocessor", "Preprocessor"]

PAPER_TARGET_SPACING = (3.0, 0.78125, 0.78125)


def _resample_linear(array: np.ndarray | torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Trilinear resampling of ``(C, *spatial)`` to ``(C, *shape)`` (pixel centres aligned: align_corners=False)."""
    t = torch.as_tensor(array)
    if not t.is_floating_point():
        t = t.float()
    if tuple(t.shape[1:]) == tuple(shape):
        return t
    return F.interpolate(t[None], size=tuple(int(s) for s in shape), mode="trilinear", align_corners=False)[0]


def resampled_shape(shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]) -> tuple[int, ...]:
    """Shape of ``shape`` voxels of ``spacing`` resampled to ``target`` spacing: ``round(shape * spacing / target)``,
    at least 1 per axis (the one rule of segzoo's preprocessing and of exported MONAI bundles)."""
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, target, strict=True))


class _ResamplingPreprocessor:
    """What every 3D preprocessing shares: the training orientation, resampling to ``target_spacing`` and
    :meth:`restore` back to the original grid. Subclasses define ``normalize_channels`` and ``to_dict``."""

    target_spacing: tuple[float, ...]
    image_order: int
    orientation: tuple[str, str, str] | None

    def _init_grid(self, target_spacing: Sequence[float], image_order: int, orientation: Sequence[str] | None) -> None:
        if image_order not in (0, 1, 3):
            raise ValueError(f"image_order={image_order}: expected 0 (nearest), 1 (linear) or 3 (cubic)")
        if len(target_spacing) != 3 or min(target_spacing) <= 0:
            raise ValueError(f"target_spacing={tuple(target_spacing)}: expected 3 positive voxel sizes in mm")
        self.target_spacing = tuple(float(s) for s in target_spacing)
        self.image_order = int(image_order)
        self.orientation = None if orientation is None else check_axis_codes(orientation)

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def params_hash(self) -> str:
        """Stable hash of the parameters (keys the preprocessing cache)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v}' for k, v in self.to_dict().items())})"

    def reorientation(self, affine: np.ndarray, shape: Sequence[int], name: object = "image") -> Reorientation:
        """The exact permutation/flip from an image's stored array (``affine``, spatial ``shape``) to the training
        orientation; apply it before :meth:`preprocess` and undo it on the label map :meth:`restore` returns."""
        return Reorientation.to_codes(affine, shape, self.orientation, name=name)

    def new_shape(self, shape: Sequence[int], spacing: Sequence[float]) -> tuple[int, ...]:
        """Shape after resampling ``shape`` at ``spacing`` to the target spacing: ``round(shape * spacing / target)``."""
        return resampled_shape(shape, spacing, self.target_spacing)

    def _resample(self, x: np.ndarray, shape: Sequence[int]) -> np.ndarray:
        """Resample normalised ``(C, *spatial)`` float32 to ``(C, *shape)`` with ``image_order``."""
        shape = tuple(int(s) for s in shape)
        if shape == tuple(x.shape[1:]):
            return x
        if self.image_order == 1:
            return _resample_linear(torch.from_numpy(x), shape).numpy()
        if self.image_order == 0:
            return _resample_nearest(x, shape).astype(np.float32)
        from scipy import ndimage

        zoom = [n / o for n, o in zip(shape, x.shape[1:])]
        return np.stack([ndimage.zoom(c, zoom, order=3, mode="nearest", grid_mode=True, output=np.float32) for c in x])

    def preprocess_label(self, label: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
        """Resample a label map with nearest neighbour; uint8 ``(1, *new_shape)``."""
        label = np.asarray(label)
        shape = self.new_shape(label.shape, spacing)
        return _resample_nearest(label.astype(np.uint8, copy=False)[None], shape)

    def restore(self, probabilities: np.ndarray | torch.Tensor, original_shape: Sequence[int]) -> np.ndarray:
        """Map class probabilities (or logits) on the preprocessed grid back to a label map on the original grid.

        Args:
            probabilities: ``(K, *pre_shape)`` per-class scores (any device; resampled where they are).
            original_shape: ``(*spatial)`` of the raw image.

        Returns:
            uint8 label map of shape ``original_shape``: argmax after linear resampling of each class channel.

        The channels are resampled one at a time with a running maximum, so the original grid holds two score maps
        (and the labels) at any moment rather than ``K``: a 512x512x600 CT with 3 classes needs 1.3 GiB instead of
        2.5 GiB on the device. Ties go to the lower class, as with ``argmax``.
        """
        p = torch.as_tensor(probabilities)
        if p.ndim != len(original_shape) + 1:
            raise ValueError(
                f"probabilities: expected (K, *spatial) with {len(original_shape)} spatial axes, got {tuple(p.shape)}"
            )
        if p.dtype == torch.float16 and p.device.type == "cpu":
            p = p.float()
        best = _resample_linear(p[0:1], original_shape)[0]
        if tuple(p.shape[1:]) == tuple(original_shape):
            best = best.clone()  # no resampling: a view of the input, which must not be overwritten
        labels = torch.zeros(best.shape, dtype=torch.uint8, device=best.device)
        for k in range(1, p.shape[0]):
            score = _resample_linear(p[k : k + 1], original_shape)[0]
            labels[score > best] = k
            torch.maximum(best, score, out=best)
            del score
        return labels.cpu().numpy()


class CTPreprocessor(_ResamplingPreprocessor):
    """Clip to the foreground percentiles, z-score with the foreground mean/std, resample to ``target_spacing``.

    Args:
        clip_low: lower clip bound (fingerprint foreground 0.5 percentile), HU.
        clip_high: upper clip bound (fingerprint foreground 99.5 percentile), HU.
        mean: global foreground mean, HU.
        std: global foreground std, HU; values below 1e-8 are treated as 1e-8 (constant-intensity guard).
        target_spacing: voxel size to resample to, mm, in array axis order (slice axis first for KiTS19).
        image_order: image interpolation: 1 trilinear (torch, default), 3 cubic (scipy), 0 nearest.
        orientation: axis codes of the training data (the fingerprint's ``orientation``, e.g. ``("I", "P", "L")``):
            every image is brought to it by an exact permutation/flip before :meth:`preprocess` (see
            :meth:`reorientation`) and its prediction mapped back; ``None`` keeps arrays as stored (checkpoints
            written before orientation was recorded).
    """

    def __init__(
        self,
        clip_low: float,
        clip_high: float,
        mean: float,
        std: float,
        target_spacing: Sequence[float] = PAPER_TARGET_SPACING,
        image_order: int = 1,
        orientation: Sequence[str] | None = None,
    ) -> None:
        if clip_high < clip_low:
            raise ValueError(f"clip_high={clip_high} < clip_low={clip_low}")
        self._init_grid(target_spacing, image_order, orientation)
        self.clip_low = float(clip_low)
        self.clip_high = float(clip_high)
        self.mean = float(mean)
        self.std = float(std)

    @classmethod
    def from_fingerprint(
        cls,
        fingerprint: dict[str, Any],
        target_spacing: Sequence[float] | None = PAPER_TARGET_SPACING,
        image_order: int = 1,
    ) -> CTPreprocessor:
        """Build from a fingerprint (with its training ``orientation``); ``target_spacing=None`` takes the
        fingerprint's median spacing."""
        fg = fingerprint["foreground"]
        spacing = fingerprint["median_spacing"] if target_spacing is None else target_spacing
        orientation = fingerprint.get("orientation")
        return cls(
            fg["percentile_00_5"], fg["percentile_99_5"], fg["mean"], fg["std"], spacing, image_order, orientation
        )

    # -- serialisation
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON dict of the parameters (stored in checkpoints and ``preprocessor.json``)."""
        return {
            "clip_low": self.clip_low,
            "clip_high": self.clip_high,
            "mean": self.mean,
            "std": self.std,
            "target_spacing": list(self.target_spacing),
            "image_order": self.image_order,
            "label_order": 0,
            "orientation": None if self.orientation is None else list(self.orientation),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CTPreprocessor:
        """Inverse of :meth:`to_dict`; a dict without ``orientation`` (older checkpoints) keeps arrays as stored."""
        try:
            return cls(
                d["clip_low"],
                d["clip_high"],
                d["mean"],
                d["std"],
                d["target_spacing"],
                d["image_order"],
                d.get("orientation"),
            )
        except KeyError as e:
            raise DataError(
                f"preprocessor state lacks key {e}; expected the output of CTPreprocessor.to_dict"
            ) from None

    # -- forward
    def normalize(self, image: np.ndarray) -> np.ndarray:
        """Clip to ``[clip_low, clip_high]`` and z-score; float32, same shape."""
        out = np.clip(np.asarray(image, dtype=np.float32), self.clip_low, self.clip_high)
        out -= np.float32(self.mean)
        out /= np.float32(max(self.std, 1e-8))
        return out

    def preprocess(self, image: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
        """Normalise and resample one image.

        Args:
            image: ``(*spatial)`` raw intensities (HU).
            spacing: voxel size of ``image`` in mm, per array axis.

        Returns:
            float32 ``(1, *new_shape)`` with ``new_shape = self.new_shape(image.shape, spacing)``.
        """
        image = np.asarray(image)
        if image.ndim != 3:
            raise ValueError(f"image: expected a 3D array (*spatial), got shape {image.shape}")
        return self._resample(self.normalize(image)[None], self.new_shape(image.shape, spacing))


class Preprocessor(_ResamplingPreprocessor):
    """Per-channel normalisation chosen by the plan, then resampling to ``target_spacing`` (any number of channels).

    Args:
        normalization: one scheme per channel (:data:`segzoo.data.planning.NORMALIZATIONS`): ``"ct"`` clips to the
            channel's dataset-wide foreground percentiles and z-scores with its foreground mean/std (``channel_stats``),
            exactly as :class:`CTPreprocessor`; ``"zscore"`` uses the case's own mean/std (all voxels); ``"none"`` keeps
            the intensities; ``"rescale_0_1"`` maps the case's min..max to 0..1.
        channel_stats: per channel, the fingerprint's ``{"percentile_00_5", "percentile_99_5", "mean", "std"}``
            (needed for ``"ct"`` channels, ignored otherwise; ``None`` entries allowed).
        target_spacing: voxel size to resample to, mm, in the training orientation's axis order.
        image_order: image interpolation: 1 trilinear (default), 3 cubic, 0 nearest.
        orientation: axis codes of the training data (see :class:`CTPreprocessor`).
        regions: a region dataset's label encoding (nnU-Net's region labels: the values of each region, in the
            net's output order); with ``regions_class_order`` (the value each region paints) and ``num_labels``
            (label values, background included), inference turns the region outputs into label maps
            (:class:`segzoo.nets.regions.RegionScores`). Stored here because it travels with the checkpoint the same
            way; it does not change :meth:`preprocess`.

    nnU-Net z-scores MR channels inside the non-zero mask when cropping to it shrinks the case by a quarter or more
    (brain MR); segzoo z-scores over all voxels (one rule for every case; see ``docs/data/own_data.md``).
    """

    def __init__(
        self,
        normalization: Sequence[str],
        channel_stats: Sequence[dict[str, float] | None] | None = None,
        target_spacing: Sequence[float] = PAPER_TARGET_SPACING,
        image_order: int = 1,
        orientation: Sequence[str] | None = None,
        regions: Sequence[Sequence[int]] | None = None,
        regions_class_order: Sequence[int] | None = None,
        num_labels: int | None = None,
    ) -> None:
        from segzoo.data.planning import NORMALIZATIONS

        self._init_grid(target_spacing, image_order, orientation)
        self.normalization = [str(n) for n in normalization]
        if not self.normalization:
            raise ValueError("normalization: expected one scheme per input channel")
        bad = [n for n in self.normalization if n not in NORMALIZATIONS]
        if bad:
            raise ValueError(f"normalization {bad}: expected one of {NORMALIZATIONS}")
        stats = list(channel_stats) if channel_stats is not None else [None] * len(self.normalization)
        if len(stats) != len(self.normalization):
            raise ValueError(f"channel_stats has {len(stats)} entries for {len(self.normalization)} channels")
        for i, (n, st) in enumerate(zip(self.normalization, stats)):
            if n == "ct" and (
                st is None or not all(k in st for k in ("percentile_00_5", "percentile_99_5", "mean", "std"))
            ):
                raise ValueError(f"channel {i}: 'ct' normalisation needs the fingerprint's foreground statistics")
        self.channel_stats = [
            None if st is None else {k: float(st[k]) for k in ("percentile_00_5", "percentile_99_5", "mean", "std")}
            for st in stats
        ]
        self.regions = None if not regions else [[int(v) for v in r] for r in regions]
        self.regions_class_order = None if regions_class_order is None else [int(v) for v in regions_class_order]
        self.num_labels = None if num_labels is None else int(num_labels)
        if self.regions is not None and (
            self.regions_class_order is None
            or len(self.regions_class_order) != len(self.regions)
            or self.num_labels is None
        ):
            raise ValueError("regions need regions_class_order (one value per region) and num_labels")

    @property
    def in_channels(self) -> int:
        return len(self.normalization)

    @classmethod
    def from_plan(
        cls, plan: dict[str, Any], fingerprint: dict[str, Any] | None, image_order: int = 1, **labels: Any
    ) -> Preprocessor:
        """From a :func:`segzoo.data.planning.plan_dataset` plan and (for CT channels) the voxel fingerprint;
        ``labels``: ``regions``, ``regions_class_order`` and ``num_labels`` of a region dataset."""
        stats = (fingerprint or {}).get("channels") or [None] * len(plan["normalization"])
        return cls(plan["normalization"], stats, plan["target_spacing"], image_order, plan.get("orientation"), **labels)

    def to_dict(self) -> dict[str, Any]:
        out = {
            "normalization": list(self.normalization),
            "channel_stats": [None if st is None else dict(st) for st in self.channel_stats],
            "target_spacing": list(self.target_spacing),
            "image_order": self.image_order,
            "label_order": 0,
            "orientation": None if self.orientation is None else list(self.orientation),
        }
        if self.regions is not None:  # the label encoding of a region dataset (its net has one output per region)
            out.update(regions=self.regions, regions_class_order=self.regions_class_order, num_labels=self.num_labels)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessor:
        try:
            return cls(
                d["normalization"],
                d.get("channel_stats"),
                d["target_spacing"],
                d["image_order"],
                d.get("orientation"),
                d.get("regions"),
                d.get("regions_class_order"),
                d.get("num_labels"),
            )
        except KeyError as e:
            raise DataError(f"preprocessor state lacks key {e}; expected the output of Preprocessor.to_dict") from None

    def normalize(self, image: np.ndarray) -> np.ndarray:
        """Normalise ``(C, *spatial)`` channel by channel; float32, same shape."""
        image = np.asarray(image, dtype=np.float32)
        if image.shape[0] != self.in_channels:
            raise ValueError(f"image has {image.shape[0]} channels; this preprocessing expects {self.in_channels}")
        out = np.empty_like(image)
        for c, (scheme, st) in enumerate(zip(self.normalization, self.channel_stats)):
            x = image[c]
            if scheme == "ct":
                y = np.clip(x, st["percentile_00_5"], st["percentile_99_5"])
                y = (y - np.float32(st["mean"])) / np.float32(max(st["std"], 1e-8))
            elif scheme == "zscore":
                y = (x - x.mean(dtype=np.float64)) / max(float(x.std(dtype=np.float64)), 1e-8)
            elif scheme == "rescale_0_1":
                lo, hi = float(x.min()), float(x.max())
                y = (x - lo) / max(hi - lo, 1e-8)
            else:
                y = x
            out[c] = y
        return out

    def preprocess(self, image: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
        """Normalise and resample ``(C, *spatial)`` (or ``(*spatial)`` for one channel) to float32 ``(C, *new)``."""
        image = np.asarray(image)
        if image.ndim == 3:
            image = image[None]
        if image.ndim != 4:
            raise ValueError(f"image: expected (C, *spatial) with 3 spatial axes, got shape {image.shape}")
        return self._resample(self.normalize(image), self.new_shape(image.shape[1:], spacing))


def _resample_nearest(array: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Nearest-neighbour resampling of ``(C, *spatial)`` (pixel-centre mapping), keeping the dtype."""
    if tuple(array.shape[1:]) == tuple(shape):
        return np.ascontiguousarray(array)
    t = torch.from_numpy(np.ascontiguousarray(array)).float()[None]
    out = F.interpolate(t, size=tuple(int(s) for s in shape), mode="nearest-exact")[0]
    return out.numpy().astype(array.dtype)
