"""The 2D nets' preprocessing as one serialisable object, so a DR-Net / 2D-baseline checkpoint predicts alone.

:class:`SlicePreprocessor` is what :class:`segzoo.data.datamodule_2d.CHAOSDataModule` and ``BraTSDataModule`` do to a
case before the net sees its slices (z-score over the whole volume, slices brought to ``image_size`` by centred
padding or resizing), stored in the checkpoint as a plain JSON dict (``type: "slice2d"``) and undone on the net's
output by :meth:`SlicePreprocessor.restore`. Like :class:`VolumeSlicePreprocessor` (any dataset) it has the volume
interface of the 3D preprocessing (``reorientation``, ``preprocess``, ``restore``), so ``segzoo infer`` predicts BraTS
case folders and CHAOS DICOM series through the one :class:`~segzoo.inference.predict.Predictor` (see
``docs/inference.md``).
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
_RESIZE_MODES = ("resize", "pad")


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

    # -- the volume interface of every preprocessing (segzoo infer's Predictor, test-time scoring)
    @property
    def slice_axis(self) -> int:
        """The spatial axis the slices are cut along: BraTS the last (axial, in ``orientation``), CHAOS the first
        (a series is read ``(S, H, W)``, slices in file-name order)."""
        return 2 if self.dataset == "brats" else 0

    def reorientation(self, affine: np.ndarray, shape: Sequence[int], name: object = "image"):
        """The exact permutation/flip from a stored array to the training orientation (identity without one)."""
        from segzoo.data.geometry import Reorientation

        return Reorientation.to_codes(affine, shape, self.orientation, name=name)

    def to_stack(self, array: np.ndarray, channels: bool = True) -> np.ndarray:
        """``(C, *spatial)`` (or ``(*spatial)`` with ``channels=False``) with the slice axis first: ``(C, S, H, W)``."""
        first = 1 if channels else 0
        return np.moveaxis(np.asarray(array), first + self.slice_axis, first)

    def preprocess(self, image: np.ndarray, spacing: Sequence[float] | None = None) -> np.ndarray:
        """``(C, *spatial)`` (or one channel ``(*spatial)``) in the training orientation -> float32
        ``(C, S, *image_size)``, the net's slices."""
        image = np.asarray(image, dtype=np.float32)
        if image.ndim == 3:
            image = image[None]
        return self.prepare(self.to_stack(image)).numpy()

    def restore(self, scores: np.ndarray | torch.Tensor, original_shape: Sequence[int]) -> np.ndarray:
        """Class scores ``(K, S, *image_size)`` -> label map ``original_shape`` (training orientation) of the stored
        label values (BraTS 0/1/2/4), uint8: the in-plane fitting undone on the scores before the argmax."""
        shape = tuple(int(s) for s in original_shape)
        plane = [n for i, n in enumerate(shape) if i != self.slice_axis]
        indices = self.restore_slices(scores, plane)
        return np.ascontiguousarray(np.moveaxis(self.to_label_values(indices), 0, self.slice_axis))

    # -- slices
    def prepare(self, image: np.ndarray) -> torch.Tensor:
        """``(C, S, H, W)`` raw slice stack -> float32 ``(C, S, *image_size)`` as the net was trained on."""
        image = np.asarray(image, dtype=np.float32)
        if image.ndim != 4 or image.shape[0] != self.in_channels:
            raise DataError(f"expected {self.in_channels} channel(s) of slices (C, S, H, W), got shape {image.shape}")
        if self.normalize == "zscore":
            image = zscore(image, nonzero=self.zscore_nonzero)
        h, w = image.shape[-2:]
        th, tw = self.image_size
        if self.resize_mode == "pad" and (h > th or w > tw):
            raise DataError(
                f"slices of {h}x{w} are larger than the checkpoint's image_size {th}x{tw} (resize_mode 'pad')"
            )
        x = torch.from_numpy(np.ascontiguousarray(image))
        dummy = torch.zeros(image.shape[1:], dtype=torch.uint8)
        x, _, _ = fit_slices(x, dummy, self.image_size, self.resize_mode)
        return x.float().contiguous()

    def restore_slices(self, scores: np.ndarray | torch.Tensor, shape: Sequence[int]) -> np.ndarray:
        """Class scores ``(K, S, *image_size)`` -> class indices ``(S, H, W)`` uint8 on the original in-plane grid
        ``shape = (H, W)``: the padding is cut off, or the scores are resized back (bilinear) before the argmax."""
        return unfit_scores(scores, shape, self.image_size, self.resize_mode).argmax(0).to(torch.uint8).cpu().numpy()

    def to_label_values(self, indices: np.ndarray) -> np.ndarray:
        """Class indices -> stored label values (BraTS index 3 -> 4), uint8."""
        lut = np.asarray(self.label_values, dtype=np.uint8)
        return lut[np.asarray(indices, dtype=np.int64)]


def unfit_scores(
    scores: np.ndarray | torch.Tensor, shape: Sequence[int], image_size: Sequence[int], resize_mode: str
) -> torch.Tensor:
    """Inverse of :func:`fit_slices` on class scores ``(K, S, *image_size)``: ``(K, S, *shape)`` float, the padding cut
    off or the scores resized back (bilinear)."""
    s = torch.as_tensor(scores).float()
    h, w = int(shape[0]), int(shape[1])
    th, tw = int(image_size[0]), int(image_size[1])
    if (h, w) != (th, tw):
        if resize_mode == "pad":
            top, left = (th - h) // 2, (tw - w) // 2
            s = s[..., top : top + h, left : left + w]
        else:
            s = F.interpolate(s.transpose(0, 1), size=(h, w), mode="bilinear", align_corners=False).transpose(0, 1)
    return s


def zscore(image: np.ndarray, nonzero: bool = False) -> np.ndarray:
    """Per-channel z-score of ``image`` (C, *spatial).

    Args:
        image: float array, channels first.
        nonzero: statistics over the non-zero voxels only, and zero voxels stay 0 (skull-stripped MR).
    """
    out = np.empty_like(image, dtype=np.float32)
    for c, channel in enumerate(image):
        mask = channel != 0 if nonzero else np.ones(channel.shape, dtype=bool)
        if mask.sum() < 2:
            out[c] = 0
            continue
        values = channel[mask].astype(np.float64)
        std = max(float(values.std()), 1e-8)
        out[c] = (channel - values.mean()) / std
        if nonzero:
            out[c][~mask] = 0
    return out


def fit_slices(
    image: torch.Tensor, label: torch.Tensor, size: Sequence[int], mode: str = "resize"
) -> tuple[torch.Tensor, torch.Tensor, tuple[float, float]]:
    """Bring a slice stack to the in-plane ``size``.

    Args:
        image: (C, S, H, W) float.
        label: (S, H, W) integer class indices.
        size: target (H', W').
        mode: ``"resize"`` (image bilinear, antialiased when shrinking; label nearest) or ``"pad"`` (centred
            zero padding, as the paper does for 240x240 BraTS slices; an error when a slice is larger).

    Returns:
        ``(image (C, S, H', W'), label (S, H', W'), (row, col) factor by which the pixel spacing grows)``.
    """
    h, w = image.shape[-2:]
    th, tw = int(size[0]), int(size[1])
    if (h, w) == (th, tw):
        return image, label, (1.0, 1.0)
    if mode == "pad":
        if h > th or w > tw:
            raise DataError(f"slices of {h}x{w} do not fit into image_size {th}x{tw} with resize_mode='pad'")
        top, left = (th - h) // 2, (tw - w) // 2
        pad = (left, tw - w - left, top, th - h - top)
        return F.pad(image, pad), F.pad(label, pad), (1.0, 1.0)
    if mode != "resize":
        raise ValueError(f"resize_mode must be one of {_RESIZE_MODES}, got {mode!r}")
    shrink = th < h or tw < w
    img = F.interpolate(image.transpose(0, 1), size=(th, tw), mode="bilinear", align_corners=False, antialias=shrink)
    lab = F.interpolate(label[:, None].float(), size=(th, tw), mode="nearest-exact")[:, 0].to(label.dtype)
    return img.transpose(0, 1).contiguous(), lab, (h / th, w / tw)


PLANNED_2D_TYPE = "planned2d"


class VolumeSlicePreprocessor:
    """Any dataset for a 2D net: each channel normalised by its name (as :class:`~segzoo.data.preprocessor.Preprocessor`),
    the volume brought to the training orientation and cut into slices along its coarsest axis, each slice fitted to
    ``image_size``; :meth:`restore` undoes the fitting and the slicing on the class scores.

    It has the interface of the 3D preprocessing (``reorientation``, ``preprocess``, ``restore``), so ``segzoo infer``
    predicts a 2D net's cases through the same :class:`~segzoo.inference.predict.Predictor` as a 3D net's (with
    MONAI's ``SliceInferer``), writing each label map on its input's grid.

    Args:
        normalization: one scheme per channel (``"ct"``, ``"zscore"``, ``"none"``, ``"rescale_0_1"``).
        channel_stats: per channel the fingerprint's foreground statistics (``"ct"`` channels), else ``None``.
        image_size: in-plane size ``(H, W)`` of every slice fed to the net.
        resize_mode: ``"resize"`` (bilinear) or ``"pad"`` (centred zero padding).
        slice_axis: the spatial axis (training orientation) the slices are cut along: the coarsest one.
        orientation: axis codes of the training data; ``None`` keeps arrays as stored.
        regions, regions_class_order, num_labels: a region dataset's label encoding (see
            :class:`~segzoo.data.preprocessor.Preprocessor`).
    """

    type = PLANNED_2D_TYPE

    def __init__(
        self,
        normalization: Sequence[str],
        channel_stats: Sequence[dict[str, float] | None] | None = None,
        image_size: Sequence[int] = (256, 256),
        resize_mode: str = "resize",
        slice_axis: int = 0,
        orientation: Sequence[str] | None = None,
        regions: Sequence[Sequence[int]] | None = None,
        regions_class_order: Sequence[int] | None = None,
        num_labels: int | None = None,
    ) -> None:
        from segzoo.data.preprocessor import Preprocessor

        if len(image_size) != 2 or min(int(s) for s in image_size) < 1:
            raise ValueError(f"image_size={tuple(image_size)}: expected two positive sizes (H, W)")
        if resize_mode not in _RESIZE_MODES:
            raise ValueError(f"resize_mode={resize_mode!r}: expected one of {_RESIZE_MODES}")
        if int(slice_axis) not in (0, 1, 2):
            raise ValueError(f"slice_axis={slice_axis}: expected 0, 1 or 2")
        # the normalisation (and its checks) is the 3D preprocessing's; its grid settings are not used
        self._norm = Preprocessor(
            normalization, channel_stats, (1.0, 1.0, 1.0), 1, orientation, regions, regions_class_order, num_labels
        )
        self.regions, self.regions_class_order = self._norm.regions, self._norm.regions_class_order
        self.num_labels = self._norm.num_labels
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.resize_mode = resize_mode
        self.slice_axis = int(slice_axis)
        self.orientation = self._norm.orientation

    @property
    def in_channels(self) -> int:
        return self._norm.in_channels

    @property
    def normalization(self) -> list[str]:
        return list(self._norm.normalization)

    def to_dict(self) -> dict[str, Any]:
        n = self._norm.to_dict()
        return {
            "type": PLANNED_2D_TYPE,
            "normalization": n["normalization"],
            "channel_stats": n["channel_stats"],
            "image_size": list(self.image_size),
            "resize_mode": self.resize_mode,
            "slice_axis": self.slice_axis,
            "orientation": n["orientation"],
            **{k: n[k] for k in ("regions", "regions_class_order", "num_labels") if k in n},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VolumeSlicePreprocessor:
        try:
            return cls(
                d["normalization"],
                d.get("channel_stats"),
                d["image_size"],
                d.get("resize_mode", "resize"),
                d["slice_axis"],
                d.get("orientation"),
                d.get("regions"),
                d.get("regions_class_order"),
                d.get("num_labels"),
            )
        except KeyError as e:
            raise DataError(
                f"planned2d preprocessor state lacks key {e}; expected VolumeSlicePreprocessor.to_dict()"
            ) from None

    def __repr__(self) -> str:
        return f"VolumeSlicePreprocessor({', '.join(f'{k}={v}' for k, v in self.to_dict().items() if k != 'type')})"

    def reorientation(self, affine: np.ndarray, shape: Sequence[int], name: object = "image"):
        """The exact permutation/flip from a stored array to the training orientation."""
        from segzoo.data.geometry import Reorientation

        return Reorientation.to_codes(affine, shape, self.orientation, name=name)

    def normalize(self, image: np.ndarray) -> np.ndarray:
        """``(C, *spatial)`` normalised channel by channel."""
        return self._norm.normalize(image)

    def to_stack(self, array: np.ndarray, channels: bool = True) -> np.ndarray:
        """``(C, *spatial)`` (or ``(*spatial)`` with ``channels=False``) with the slice axis first: ``(C, S, H, W)``."""
        first = 1 if channels else 0
        return np.moveaxis(np.asarray(array), first + self.slice_axis, first)

    def from_stack(self, array: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`to_stack` for a ``(S, H, W)`` label map."""
        return np.moveaxis(np.asarray(array), 0, self.slice_axis)

    def preprocess(self, image: np.ndarray, spacing: Sequence[float] | None = None) -> np.ndarray:
        """``(C, *spatial)`` in the training orientation -> float32 ``(C, S, *image_size)``."""
        image = np.asarray(image, dtype=np.float32)
        if image.ndim == 3:
            image = image[None]
        stack = np.ascontiguousarray(self.to_stack(self.normalize(image)))
        x = torch.from_numpy(stack)
        x, _, _ = fit_slices(x, torch.zeros(stack.shape[1:], dtype=torch.uint8), self.image_size, self.resize_mode)
        return x.float().contiguous().numpy()

    def restore(self, scores: np.ndarray | torch.Tensor, original_shape: Sequence[int]) -> np.ndarray:
        """Class scores ``(K, S, *image_size)`` -> label map uint8 of ``original_shape`` (training orientation)."""
        shape = tuple(int(s) for s in original_shape)
        stack_shape = (shape[self.slice_axis], *[n for i, n in enumerate(shape) if i != self.slice_axis])
        s = unfit_scores(scores, stack_shape[1:], self.image_size, self.resize_mode)
        labels = s.argmax(0).to(torch.uint8).cpu().numpy()
        return np.ascontiguousarray(self.from_stack(labels))
