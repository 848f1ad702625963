"""Batch augmentation on the training device: rotation, scaling, elastic, gamma and mirroring of a whole batch.

Reference: Zhao et al., "Multi Scale Supervised 3D U-Net for Kidney and Tumor Segmentation" (KiTS19), section 2.1
("random rotation, random scaling, random elastic deformation, gamma correction and mirroring"); probabilities and
ranges where the paper is silent follow nnU-Net (Isensee et al., 2021), the same defaults as the CPU chain
:func:`segzoo.data.transforms.build_kits19_transforms`.

nnU-Net's most common complaint is a GPU starved by CPU augmentation. :class:`BatchAugment` moves the expensive part
(the resampling) to the device the batch already lives on: ``SegmentationTask(batch_augment=BatchAugment(...))``
applies it at the start of ``training_step`` (the batch is on the device there), and the CPU DataLoader workers only
crop (``KiTS19DataModule(augment=False)``). Per sample, rotation + scaling + a coarse elastic displacement are composed
into ONE sampling grid and the whole batch is resampled by ONE ``F.grid_sample`` call per tensor (image bilinear, label
nearest); gamma is vectorised over the batch (mean and std retained, MONAI ``AdjustContrast`` formula) and mirroring
is ``torch.where`` over flipped copies. Samples whose spatial transform is a signed axis permutation (identity,
90-degree rotations of square planes, no scaling, no elastic) are permuted/flipped exactly instead of resampled.

Conventions (identical to :class:`segzoo.data.transforms.RandSpatialAugmentd`): the input voxel offset from the
volume centre is ``matrix @ output offset + displacement``; ``matrix = create_rotate(angles) / zoom`` with MONAI's
rotation convention (``rotate_range[0]`` rotates about spatial axis 0, i.e. in-plane for ``(D, H, W)`` patches);
``zoom > 1`` magnifies. Where the CPU chain crops a margin first, the batch here is already patch-sized, so points
mapped outside the patch take ``padding_mode`` (a choice, see ``docs/benchmarks.md``): ``"border"`` repeats the edge
voxel (default), ``"zeros"`` pads the image with 0 (the z-scored mean) and the label with background.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def rotation_matrices(angles: torch.Tensor) -> torch.Tensor:
    """Rotation matrices in MONAI's convention (``monai.transforms.utils.create_rotate``), batched.

    Args:
        angles: ``(B, 1)`` radians for 2D or ``(B, 3)`` for 3D (about spatial axes 0, 1, 2, applied as
            ``R0 @ R1 @ R2``).

    Returns:
        ``(B, n, n)`` rotation matrices, ``n`` = 2 or 3, same dtype/device as ``angles``.
    """
    c, s = torch.cos(angles), torch.sin(angles)
    one, zero = torch.ones_like(c[:, 0]), torch.zeros_like(c[:, 0])
    if angles.shape[1] == 1:
        return torch.stack([torch.stack([c[:, 0], -s[:, 0]], -1), torch.stack([s[:, 0], c[:, 0]], -1)], 1)
    r0 = torch.stack(
        [
            torch.stack([one, zero, zero], -1),
            torch.stack([zero, c[:, 0], -s[:, 0]], -1),
            torch.stack([zero, s[:, 0], c[:, 0]], -1),
        ],
        1,
    )
    r1 = torch.stack(
        [
            torch.stack([c[:, 1], zero, s[:, 1]], -1),
            torch.stack([zero, one, zero], -1),
            torch.stack([-s[:, 1], zero, c[:, 1]], -1),
        ],
        1,
    )
    r2 = torch.stack(
        [
            torch.stack([c[:, 2], -s[:, 2], zero], -1),
            torch.stack([s[:, 2], c[:, 2], zero], -1),
            torch.stack([zero, zero, one], -1),
        ],
        1,
    )
    return r0 @ r1 @ r2


def adjust_gamma(image: torch.Tensor, gamma: torch.Tensor, retain_stats: bool = True) -> torch.Tensor:
    """Per-sample gamma on ``(B, C, *spatial)``, MONAI ``AdjustContrast`` formula (statistics over ``(C, *spatial)``).

    ``((x - min) / (range + 1e-7)) ** gamma * range + min``, then (``retain_stats``) rescaled to the sample's original
    mean and (unbiased) standard deviation.

    Args:
        image: ``(B, C, *spatial)`` float tensor.
        gamma: ``(B,)`` exponents.
        retain_stats: keep each sample's mean and std.
    """
    flat = image.flatten(1)
    shape = (-1,) + (1,) * (image.ndim - 1)
    lo, hi = flat.amin(1).view(shape), flat.amax(1).view(shape)
    rng = hi - lo
    out = ((image - lo) / (rng + 1e-7)) ** gamma.view(shape).to(image.dtype) * rng + lo
    if retain_stats:
        mean, std = flat.mean(1).view(shape), flat.std(1).view(shape)
        out_flat = out.flatten(1)
        out = (out - out_flat.mean(1).view(shape)) / (out_flat.std(1).view(shape) + 1e-8) * std + mean
    return out


class BatchAugment(nn.Module):
    """Random spatial + intensity augmentation of a whole batch dict, on whatever device the batch is on.

    Input/output: the segzoo batch dict ``{"image": (B, C, *spatial) float, "label": (B, 1, *spatial) int, ...}``
    (2D or 3D); other keys pass through unchanged. Order: spatial (one resampling) -> gamma (image) -> mirroring.
    Random numbers are drawn on the CPU from ``generator`` (or the one seeded by ``seed``, or torch's global RNG)
    and then moved, so a seed gives the same augmentation on CPU and GPU.

    Args:
        rotate_prob: probability of a rotation per sample.
        rotate_range: max absolute angle per axis in radians (about spatial axes 0, 1, 2); default in-plane only
            (about the slice axis), as the CPU chain. For 2D batches only ``rotate_range[0]`` is used.
        scale_prob: probability of an isotropic zoom per sample.
        scale_range: ``(min, max)`` zoom factor; > 1 magnifies.
        elastic_prob: probability of an elastic deformation per sample.
        elastic_magnitude: std (voxels) of the control-point displacements per axis (2D: last two entries).
        elastic_control_spacing: control-point spacing per axis in voxels (2D: last two entries); the displacement
            is upsampled (bi/trilinear) from this coarse grid, so it adds no extra resampling of the image.
        gamma_prob: probability of a gamma transform of the image per sample (mean and std retained).
        gamma_range: ``(min, max)`` of the uniformly drawn gamma.
        flip_prob: mirroring probability per sample and axis.
        flip_axes: spatial axes that may be mirrored (0 = first spatial axis); 2D batches need e.g. ``(0, 1)``.
        padding_mode: ``grid_sample`` padding for points mapped outside the batch's patch: ``"border"``,
            ``"zeros"`` or ``"reflection"``.
        image_key: key of the image tensor.
        label_key: key of the label tensor (``None`` or a missing key: image only).
        seed: seed of this module's own ``torch.Generator``; ``None`` uses torch's global RNG (which
            ``seed_everything`` seeds).
    """

    def __init__(
        self,
        rotate_prob: float = 0.2,
        rotate_range: Sequence[float] = (math.pi / 6, 0.0, 0.0),
        scale_prob: float = 0.2,
        scale_range: tuple[float, float] = (0.7, 1.4),
        elastic_prob: float = 0.2,
        elastic_magnitude: Sequence[float] = (1.0, 4.0, 4.0),
        elastic_control_spacing: Sequence[int] = (8, 32, 32),
        gamma_prob: float = 0.3,
        gamma_range: tuple[float, float] = (0.7, 1.5),
        flip_prob: float = 0.5,
        flip_axes: Sequence[int] = (0, 1, 2),
        padding_mode: str = "border",
        image_key: str = "image",
        label_key: str | None = "label",
        seed: int | None = None,
    ) -> None:
        super().__init__()
        for name, p in [
            ("rotate_prob", rotate_prob),
            ("scale_prob", scale_prob),
            ("elastic_prob", elastic_prob),
            ("gamma_prob", gamma_prob),
            ("flip_prob", flip_prob),
        ]:
            if not 0.0 <= float(p) <= 1.0:
                raise ValueError(f"BatchAugment: {name}={p} must be a probability in [0, 1]")
        if not 0 < scale_range[0] <= scale_range[1]:
            raise ValueError(f"BatchAugment: scale_range={tuple(scale_range)} must satisfy 0 < min <= max")
        if not 0 < gamma_range[0] <= gamma_range[1]:
            raise ValueError(f"BatchAugment: gamma_range={tuple(gamma_range)} must satisfy 0 < min <= max")
        if padding_mode not in ("border", "zeros", "reflection"):
            raise ValueError(f"BatchAugment: padding_mode={padding_mode!r}, expected 'border', 'zeros' or 'reflection'")
        self.rotate_prob, self.scale_prob, self.elastic_prob = (
            float(rotate_prob),
            float(scale_prob),
            float(elastic_prob),
        )
        self.gamma_prob, self.flip_prob = float(gamma_prob), float(flip_prob)
        self.rotate_range = tuple(float(r) for r in rotate_range)
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.elastic_magnitude = tuple(float(m) for m in elastic_magnitude)
        self.elastic_control_spacing = tuple(int(s) for s in elastic_control_spacing)
        self.gamma_range = (float(gamma_range[0]), float(gamma_range[1]))
        self.flip_axes = tuple(int(a) for a in flip_axes)
        self.padding_mode = padding_mode
        self.image_key, self.label_key = image_key, label_key
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None

    # ------------------------------------------------------------------ random draws
    def _rand(self, *shape: int, generator: torch.Generator | None) -> torch.Tensor:
        return torch.rand(*shape, generator=generator, dtype=torch.float64)

    def draw(
        self, batch_size: int, spatial_size: Sequence[int], generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor | None]:
        """Draw the random parameters of one batch (on the CPU).

        Returns:
            dict with ``"matrix"`` ``(B, n, n)`` float64, ``"displacement"`` ``(B, n, *ctrl)`` float32 control-point
            displacements in voxels or ``None``, ``"gamma"`` ``(B,)`` float64 (1 = off), ``"flip"`` ``(B, n)`` bool.
        """
        g = generator if generator is not None else self.generator
        n = len(spatial_size)
        if n not in (2, 3):
            raise ValueError(f"BatchAugment: expected 2 or 3 spatial dims, got spatial size {tuple(spatial_size)}")
        b = batch_size
        rot_range = torch.tensor(self.rotate_range[:1] if n == 2 else self.rotate_range[:3], dtype=torch.float64)
        if rot_range.numel() != (1 if n == 2 else 3):
            raise ValueError(f"BatchAugment: rotate_range={self.rotate_range} needs 3 angles for 3D batches")
        rotate = self._rand(b, generator=g) < self.rotate_prob
        angles = (self._rand(b, rot_range.numel(), generator=g) * 2 - 1) * rot_range * rotate[:, None]
        scale = self._rand(b, generator=g) < self.scale_prob
        lo, hi = self.scale_range
        zoom = torch.where(scale, lo + (hi - lo) * self._rand(b, generator=g), torch.ones(b, dtype=torch.float64))
        matrix = rotation_matrices(angles) / zoom[:, None, None]

        elastic = self._rand(b, generator=g) < self.elastic_prob
        displacement = None
        if self.elastic_prob > 0:
            mag = torch.tensor(self.elastic_magnitude[-n:], dtype=torch.float32)
            spacing = self.elastic_control_spacing[-n:]
            ctrl = [max(2, math.ceil(s / c) + 1) for s, c in zip(spatial_size, spacing)]
            field = torch.randn(b, n, *ctrl, generator=g) * mag.view(1, n, *([1] * n))
            field = field * elastic.view(b, *([1] * (n + 1)))
            displacement = field if bool(elastic.any()) else None

        gamma_on = self._rand(b, generator=g) < self.gamma_prob
        glo, ghi = self.gamma_range
        gamma = torch.where(
            gamma_on, glo + (ghi - glo) * self._rand(b, generator=g), torch.ones(b, dtype=torch.float64)
        )
        flip = torch.zeros(b, n, dtype=torch.bool)
        for a in self.flip_axes:
            if not 0 <= a < n:
                raise ValueError(f"BatchAugment: flip axis {a} is not a spatial axis of a {n}D batch")
            flip[:, a] = self._rand(b, generator=g) < self.flip_prob
        return {"matrix": matrix, "displacement": displacement, "gamma": gamma, "flip": flip}

    # ------------------------------------------------------------------ application
    def forward(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> dict[str, Any]:
        """Augment ``batch`` (a new dict is returned; the input tensors are not modified)."""
        image = batch[self.image_key]
        if not torch.is_tensor(image) or image.ndim not in (4, 5):
            shape = tuple(image.shape) if torch.is_tensor(image) else type(image).__name__
            raise ValueError(f"BatchAugment: batch['{self.image_key}'] must be a (B, C, *spatial) tensor, got {shape}")
        params = self.draw(image.shape[0], image.shape[2:], generator)
        return self.apply(batch, **params)

    def apply(
        self,
        batch: dict[str, Any],
        matrix: torch.Tensor | None = None,
        displacement: torch.Tensor | None = None,
        gamma: torch.Tensor | None = None,
        flip: torch.Tensor | None = None,
    ) -> dict[str, Any]:
        """Apply given (not random) parameters; see :meth:`draw` for their shapes. ``None`` = that part off."""
        out = dict(batch)
        image = batch[self.image_key]
        label = batch.get(self.label_key) if self.label_key is not None else None
        b, n = image.shape[0], image.ndim - 2
        if label is not None and (label.shape[0] != b or tuple(label.shape[2:]) != tuple(image.shape[2:])):
            raise ValueError(
                f"BatchAugment: batch['{self.label_key}'] has shape {tuple(label.shape)}, expected (B, 1, *spatial) "
                f"matching the image {tuple(image.shape)}"
            )
        if matrix is not None or displacement is not None:
            image, label = self._spatial(image, label, matrix, displacement)
        if gamma is not None:
            on = gamma.cpu() != 1
            if bool(on.any()):
                adjusted = adjust_gamma(image.float(), gamma.to(image.device)).to(image.dtype)
                image = torch.where(on.to(image.device).view(-1, *([1] * (n + 1))), adjusted, image)
        if flip is not None:
            flip_cpu = flip.cpu()  # decide on the host which axes need work: no device sync per axis
            for a in range(n):
                if bool(flip_cpu[:, a].any()):
                    mask = flip_cpu[:, a].to(image.device).view(-1, *([1] * (n + 1)))
                    image = torch.where(mask, image.flip(a + 2), image)
                    if label is not None:
                        label = torch.where(mask, label.flip(a + 2), label)
        out[self.image_key] = image
        if label is not None:
            out[self.label_key] = label
        return out

    def _spatial(
        self,
        image: torch.Tensor,
        label: torch.Tensor | None,
        matrix: torch.Tensor | None,
        displacement: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        b, n = image.shape[0], image.ndim - 2
        size = tuple(image.shape[2:])
        eye = torch.eye(n, dtype=torch.float64)
        matrix = eye.expand(b, n, n) if matrix is None else matrix.detach().to("cpu", torch.float64)
        moved = [
            i
            for i in range(b)
            if not torch.allclose(matrix[i], eye, atol=1e-9)
            or (displacement is not None and bool(displacement[i].abs().amax() > 0))
        ]
        if not moved:
            return image, label
        image_out, label_out = image.clone(), None if label is None else label.clone()
        resample = []
        for i in moved:
            perm = self._signed_permutation(matrix[i], size)
            if perm is not None and (displacement is None or not bool(displacement[i].abs().amax() > 0)):
                order, signs = perm
                image_out[i] = self._permute(image[i], order, signs)
                if label is not None:
                    label_out[i] = self._permute(label[i], order, signs)
            else:
                resample.append(i)
        if not resample:
            return image_out, label_out
        idx = torch.tensor(resample, device=image.device)
        grid = self._grid(matrix[resample], None if displacement is None else displacement[resample], size, image)
        warped = F.grid_sample(
            image[idx].float(), grid, mode="bilinear", padding_mode=self.padding_mode, align_corners=True
        )
        image_out[idx] = warped.to(image.dtype)
        if label is not None:
            lab = F.grid_sample(
                label[idx].float(), grid, mode="nearest", padding_mode=self.padding_mode, align_corners=True
            )
            label_out[idx] = lab.round().to(label.dtype)
        return image_out, label_out

    @staticmethod
    def _signed_permutation(m: torch.Tensor, size: Sequence[int]) -> tuple[list[int], list[int]] | None:
        """``(order, signs)`` if ``m`` is a signed permutation between equal-sized axes, else ``None``."""
        r = m.round()
        if not torch.allclose(m, r, atol=1e-6) or not bool((r.abs().sum(0) == 1).all() & (r.abs().sum(1) == 1).all()):
            return None
        order = [int(r[a].abs().argmax()) for a in range(len(size))]  # input axis a follows output axis order[a]
        if any(size[a] != size[order[a]] for a in range(len(size))):
            return None
        return order, [int(r[a, order[a]]) for a in range(len(size))]

    @staticmethod
    def _permute(x: torch.Tensor, order: list[int], signs: list[int]) -> torch.Tensor:
        """``out[j] = x[i]`` with centred ``i_a = signs[a] * j_order[a]`` for a ``(C, *spatial)`` tensor."""
        n = len(order)
        inverse = [0] * n
        for a, b in enumerate(order):
            inverse[b] = a
        y = x.permute(0, *[inverse[b] + 1 for b in range(n)])
        flips = [order[a] + 1 for a in range(n) if signs[a] < 0]
        return y.flip(flips) if flips else y

    @staticmethod
    def _grid(
        matrix: torch.Tensor, displacement: torch.Tensor | None, size: Sequence[int], like: torch.Tensor
    ) -> torch.Tensor:
        """``(b, *size, n)`` normalised grid (x, y[, z] order) for ``grid_sample(align_corners=True)``."""
        n = len(size)
        half = (torch.tensor(size, dtype=torch.float64) - 1) / 2
        scale = 1.0 / half.clamp(min=0.5)
        # normalised in = diag(1/half) @ matrix @ diag(half) @ normalised out; rows/cols reversed to x, y, z
        theta = (scale.view(1, n, 1) * matrix * half.view(1, 1, n)).flip(1).flip(2)
        theta = torch.cat([theta, torch.zeros(theta.shape[0], n, 1, dtype=theta.dtype)], 2)
        theta = theta.to(like.device, torch.float32)
        grid = F.affine_grid(theta, [theta.shape[0], 1, *size], align_corners=True)
        if displacement is not None:
            mode = "trilinear" if n == 3 else "bilinear"
            disp = F.interpolate(displacement.to(like.device, torch.float32), size=size, mode=mode, align_corners=True)
            disp = disp * scale.to(like.device, torch.float32).view(1, n, *([1] * n))
            grid = grid + disp.flip(1).movedim(1, -1)
        return grid
