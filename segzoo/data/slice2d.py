"""The 2D nets' preprocessing as one serialisable object, so a DR-Net / 2D-baseline checkpoint predicts alone.

:class:`SlicePreprocessor` is what :class:`segzoo.data.datamodule_2d.CHAOSDataModule` and ``BraTSDataModule`` do to a
case before the net sees its slices (z-score over the whole volume, slices brought to ``image_size`` by centred
padding or resizing), stored in the checkpoint as a plain JSON dict (``type: "slice2d"``) and undone on the net's
output by :meth:`SlicePreprocessor.restore`. ``segzoo infer`` uses it on BraTS case folders and CHAOS DICOM series
(see ``docs/inference.md``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from segzoo.data.io import DataError

PREPROCESSOR_TYPE = "slice2d"
DATASETS = ("brats", "chaos")


class SlicePreprocessor:
    """Per-case normalisation and in-plane fitting of a slice stack for a 2D net, and the way back.

    Args:
        dataset: ``"brats"`` (case folders of 4 NIfTI modalities) or ``"chaos"`` (a DICOM series).
        in_channels: image channels the net takes (BraTS 4, CHAOS 1).
        image_size: in-plane size ``(H, W)`` of every slice fed to the net.
        resize_mode: ``"pad"`` (centred zero padding; an error when a slice is larger) or ``"resize"``
            (bilinear, antialiased when shrinking).
        normalize: ``"zscore"`` (per channel over the whole volume) or ``"none"``.
        zscore_nonzero: z-score statistics over the non-zero voxels only, zero voxels stay 0 (skull-stripped MR).
        label_values: stored label value of each class index (BraTS ``[0, 1, 2, 4]``, CHAOS ``[0, 1, 2, 3, 4]``).
        orientation: axis codes the training volumes were brought to before slicing (BraTS: ``("L", "P", "S")``,
            axial slices along the last axis); ``None`` for DICOM series, which are stacked in file-name order.
        sequence: the CHAOS sequence trained on (``"T2SPIR"``, ``"T1DUAL_InPhase"``, ``"T1DUAL_OutPhase"``).
    """

    type = PREPROCESSOR_TYPE

    def __init__(
        self,
        dataset: str,
        in_channels: int,
        image_size: Sequence[int],
        resize_mode: str = "resize",
        normalize: str = "zscore",
        zscore_nonzero: bool = False,
        label_values: Sequence[int] | None = None,
        orientation: Sequence[str] | None = None,
        sequence: str | None = None,
    ) -> None:
        if dataset not in DATASETS:
            raise ValueError(f"dataset={dataset!r}: expected one of {DATASETS}")
        if len(image_size) != 2 or min(int(s) for s in image_size) < 1:
            raise ValueError(f"image_size={tuple(image_size)}: expected two positive sizes (H, W)")
        if resize_mode not in ("pad", "resize"):
            raise ValueError(f"resize_mode={resize_mode!r}: expected 'pad' or 'resize'")
        if normalize not in ("zscore", "none"):
            raise ValueError(f"normalize={normalize!r}: expected 'zscore' or 'none'")
        self.dataset = dataset
        self.in_channels = int(in_channels)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.resize_mode = resize_mode
        self.normalize = normalize
        self.zscore_nonzero = bool(zscore_nonzero)
        self.label_values = [int(v) for v in (label_values if label_values is not None else range(5))]
        if orientation is not None:
            from segzoo.data.geometry import check_axis_codes

            orientation = check_axis_codes(orientation)
        self.orientation = orientation
        self.sequence = sequence

    # -- serialisation
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON dict (checkpoint / ``preprocessor.json``); ``type`` says which class reads it back."""
        return {
            "type": PREPROCESSOR_TYPE,
            "dataset": self.dataset,
            "in_channels": self.in_channels,
            "image_size": list(self.image_size),
            "resize_mode": self.resize_mode,
            "normalize": self.normalize,
            "zscore_nonzero": self.zscore_nonzero,
            "label_values": list(self.label_values),
            "orientation": None if self.orientation is None else list(self.orientation),
            "sequence": self.sequence,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SlicePreprocessor:
        """Inverse of :meth:`to_dict`; DataError naming the missing key."""
        if d.get("type", PREPROCESSOR_TYPE) != PREPROCESSOR_TYPE:
            raise DataError(f"preprocessor type {d.get('type')!r}: expected {PREPROCESSOR_TYPE!r}")
        try:
            return cls(
                d["dataset"],
                d["in_channels"],
                d["image_size"],
                d.get("resize_mode", "resize"),
                d.get("normalize", "zscore"),
                d.get("zscore_nonzero", False),
                d.get("label_values"),
                d.get("orientation"),
                d.get("sequence"),
            )
        except KeyError as e:
            raise DataError(f"slice2d preprocessor state lacks key {e}; expected SlicePreprocessor.to_dict()") from None

    def __repr__(self) -> str:
        return f"SlicePreprocessor({', '.join(f'{k}={v}' for k, v in self.to_dict().items() if k != 'type')})"

    # -- forward
    def prepare(self, image: np.ndarray) -> torch.Tensor:
        """``(C, S, H, W)`` raw slice stack -> float32 ``(C, S, *image_size)`` as the net was trained on."""
        image = np.asarray(image, dtype=np.float32)
        if image.ndim != 4 or image.shape[0] != self.in_channels:
            raise ValueError(f"expected a (C={self.in_channels}, S, H, W) slice stack, got shape {image.shape}")
        if self.normalize == "zscore":
            from segzoo.data.datamodule_2d import zscore

            image = zscore(image, nonzero=self.zscore_nonzero)
        h, w = image.shape[-2:]
        th, tw = self.image_size
        if self.resize_mode == "pad" and (h > th or w > tw):
            raise DataError(
                f"slices of {h}x{w} are larger than the checkpoint's image_size {th}x{tw} (resize_mode 'pad')"
            )
        from segzoo.data.datamodule_2d import fit_slices

        x = torch.from_numpy(np.ascontiguousarray(image))
        dummy = torch.zeros(image.shape[1:], dtype=torch.uint8)
        x, _, _ = fit_slices(x, dummy, self.image_size, self.resize_mode)
        return x.float().contiguous()

    def restore(self, scores: torch.Tensor, shape: Sequence[int]) -> np.ndarray:
        """Class scores ``(K, S, *image_size)`` -> class indices ``(S, H, W)`` uint8 on the original in-plane grid
        ``shape = (H, W)``: the padding is cut off, or the scores are resized back (bilinear) before the argmax."""
        s = torch.as_tensor(scores).float()
        h, w = int(shape[0]), int(shape[1])
        th, tw = self.image_size
        if (h, w) != (th, tw):
            if self.resize_mode == "pad":
                top, left = (th - h) // 2, (tw - w) // 2
                s = s[..., top : top + h, left : left + w]
            else:
                s = F.interpolate(s.transpose(0, 1), size=(h, w), mode="bilinear", align_corners=False).transpose(0, 1)
        return s.argmax(0).to(torch.uint8).cpu().numpy()

    def to_label_values(self, indices: np.ndarray) -> np.ndarray:
        """Class indices -> stored label values (BraTS index 3 -> 4), uint8."""
        lut = np.asarray(self.label_values, dtype=np.uint8)
        return lut[np.asarray(indices, dtype=np.int64)]
