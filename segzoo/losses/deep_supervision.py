"""Deep-supervision loss: a weighted sum of one loss over several native-scale outputs.

Reference: Zhao et al., "Multi Scale Supervised 3D U-Net for Kidney and Tumor Segmentation" (KiTS19): a
segmentation head at every decoder level, the label map downsampled to each head's scale (nnU-Net style).

``monai.losses.DeepSupervisionLoss`` was checked and not reused because (MONAI 1.6) its ``"exp"`` weights are
not normalised and are floored at 1/16, explicit ``weights`` are silently ignored when shorter than the number of
outputs, and ``F.interpolate`` fails on ``long`` label maps and on ``(B, *spatial)`` targets. This wrapper keeps
MONAI's idea (target downsampled with ``"nearest-exact"``) and fixes those points.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segzoo.losses._target import class_index_target, target_range_checked


def downsample_labels(target: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Nearest-neighbour resize of a label map, keeping its layout and dtype.

    Uses ``F.interpolate(mode="nearest-exact")`` (voxel centres map to voxel centres, so a 2x downsampling picks
    voxel ``2i + 1``, never an average). Integer maps are resized in float32, which is exact for labels < 2**24.

    Args:
        target: ``(B, 1, *spatial)`` or ``(B, C, *spatial)`` label map (any dtype).
        size: the new spatial size.

    Returns:
        ``(B, C, *size)`` tensor with the dtype of ``target``.
    """
    size = tuple(int(s) for s in size)
    if tuple(target.shape[2:]) == size:
        return target
    work = target if target.is_floating_point() else target.float()
    return F.interpolate(work, size=size, mode="nearest-exact").to(target.dtype)


class DeepSupervisionLoss(nn.Module):
    """Weighted sum of ``loss`` over deep-supervision outputs, each against a target resized to its scale.

    Weights: ``"exp"`` gives output ``i`` (``i = 0`` full resolution) weight ``1 / 2**i``, ``"equal"`` gives all
    outputs the same weight; explicit ``weights`` (one per output) override ``weight_mode``. Weights are always
    normalised to sum to 1 over the outputs of a call, e.g. 4/7, 2/7, 1/7 for three outputs with ``"exp"``.
    Outputs with weight 0 are skipped. Nothing is cached, so outputs of changing sizes work.

    Args:
        loss: any loss ``loss(logits, target)``, e.g. :class:`segzoo.losses.ExpLogLoss` or
            ``monai.losses.DiceCELoss(to_onehot_y=True, softmax=True)`` (YAML: ``class_path``/``init_args``).
        weights: explicit non-negative weight per output (normalised), or ``None`` to use ``weight_mode``.
        weight_mode: ``"exp"`` or ``"equal"``.

    Shapes:
        outputs: a tensor ``(B, K, *spatial)`` (passed straight to ``loss`` with the unchanged target), or a
        list/tuple of such tensors, full resolution first, each at its native scale. target: ``(B, 1, *spatial)``
        or ``(B, *spatial)`` label map at full resolution; each resized copy keeps that layout and dtype.
    """

    def __init__(self, loss: nn.Module, weights: Sequence[float] | None = None, weight_mode: str = "exp") -> None:
        super().__init__()
        if weight_mode not in ("exp", "equal"):
            raise ValueError(f"weight_mode must be 'exp' or 'equal', got {weight_mode!r}")
        if weights is not None:
            weights = [float(w) for w in weights]
            if not weights or any(w < 0 or w != w for w in weights) or sum(weights) <= 0:
                raise ValueError(f"weights must be non-negative with a positive sum, got {weights!r}")
        self.loss = loss
        self.weights = None if weights is None else tuple(weights)
        self.weight_mode = weight_mode

    def get_weights(self, levels: int) -> list[float]:
        """Normalised weights for ``levels`` outputs (full resolution first)."""
        if self.weights is not None:
            if len(self.weights) != levels:
                raise ValueError(
                    f"DeepSupervisionLoss has {len(self.weights)} weights but the net returned {levels} outputs"
                )
            raw = list(self.weights)
        elif self.weight_mode == "exp":
            raw = [0.5**i for i in range(levels)]
        else:
            raw = [1.0] * levels
        total = sum(raw)
        return [w / total for w in raw]

    def forward(self, outputs: torch.Tensor | Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        """Compute the weighted loss.

        Args:
            outputs: ``(B, K, *spatial)`` logits or a list of them, full resolution first.
            target: ``(B, 1, *spatial)`` or ``(B, *spatial)`` label map at the first output's resolution.

        Returns:
            Scalar loss.
        """
        if isinstance(outputs, torch.Tensor):
            return self.loss(outputs, target)
        if not isinstance(outputs, list | tuple) or not outputs:
            raise ValueError("outputs must be a tensor or a non-empty list of tensors (full resolution first)")
        n_spatial = outputs[0].ndim - 2
        if target.ndim == n_spatial + 2:
            channel_target = target
        elif target.ndim == n_spatial + 1:
            channel_target = target.unsqueeze(1)
        else:
            raise ValueError(
                f"target must have shape (B, 1, *spatial) or (B, *spatial) for {n_spatial}D outputs, "
                f"got {tuple(target.shape)}"
            )
        # a segzoo loss checks the label's values (one device sync): do it once on the full-resolution label, as the
        # downsampled copies hold a subset of its values; other losses get the labels unchecked, as they would
        checks = getattr(self.loss, "checks_target", False)
        if checks:
            class_index_target(outputs[0], target)
        total = outputs[0].new_zeros((), dtype=torch.float32)
        with target_range_checked() if checks else contextlib.nullcontext():
            for weight, out in zip(self.get_weights(len(outputs)), outputs):
                if weight == 0:
                    continue
                level_target = downsample_labels(channel_target, out.shape[2:])
                if target.ndim == n_spatial + 1:
                    level_target = level_target[:, 0]
                total = total + weight * self.loss(out, level_target)
        return total
