"""Batch augmentation on the training device: rotation, scaling, elastic, gamma and mirroring of a whole batch.

Reference: Zhao et al., "Multi Scale Supervised 3D U-Net for Kidney and Tumor Segmentation" (KiTS19), section 2.1
("random rotation, random scaling, random elastic deformation, gamma correction and mirroring"); probabilities and
ranges where the paper is silent follow nnU-Net (Isensee et al., 2021). Ranges and probabilities come from the one
:class:`~segzoo.data.augment.AugmentConfig` the CPU chain :func:`segzoo.data.transforms.build_kits19_transforms` also
takes, so the two paths draw from the same distributions (``tests/data/test_augment.py``).

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

from segzoo.data.augment import AugmentConfig


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


def histogram_shift_batch(image: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """MONAI ``RandHistogramShift`` per sample of ``(B, C, *spatial)``: intensities rescaled to ``[0, 1]`` by the
    sample's min / max, mapped piecewise-linearly from ``linspace(0, 1, n)`` to the sample's control ``points``
    (``(B, P)`` from :meth:`BatchAugment.draw_histogram_shift`; trailing NaNs pad, a NaN row = unchanged), rescaled back.
    """
    out = image
    for i in range(image.shape[0]):
        row = points[i]
        n = int((~torch.isnan(row)).sum())
        if n < 2:
            continue
        fp = row[:n].to(image.device, torch.float32)
        xp = torch.linspace(0, 1, n, device=image.device, dtype=torch.float32)
        x = image[i].float()
        lo, hi = x.min(), x.max()
        if hi <= lo:
            continue
        t = ((x - lo) / (hi - lo)).clamp(0, 1)
        k = (torch.searchsorted(xp, t.reshape(-1).contiguous()) - 1).clamp(0, n - 2).reshape(t.shape)
        slope = (fp[1:] - fp[:-1]) / (xp[1:] - xp[:-1])
        mapped = fp[k] + slope[k] * (t - xp[k])
        if out is image:
            out = image.clone()
        out[i] = (mapped * (hi - lo) + lo).to(image.dtype)
    return out


class BatchAugment(nn.Module):
    """Random spatial + intensity augmentation of a whole batch dict, on whatever device the batch is on.

    Input/output: the segzoo batch dict ``{"image": (B, C, *spatial) float, "label": (B, 1, *spatial) int, ...}``
    (2D or 3D); other keys pass through unchanged. Order: spatial (one resampling) -> gamma -> intensity scaling,
    noise, intensity shift, histogram shift (image; each only when its probability is > 0) -> mirroring.
    Random numbers are drawn on the CPU from ``generator`` (or the one seeded by ``seed``, or torch's global RNG)
    and then moved, so a seed gives the same augmentation on CPU and GPU.

    Args:
        config: ranges and probabilities (per sample and, for flips, per axis), the same
            :class:`~segzoo.data.augment.AugmentConfig` the CPU chain takes; default ``AugmentConfig()``. For 2D
            batches only ``rotate_range[0]`` and the last two entries of the elastic fields are used, and
            ``flip_axes`` must name 2D axes (e.g. ``(0, 1)``). ``padding_mode`` applies to points mapped outside the
            batch's patch.
        image_key: key of the image tensor.
        label_key: key of the label tensor (``None`` or a missing key: image only).
        seed: seed of this module's own ``torch.Generator``; ``None`` uses torch's global RNG (which
            ``seed_everything`` seeds).
    """

    def __init__(
        self,
        config: AugmentConfig | None = None,
        image_key: str = "image",
        label_key: str | None = "label",
        seed: int | None = None,
    ) -> None:
        super().__init__()
        self.config = AugmentConfig() if config is None else config
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
            displacements in voxels or ``None``, ``"gamma"`` ``(B,)`` float64 (1 = off), ``"flip"`` ``(B, n)`` bool,
            ``"intensity_scale"`` ``(B,)`` float64 factors (1 = off), ``"noise_std"`` ``(B,)`` float64 (0 = off),
            ``"intensity_shift"`` ``(B,)`` float64 offsets (0 = off) and ``"histogram_shift"`` ``(B, P)`` control
            points (:meth:`draw_histogram_shift`), each ``None`` when its probability is 0.
        """
        g = generator if generator is not None else self.generator
        cfg = self.config
        n = len(spatial_size)
        if n not in (2, 3):
            raise ValueError(f"BatchAugment: expected 2 or 3 spatial dims, got spatial size {tuple(spatial_size)}")
        b = batch_size
        rot_range = torch.tensor(cfg.rotate_range[:1] if n == 2 else cfg.rotate_range[:3], dtype=torch.float64)
        if rot_range.numel() != (1 if n == 2 else 3):
            raise ValueError(f"BatchAugment: rotate_range={cfg.rotate_range} needs 3 angles for 3D batches")
        rotate = self._rand(b, generator=g) < cfg.rotate_prob
        angles = (self._rand(b, rot_range.numel(), generator=g) * 2 - 1) * rot_range * rotate[:, None]
        scale = self._rand(b, generator=g) < cfg.scale_prob
        lo, hi = cfg.scale_range
        zoom = torch.where(scale, lo + (hi - lo) * self._rand(b, generator=g), torch.ones(b, dtype=torch.float64))
        matrix = rotation_matrices(angles) / zoom[:, None, None]

        elastic = self._rand(b, generator=g) < cfg.elastic_prob
        displacement = None
        if cfg.elastic_prob > 0:
            mag = torch.tensor(cfg.elastic_magnitude[-n:], dtype=torch.float32)
            spacing = cfg.elastic_control_spacing[-n:]
            ctrl = [max(2, math.ceil(s / c) + 1) for s, c in zip(spatial_size, spacing)]
            field = torch.randn(b, n, *ctrl, generator=g) * mag.view(1, n, *([1] * n))
            field = field * elastic.view(b, *([1] * (n + 1)))
            displacement = field if bool(elastic.any()) else None

        gamma_on = self._rand(b, generator=g) < cfg.gamma_prob
        glo, ghi = cfg.gamma_range
        gamma = torch.where(
            gamma_on, glo + (ghi - glo) * self._rand(b, generator=g), torch.ones(b, dtype=torch.float64)
        )
        flip = torch.zeros(b, n, dtype=torch.bool)
        for a in cfg.flip_axes:
            if not 0 <= a < n:
                raise ValueError(f"BatchAugment: flip axis {a} is not a spatial axis of a {n}D batch")
            flip[:, a] = self._rand(b, generator=g) < cfg.flip_prob
        # drawn last and only when on, so the draws above do not depend on them
        scale_int = noise_std = None
        if cfg.intensity_scale_prob > 0:
            on = self._rand(b, generator=g) < cfg.intensity_scale_prob
            r = cfg.intensity_scale_range
            scale_int = torch.where(
                on, 1 + (2 * self._rand(b, generator=g) - 1) * r, torch.ones(b, dtype=torch.float64)
            )
        if cfg.noise_prob > 0:
            on = self._rand(b, generator=g) < cfg.noise_prob
            noise_std = on * self._rand(b, generator=g) * cfg.noise_std  # std uniform in [0, noise_std] (MONAI)
        shift = hist = None
        if cfg.intensity_shift_prob > 0:
            on = self._rand(b, generator=g) < cfg.intensity_shift_prob
            shift = on * (2 * self._rand(b, generator=g) - 1) * cfg.intensity_shift_range
        if cfg.histogram_shift_prob > 0:
            hist = self.draw_histogram_shift(b, g)
        return {
            "matrix": matrix,
            "displacement": displacement,
            "gamma": gamma,
            "flip": flip,
            "intensity_scale": scale_int,
            "noise_std": noise_std,
            "intensity_shift": shift,
            "histogram_shift": hist,
        }

    def draw_histogram_shift(self, batch_size: int, generator: torch.Generator | None) -> torch.Tensor:
        """Control points of MONAI ``RandHistogramShift`` per sample: ``(B, P)`` float64 floating points on ``[0, 1]``
        (the reference points are ``linspace(0, 1, n)``; ``n`` uniform in ``histogram_shift_points``, padded with NaN
        to ``P = max``); a row of NaN = off. Point ``i`` is uniform between the (already drawn) point ``i - 1`` and the
        reference point ``i + 1``, as MONAI draws it.
        """
        cfg = self.config
        lo, hi = cfg.histogram_shift_points
        on = self._rand(batch_size, generator=generator) < cfg.histogram_shift_prob
        out = torch.full((batch_size, hi), float("nan"), dtype=torch.float64)
        for i in range(batch_size):
            n = lo + int(self._rand(1, generator=generator).item() * (hi - lo + 1))
            n = min(n, hi)
            ref = torch.linspace(0, 1, n, dtype=torch.float64)
            pts = ref.clone()
            u = self._rand(max(n - 2, 0), generator=generator)
            for k in range(1, n - 1):
                pts[k] = pts[k - 1] + u[k - 1] * (ref[k + 1] - pts[k - 1])
            if on[i]:
                out[i, :n] = pts
        return out

    # ------------------------------------------------------------------ application
    def forward(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> dict[str, Any]:
        """Augment ``batch`` (a new dict is returned; the input tensors are not modified)."""
        image = batch[self.image_key]
        if not torch.is_tensor(image) or image.ndim not in (4, 5):
            shape = tuple(image.shape) if torch.is_tensor(image) else type(image).__name__
            raise ValueError(f"BatchAugment: batch['{self.image_key}'] must be a (B, C, *spatial) tensor, got {shape}")
        params = self.draw(image.shape[0], image.shape[2:], generator)
        return self.apply(batch, **params, generator=generator if generator is not None else self.generator)

    def apply(
        self,
        batch: dict[str, Any],
        matrix: torch.Tensor | None = None,
        displacement: torch.Tensor | None = None,
        gamma: torch.Tensor | None = None,
        flip: torch.Tensor | None = None,
        intensity_scale: torch.Tensor | None = None,
        noise_std: torch.Tensor | None = None,
        intensity_shift: torch.Tensor | None = None,
        histogram_shift: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, Any]:
        """Apply given parameters; see :meth:`draw` for their shapes. ``None`` = that part off.

        The noise itself (``noise_std`` > 0) is drawn from ``generator`` (torch's global RNG when ``None``).
        """
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
            image, label = self._spatial(image, label, matrix, displacement, self.config.padding_mode)
        if gamma is not None:
            on = gamma.cpu() != 1
            if bool(on.any()):
                adjusted = adjust_gamma(image.float(), gamma.to(image.device)).to(image.dtype)
                image = torch.where(on.to(image.device).view(-1, *([1] * (n + 1))), adjusted, image)
        view = (-1, *([1] * (n + 1)))
        if intensity_scale is not None and bool((intensity_scale != 1).any()):
            image = image * intensity_scale.to(image.device, image.dtype).view(view)
        if noise_std is not None and bool((noise_std > 0).any()):
            noise = torch.randn(image.shape, generator=generator, dtype=torch.float32)
            image = image + (noise * noise_std.to(torch.float32).view(view)).to(image.device, image.dtype)
        if intensity_shift is not None and bool((intensity_shift != 0).any()):
            image = image + intensity_shift.to(image.device, image.dtype).view(view)
        if histogram_shift is not None:
            image = histogram_shift_batch(image, histogram_shift)
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
        padding_mode: str,
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
        warped = F.grid_sample(image[idx].float(), grid, mode="bilinear", padding_mode=padding_mode, align_corners=True)
        image_out[idx] = warped.to(image.dtype)
        if label is not None:
            lab = F.grid_sample(label[idx].float(), grid, mode="nearest", padding_mode=padding_mode, align_corners=True)
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


class SampleAugment:
    """:class:`BatchAugment` on one sample, for CPU DataLoader workers (the 2D slices' augmentation).

    Input/output: ``{"image": (C, *spatial), "label": (1, *spatial), ...}``; a batch of one goes through
    :class:`BatchAugment`, so the CPU and the on-device path are the same code and draw from the same distributions.
    Has MONAI's ``set_random_state(seed)``: the dataset reseeds it per item, so an item's augmentation depends only
    on its seed.

    Args:
        config: ranges and probabilities (:class:`~segzoo.data.augment.AugmentConfig`).
        image_key: key of the image tensor.
        label_key: key of the label tensor.
    """

    def __init__(self, config: AugmentConfig, image_key: str = "image", label_key: str | None = "label") -> None:
        self.augment = BatchAugment(config, image_key=image_key, label_key=label_key)
        self.keys = tuple(k for k in (image_key, label_key) if k is not None)
        self.generator = torch.Generator().manual_seed(0)

    def set_random_state(self, seed: int) -> SampleAugment:
        self.generator.manual_seed(int(seed))
        return self

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        batch = {k: (v[None] if k in self.keys and torch.is_tensor(v) else v) for k, v in item.items()}
        out = self.augment(batch, generator=self.generator)
        return {k: (v[0] if k in self.keys and torch.is_tensor(v) else v) for k, v in out.items()}
