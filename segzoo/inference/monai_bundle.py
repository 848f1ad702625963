"""The two MONAI transforms an exported segzoo MONAI bundle needs beyond MONAI's own (``segzoo export --format
monai-bundle``, :mod:`segzoo.export_bundle`).

Everything else in a bundle's ``inference.json`` is a stock MONAI transform (``LoadImaged``, ``Orientationd``,
``ThresholdIntensityd``, ``NormalizeIntensityd``, ``Invertd``, ``SaveImaged`` ...). These two exist because no stock
transform equals segzoo's preprocessing or post-processing:

- :class:`ResizeToSpacingd`: segzoo resamples to the training spacing with ``F.interpolate`` to the size
  ``round(shape * spacing / target)`` (output voxel ``j`` samples input coordinate ``(j + 0.5) * n / m - 0.5``).
  MONAI's ``Spacingd`` samples a grid with step ``target / spacing`` instead of ``n / m`` (up to half a voxel away
  at the far edge), so its labels differ from ``segzoo infer``'s. This transform computes segzoo's size per image and
  runs MONAI's ``Resize`` with it, so ``Invertd`` undoes it like any MONAI resize.
- :class:`LabelMapPostprocessd`: applies a label-map callable (segzoo's validated post-processing, e.g.
  :class:`~segzoo.inference.postprocess.KiTSPostprocess`) to a channel-first label map, keeping its metadata.

segzoo itself never reads or runs a bundle: these run inside MONAI's ``monai.bundle run`` on the user's side.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import InvertibleTransform, MapTransform, Resize
from monai.utils import TraceKeys, convert_to_dst_type

from segzoo.data.geometry import spacing_from_affine
from segzoo.data.preprocessor import resampled_shape

__all__ = ["LabelMapPostprocessd", "ResizeToSpacingd"]

_LINEAR = ("linear", "bilinear", "trilinear", "bicubic")


class ResizeToSpacingd(MapTransform, InvertibleTransform):
    """Resize each image to ``pixdim`` the way segzoo's preprocessing does; invertible with ``Invertd``.

    The size is ``round(shape * spacing / pixdim)`` per axis (at least 1; ``spacing`` from the image's affine), the
    resize MONAI's ``Resize`` (``F.interpolate``, ``align_corners=False``, no anti-aliasing). The inverse resizes
    back to the original size with ``inverse_mode`` (segzoo's ``restore``: linear, on class probabilities), whatever
    ``mode`` resized the image.

    Args:
        keys: keys of the channel-first ``MetaTensor`` images ``(C, *spatial)``.
        pixdim: target voxel size in mm per spatial axis (the array axes after ``Orientationd``).
        mode: interpolation of the image: ``"trilinear"`` (segzoo's ``image_order=1``) or ``"nearest-exact"``
            (``image_order=0``).
        inverse_mode: interpolation of what ``Invertd`` maps back (class probabilities).
        allow_missing_keys: do not raise for a missing key.
    """

    def __init__(
        self,
        keys: Hashable | Sequence[Hashable],
        pixdim: Sequence[float],
        mode: str = "trilinear",
        inverse_mode: str = "trilinear",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.pixdim = tuple(float(p) for p in pixdim)
        if not self.pixdim or min(self.pixdim) <= 0:
            raise ValueError(f"pixdim={tuple(pixdim)}: expected positive voxel sizes in mm")
        self.mode = mode
        self.inverse_mode = inverse_mode
        # one Resize whose size is set per image: Invertd finds its record by this object's id
        self.resizer = Resize(
            spatial_size=[-1] * len(self.pixdim),
            mode=mode,
            align_corners=False if mode in _LINEAR else None,
            anti_aliasing=False,
        )

    def size_of(self, image: MetaTensor) -> tuple[int, ...]:
        """The resized spatial shape of ``image`` (segzoo's ``Preprocessor.new_shape``)."""
        if not isinstance(image, MetaTensor):
            raise TypeError(f"ResizeToSpacingd needs a MetaTensor with its affine, got {type(image).__name__}")
        n = len(self.pixdim)
        shape = tuple(int(s) for s in image.peek_pending_shape())[:n]
        spacing = spacing_from_affine(np.asarray(image.peek_pending_affine(), dtype=np.float64))[:n]
        return resampled_shape(shape, spacing, self.pixdim)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            self.resizer.spatial_size = self.size_of(d[key])
            d[key] = self.resizer(d[key])
        return d

    def inverse(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            record = dict(self.resizer.pop_transform(d[key]))
            info = dict(record[TraceKeys.EXTRA_INFO])
            info.update(mode=self.inverse_mode, align_corners=False if self.inverse_mode in _LINEAR else TraceKeys.NONE)
            record[TraceKeys.EXTRA_INFO] = info
            d[key] = self.resizer.inverse_transform(d[key], record)
        return d


class LabelMapPostprocessd(MapTransform):
    """Apply ``postprocess`` (integer label map ``(*spatial)`` -> label map) to each channel-first label map
    ``(1, *spatial)``; the result keeps the input's type, dtype and metadata.

    Args:
        keys: keys of the label maps (after ``AsDiscreted(argmax=True)``).
        postprocess: the label-map callable, e.g. ``segzoo.inference.postprocess.KiTSPostprocess(...)``.
        allow_missing_keys: do not raise for a missing key.
    """

    def __init__(
        self, keys: Hashable | Sequence[Hashable], postprocess: Callable[[np.ndarray], Any], allow_missing_keys=False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if not callable(postprocess):
            raise TypeError(f"postprocess must be callable, got {type(postprocess).__name__}")
        self.postprocess = postprocess

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            labels = d[key]
            if labels.shape[0] != 1:
                raise ValueError(
                    f"{key}: expected one channel of labels (1, *spatial), got shape {tuple(labels.shape)}"
                )
            array = np.asarray(torch.as_tensor(labels[0]).detach().cpu().numpy()).astype(np.int64)
            out = np.asarray(self.postprocess(array))[None]
            d[key] = convert_to_dst_type(out, labels, dtype=labels.dtype)[0]
        return d
