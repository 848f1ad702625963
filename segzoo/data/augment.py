"""One augmentation config for every augmentation path: CPU workers (3D and 2D) and the on-device ``BatchAugment``.

Reference: Zhao et al., "Multi Scale Supervised 3D U-Net for Kidney and Tumor Segmentation" (KiTS19), section 2.1
("random rotation, random scaling, random elastic deformation, gamma correction and mirroring"); probabilities and
ranges where the paper is silent follow nnU-Net (Isensee et al., 2021). The DR-Net paper (You et al., 2022) reports
no augmentation; :class:`SliceAugmentConfig` is our choice for its 2D slices (docs/data/chaos_brats.md).

:class:`AugmentConfig` holds ranges and probabilities only; the paths that draw from it are
:func:`segzoo.data.transforms.build_kits19_transforms` (3D CPU chain in the DataLoader workers),
:class:`segzoo.data.gpu_augment.BatchAugment` (a whole batch on its device) and
:class:`segzoo.data.gpu_augment.SampleAugment` (the 2D slices' CPU path: ``BatchAugment`` on one sample).
:class:`SliceAugmentConfig` is the same config with the 2D slices' defaults. Every datamodule takes it as
``augment`` (``true`` = the dataset's defaults, ``false`` = off, or the fields to change), which writes in YAML as::

    data:
      init_args:
        augment: {rotate_prob: 0.5, gamma_range: [0.8, 1.25]}
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass


@dataclass
class AugmentConfig:
    """Ranges and probabilities of the random augmentation; the defaults are the KiTS19 (3D) chain's.

    Draws, per sample: a rotation (``rotate_prob``; angle per axis uniform in ``[-r, r]``), an isotropic zoom
    (``scale_prob``; uniform in ``scale_range``, > 1 magnifies), an elastic deformation (``elastic_prob``; gaussian
    control-point displacements upsampled to the patch), a gamma of the image (``gamma_prob``; uniform in
    ``gamma_range``, mean and std retained), an intensity scaling (``intensity_scale_prob``; factor
    ``1 + uniform(-r, r)``), gaussian noise (``noise_prob``; std uniform in ``[0, noise_std]``, as MONAI's
    ``RandGaussianNoise``), and a mirroring of each axis in ``flip_axes`` (``flip_prob`` each). Spatial parts are
    applied in one resampling, then gamma, intensity scaling, noise, mirroring.

    Args:
        rotate_prob: probability of a rotation.
        rotate_range: max absolute angle in radians about spatial axis 0, 1, 2 (about axis 0 = in-plane for
            ``(D, H, W)``); 2D uses only the first entry.
        scale_prob: probability of an isotropic zoom.
        scale_range: ``(min, max)`` zoom factor; > 1 magnifies (samples a smaller region).
        elastic_prob: probability of an elastic deformation.
        elastic_magnitude: std of the control-point displacement per axis, in voxels (2D: the last two entries).
        elastic_control_spacing: control-point spacing per axis, in voxels (2D: the last two entries).
        gamma_prob: probability of a gamma transform of the image (mean and std retained).
        gamma_range: ``(min, max)`` of the gamma.
        intensity_scale_prob: probability of multiplying the image by ``1 + uniform(-r, r)``.
        intensity_scale_range: ``r`` of the intensity scaling.
        noise_prob: probability of adding gaussian noise to the image.
        noise_std: the noise std is drawn uniformly in ``[0, noise_std]``.
        intensity_shift_prob: probability of adding an offset uniform in ``[-r, r]`` to the image (MONAI
            ``RandShiftIntensity``; the image is z-scored, so ``r`` is in foreground standard deviations).
        intensity_shift_range: ``r`` of the intensity shift.
        histogram_shift_prob: probability of a random monotonic piecewise-linear remapping of the image's intensities
            (MONAI ``RandHistogramShift``): changes the contrast between tissues, not only their level, which a
            model needs to meet another contrast phase or scanner.
        histogram_shift_points: ``(min, max)`` number of control points of the remapping (fewer = larger shifts).
        flip_prob: mirroring probability per axis.
        flip_axes: spatial axes that may be mirrored (0 = first spatial axis).
        padding_mode: ``grid_sample`` padding where a warped point leaves the input: ``"border"``, ``"zeros"`` or
            ``"reflection"``.
    """

    rotate_prob: float = 0.2
    rotate_range: tuple[float, ...] = (math.pi / 6, 0.0, 0.0)
    scale_prob: float = 0.2
    scale_range: tuple[float, float] = (0.7, 1.4)
    elastic_prob: float = 0.2
    elastic_magnitude: tuple[float, ...] = (1.0, 4.0, 4.0)
    elastic_control_spacing: tuple[int, ...] = (8, 32, 32)
    gamma_prob: float = 0.3
    gamma_range: tuple[float, float] = (0.7, 1.5)
    intensity_scale_prob: float = 0.0
    intensity_scale_range: float = 0.1
    noise_prob: float = 0.0
    noise_std: float = 0.05
    intensity_shift_prob: float = 0.0
    intensity_shift_range: float = 0.1
    histogram_shift_prob: float = 0.0
    histogram_shift_points: tuple[int, int] = (5, 10)
    flip_prob: float = 0.5
    flip_axes: tuple[int, ...] = (0, 1, 2)
    padding_mode: str = "border"

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if f.name.endswith("_prob") and not 0.0 <= float(getattr(self, f.name)) <= 1.0:
                raise ValueError(f"AugmentConfig: {f.name}={getattr(self, f.name)} must be a probability in [0, 1]")
        self.rotate_range = tuple(float(r) for r in self.rotate_range)
        self.scale_range = (float(self.scale_range[0]), float(self.scale_range[1]))
        self.elastic_magnitude = tuple(float(m) for m in self.elastic_magnitude)
        self.elastic_control_spacing = tuple(int(s) for s in self.elastic_control_spacing)
        self.gamma_range = (float(self.gamma_range[0]), float(self.gamma_range[1]))
        self.histogram_shift_points = (int(self.histogram_shift_points[0]), int(self.histogram_shift_points[1]))
        if not 3 <= self.histogram_shift_points[0] <= self.histogram_shift_points[1]:
            raise ValueError(
                f"AugmentConfig: histogram_shift_points={self.histogram_shift_points} must satisfy 3 <= min <= max"
            )
        if self.intensity_shift_range < 0:
            raise ValueError(f"AugmentConfig: intensity_shift_range={self.intensity_shift_range} must be >= 0")
        self.flip_axes = tuple(int(a) for a in self.flip_axes)
        if not self.rotate_range:
            raise ValueError("AugmentConfig: rotate_range needs at least one angle")
        for name in ("scale_range", "gamma_range"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ValueError(f"AugmentConfig: {name}={(lo, hi)} must satisfy 0 < min <= max")
        if not 0.0 <= self.intensity_scale_range < 1.0 or self.noise_std < 0:
            raise ValueError(
                f"AugmentConfig: intensity_scale_range={self.intensity_scale_range} must be in [0, 1) and "
                f"noise_std={self.noise_std} >= 0"
            )
        if self.padding_mode not in ("border", "zeros", "reflection"):
            raise ValueError(
                f"AugmentConfig: padding_mode={self.padding_mode!r}, expected 'border', 'zeros' or 'reflection'"
            )

    def to_dict(self) -> dict:
        """Plain JSON-able fields (lists for tuples): what a checkpoint's hyper-parameters hold."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


@dataclass
class SliceAugmentConfig(AugmentConfig):
    """The 2D slices' defaults (CHAOS, BraTS; our choice, the DR-Net paper reports no augmentation): rotation +-15
    degrees and zoom +-10 % (p 0.5 each), intensity scaling +-10 % (p 0.5), noise (p 0.2, std up to 0.05); no
    elastic, gamma or flips (a left-right flip would swap the right and left kidney classes of CHAOS); zero padding.

    The fields and their meaning are :class:`AugmentConfig`'s; only the defaults differ.
    """

    rotate_prob: float = 0.5
    rotate_range: tuple[float, ...] = (math.pi / 12,)
    scale_prob: float = 0.5
    scale_range: tuple[float, float] = (0.9, 1.1)
    elastic_prob: float = 0.0
    gamma_prob: float = 0.0
    intensity_scale_prob: float = 0.5
    intensity_scale_range: float = 0.1
    noise_prob: float = 0.2
    noise_std: float = 0.05
    flip_prob: float = 0.0
    flip_axes: tuple[int, ...] = ()
    padding_mode: str = "zeros"


def resolve_augment(
    augment: bool | AugmentConfig | dict | None, default: type[AugmentConfig] = AugmentConfig
) -> AugmentConfig | None:
    """A datamodule's ``augment`` argument -> the config to use (``None`` = off).

    ``True`` gives ``default()``; ``False``/``None`` off; a dict (e.g. from a checkpoint's hyper-parameters) changes
    fields of ``default()``; an :class:`AugmentConfig` is used as it is.
    """
    if augment is None or augment is False:
        return None
    if augment is True:
        return default()
    if isinstance(augment, AugmentConfig):
        return augment
    if isinstance(augment, dict):
        unknown = sorted(set(augment) - {f.name for f in dataclasses.fields(AugmentConfig)})
        if unknown:
            raise ValueError(f"augment: unknown field(s) {unknown}; expected fields of AugmentConfig")
        return default(**augment)
    raise TypeError(f"augment must be a bool, an AugmentConfig or a dict of its fields, got {type(augment).__name__}")
