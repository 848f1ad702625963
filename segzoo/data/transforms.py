"""Training-patch augmentation for KiTS19: rotation, scaling, elastic deformation, gamma, mirroring.

Reference: Zhao et al., "Multi Scale Supervised 3D U-Net for Kidney and Tumor Segmentation" (KiTS19), section 2.1
("random rotation, random scaling, random elastic deformation, gamma correction and mirroring"); probabilities and
ranges where the paper is silent follow nnU-Net (Isensee et al., 2021) and are constructor arguments.

Design (see ``docs/data/kits19.md``):
- The dataset crops a region larger than the patch (``RandSpatialAugmentd.input_size``, patch + margin on each side,
  the margin covering the largest rotation/scaling/elastic displacement); :class:`RandSpatialAugmentd` then samples
  the patch grid through rotation + scaling + elastic displacement in ONE ``grid_sample`` (image linear, label
  nearest) evaluated only at the ``patch_size`` output points, which also center-crops away the border. When no
  spatial augmentation fires the crop is an exact slice (no resampling, no blur).
- Rotation, scaling and elastic deformation fire independently (nnU-Net: 0.2 each). Rotation is about the slice
  axis only by default: KiTS19 voxels are ~4x anisotropic (3 mm vs 0.78 mm), where nnU-Net also switches to
  in-plane ("dummy 2D") rotation.
- Elastic deformation draws gaussian displacements on a coarse control grid and upsamples them trilinearly (as MONAI's
  ``RandDeformGrid``); MONAI's ``Rand3DElasticd`` smooths a full-resolution random field with a gaussian, which costs
  ~0.8 s per 192x192x64 patch on a CPU, ~20x more.
- Gamma: MONAI ``RandAdjustContrastd`` (``retain_stats``: mean/std kept, as nnU-Net); mirroring: ``RandFlipd`` per axis.
- Ranges and probabilities come from one :class:`~segzoo.data.augment.AugmentConfig`, the same the on-device
  :class:`~segzoo.data.gpu_augment.BatchAugment` takes (``tests/data/test_augment.py`` checks both draw alike).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import (
    Compose,
    MapTransform,
    RandAdjustContrastd,
    RandFlipd,
    RandGaussianNoised,
    RandHistogramShiftd,
    Randomizable,
    RandScaleIntensityd,
    RandShiftIntensityd,
)
from monai.transforms.utils import create_rotate

from segzoo.data.augment import AugmentConfig


class RandSpatialAugmentd(Randomizable, MapTransform):
    """Rotation + scaling + elastic deformation in one resampling, output cropped to ``patch_size`` at the centre.

    Input ``data[key]``: ``(C, *input_size)`` tensors/arrays (the crop with margin); output ``(C, *patch_size)``
    float tensors (labels keep integer values: nearest sampling).

    Args:
        keys: keys to transform (typically ``("image", "label")``).
        patch_size: output spatial size ``(D, H, W)``.
        augment: ranges and probabilities (rotation, scaling, elastic, ``padding_mode``; the other fields are not
            used here); default :class:`~segzoo.data.augment.AugmentConfig` ``()``.
        mode: per key ``"bilinear"`` (trilinear) or ``"nearest"``.
    """

    def __init__(
        self,
        keys: Sequence[str],
        patch_size: Sequence[int],
        augment: AugmentConfig | None = None,
        mode: Sequence[str] = ("bilinear", "nearest"),
    ) -> None:
        MapTransform.__init__(self, keys)
        if len(patch_size) != 3:
            raise ValueError(f"patch_size={tuple(patch_size)}: expected 3 sizes (D, H, W)")
        if len(mode) != len(self.keys):
            raise ValueError(f"mode={tuple(mode)}: expected one mode per key {self.keys}")
        cfg = AugmentConfig() if augment is None else augment
        self.patch_size = tuple(int(s) for s in patch_size)
        self.mode = tuple(mode)
        self.rotate_prob, self.scale_prob, self.elastic_prob = cfg.rotate_prob, cfg.scale_prob, cfg.elastic_prob
        self.rotate_range = cfg.rotate_range
        if len(self.rotate_range) != 3:
            raise ValueError(f"rotate_range={self.rotate_range}: expected 3 angles (about axes 0, 1, 2) for 3D patches")
        self.scale_range = cfg.scale_range
        self.elastic_magnitude = cfg.elastic_magnitude
        self.elastic_control_spacing = cfg.elastic_control_spacing
        self.padding_mode = cfg.padding_mode
        self.input_size = self._input_size()
        self._matrix: np.ndarray | None = None
        self._displacement: torch.Tensor | None = None

    def _input_size(self) -> tuple[int, ...]:
        """Crop size with a margin (even, same on both sides) that holds every transformed patch point."""
        p = np.array(self.patch_size, dtype=np.float64)
        half = (p - 1) / 2
        extent = half.copy()
        if self.rotate_prob > 0 or self.scale_prob > 0:
            # worst case over the corners of the rotated/scaled patch (zoom < 1 samples a larger region)
            zoom_out = 1.0 / self.scale_range[0] if self.scale_prob > 0 else 1.0
            r = create_rotate(3, [a if self.rotate_prob > 0 else 0.0 for a in self.rotate_range])[:3, :3]
            corners = np.array(np.meshgrid(*[[-h, h] for h in half], indexing="ij")).reshape(3, -1)
            extent = np.maximum(extent, np.abs(np.abs(r) @ np.abs(corners)).max(1) * max(zoom_out, 1.0))
        if self.elastic_prob > 0:
            extent = extent + 3.0 * np.array(self.elastic_magnitude)
        margin = np.ceil(extent - half).astype(int)
        return tuple(int(s + 2 * m) for s, m in zip(self.patch_size, margin))

    def randomize(self, data=None) -> None:
        r = self.R
        matrix = np.eye(3)
        if r.rand() < self.rotate_prob:
            angles = [r.uniform(-a, a) if a > 0 else 0.0 for a in self.rotate_range]
            matrix = create_rotate(3, angles)[:3, :3] @ matrix
        if r.rand() < self.scale_prob:
            matrix = matrix / r.uniform(*self.scale_range)
        self._matrix = None if np.allclose(matrix, np.eye(3)) else matrix
        self._displacement = None
        if r.rand() < self.elastic_prob:
            ctrl = [max(2, math.ceil(s / c) + 1) for s, c in zip(self.patch_size, self.elastic_control_spacing)]
            field = r.normal(size=(3, *ctrl)) * np.array(self.elastic_magnitude)[:, None, None, None]
            self._displacement = F.interpolate(
                torch.as_tensor(field, dtype=torch.float32)[None],
                size=self.patch_size,
                mode="trilinear",
                align_corners=True,
            )[0]

    def _grid(self, in_size: Sequence[int]) -> torch.Tensor:
        """``(1, D, H, W, 3)`` normalised sampling grid (x, y, z order) for ``grid_sample`` on the input crop.

        Input voxel offset from the crop centre = ``matrix @ (output offset from the patch centre) + displacement``;
        with ``align_corners=True`` on both sides that is ``affine_grid`` with
        ``theta = diag(2 / (in - 1)) @ matrix @ diag((patch - 1) / 2)`` (rows/columns reversed to x, y, z).
        """
        in_scale = 2.0 / np.maximum(np.array(in_size, dtype=np.float64) - 1, 1)
        out_half = (np.array(self.patch_size, dtype=np.float64) - 1) / 2
        matrix = np.eye(3) if self._matrix is None else self._matrix
        theta = (in_scale[:, None] * matrix * out_half[None, :])[::-1, ::-1]
        theta = torch.as_tensor(np.concatenate([theta, np.zeros((3, 1))], 1).copy(), dtype=torch.float32)
        grid = F.affine_grid(theta[None], [1, 1, *self.patch_size], align_corners=True)
        if self._displacement is not None:
            disp = self._displacement * torch.as_tensor(in_scale, dtype=torch.float32).view(3, 1, 1, 1)
            grid = grid + disp.flip(0).permute(1, 2, 3, 0)[None]
        return grid

    def draw_input_size(self) -> tuple[int, ...]:
        """Crop size the CURRENT draw needs (after :meth:`randomize`): ``patch_size`` when no spatial transform
        fired, otherwise the tight (even-margin) extent of the transformed patch grid, at most ``input_size``.

        Lets a dataset read only what it needs from the cache: ~50% of the draws at the default probabilities.
        """
        if self._matrix is None and self._displacement is None:
            return self.patch_size
        half = (np.array(self.patch_size, dtype=np.float64) - 1) / 2
        corners = np.array(np.meshgrid(*[[-h, h] for h in half], indexing="ij")).reshape(3, -1)
        matrix = np.eye(3) if self._matrix is None else self._matrix
        extent = np.abs(matrix @ corners).max(1)
        if self._displacement is not None:
            extent = extent + self._displacement.abs().amax(dim=(1, 2, 3)).numpy()
        margin = np.maximum(np.ceil(extent - half - 1e-6), 0).astype(int)
        return tuple(min(int(p + 2 * m), s) for p, m, s in zip(self.patch_size, margin, self.input_size))

    def __call__(self, data: Mapping[Hashable, torch.Tensor], randomize: bool = True) -> dict[Hashable, torch.Tensor]:
        """Warp ``data`` (crops of size ``input_size``, or ``draw_input_size()`` when ``randomize=False``)."""
        d = dict(data)
        if randomize:
            self.randomize()
        grid = None
        for key, mode in zip(self.key_iterator(d), self.mode):
            x = torch.as_tensor(d[key])
            in_size = tuple(x.shape[1:])
            if self._matrix is None and self._displacement is None:
                # no spatial augmentation: exact centre crop
                lo = [(i - p) // 2 for i, p in zip(in_size, self.patch_size)]
                d[key] = x[(slice(None), *(slice(a, a + p) for a, p in zip(lo, self.patch_size)))]
                continue
            if grid is None:
                grid = self._grid(in_size)
            dtype = x.dtype
            y = F.grid_sample(x[None].float(), grid, mode=mode, padding_mode=self.padding_mode, align_corners=True)[0]
            d[key] = y if mode != "nearest" else y.round().to(dtype)
        return d


def build_kits19_transforms(
    patch_size: Sequence[int],
    augment: AugmentConfig | None = None,
    keys: Sequence[str] = ("image", "label"),
) -> Compose:
    """Training augmentation for a KiTS19 patch dict ``{"image": (1, *crop), "label": (1, *crop)}``.

    The input crop must have the size ``transforms.transforms[0].input_size`` (see :func:`augmentation_input_size`);
    the output has ``patch_size``. Order: spatial (rotation + scaling + elastic, one resampling) -> gamma (image only)
    -> intensity scaling, noise, intensity shift, histogram shift (image only; each only when its probability is > 0,
    off by default) -> mirroring per axis.

    Args:
        patch_size: output patch ``(D, H, W)``.
        augment: ranges and probabilities; default :class:`~segzoo.data.augment.AugmentConfig` ``()`` (the same
            config :class:`~segzoo.data.gpu_augment.BatchAugment` takes).
        keys: image key first, then the label key.

    Returns:
        A MONAI ``Compose``; call ``set_random_state(seed)`` on it to reseed (the datamodule does, per item).
    """
    cfg = AugmentConfig() if augment is None else augment
    image_key = keys[0]
    transforms = [
        RandSpatialAugmentd(keys, patch_size, cfg, mode=("bilinear",) + ("nearest",) * (len(keys) - 1)),
        RandAdjustContrastd(image_key, prob=cfg.gamma_prob, gamma=cfg.gamma_range, retain_stats=True),
    ]
    if cfg.intensity_scale_prob > 0:
        transforms.append(
            RandScaleIntensityd(image_key, factors=cfg.intensity_scale_range, prob=cfg.intensity_scale_prob)
        )
    if cfg.noise_prob > 0:
        transforms.append(RandGaussianNoised(image_key, prob=cfg.noise_prob, std=cfg.noise_std))
    if cfg.intensity_shift_prob > 0:
        transforms.append(
            RandShiftIntensityd(image_key, offsets=cfg.intensity_shift_range, prob=cfg.intensity_shift_prob)
        )
    if cfg.histogram_shift_prob > 0:
        transforms.append(
            RandHistogramShiftd(image_key, num_control_points=cfg.histogram_shift_points, prob=cfg.histogram_shift_prob)
        )
    transforms += [RandFlipd(keys, prob=cfg.flip_prob, spatial_axis=a) for a in cfg.flip_axes]
    return Compose(transforms)


def augmentation_input_size(transforms: Compose | None, patch_size: Sequence[int]) -> tuple[int, ...]:
    """Crop size the dataset must cut before ``transforms`` (``patch_size`` when there is no spatial transform)."""
    if transforms is not None:
        for t in transforms.transforms:
            if isinstance(t, RandSpatialAugmentd):
                return t.input_size
    return tuple(int(s) for s in patch_size)
