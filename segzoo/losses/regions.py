"""Region targets (nnU-Net's region-based training): a label map turned into one binary mask per region.

nnU-Net trains datasets whose dataset.json declares regions (``{"whole tumour": [1, 2, 3], ...}``) with one sigmoid
output per region and a Dice + BCE loss on the masks ``isin(label, members)``. :class:`RegionLoss` wraps any such loss
(MONAI's ``DiceCELoss(sigmoid=True)``) so that it takes the label map like every other segzoo loss; inside
:class:`~segzoo.losses.DeepSupervisionLoss` each scale's (nearest-downsampled) label map is converted.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["RegionLoss", "region_targets"]


def region_targets(label: torch.Tensor, regions: Sequence[Sequence[int]]) -> torch.Tensor:
    """``(B, 1, *spatial)`` integer label map -> ``(B, R, *spatial)`` float masks, one per region."""
    if label.ndim < 3 or label.shape[1] != 1:
        raise ValueError(f"label: expected (B, 1, *spatial), got {tuple(label.shape)}")
    masks = [torch.isin(label[:, 0], torch.as_tensor(list(members), device=label.device)) for members in regions]
    return torch.stack(masks, dim=1).float()


class RegionLoss(nn.Module):
    """A region loss on label maps: ``loss(logits (B, R, ...), region_targets(label))``.

    Args:
        loss: a loss on ``R`` sigmoid outputs and ``R`` binary masks (e.g. ``monai.losses.DiceCELoss(sigmoid=True)``).
        regions: the label values of each region, in the net's output order; ``None``: given by :meth:`bind_regions`,
            which ``segzoo fit`` calls with the datamodule's regions.
    """

    def __init__(self, loss: nn.Module, regions: list[list[int]] | None = None) -> None:
        super().__init__()
        self.loss = loss
        self.regions = None if regions is None else [[int(v) for v in r] for r in regions]

    def bind_regions(self, regions: Sequence[Sequence[int]]) -> None:
        """Adopt the dataset's regions unless the config gave some."""
        if self.regions is None:
            self.regions = [[int(v) for v in r] for r in regions]

    def forward(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        if self.regions is None:
            raise ValueError("RegionLoss: no regions (a region dataset binds them at fit; or pass regions=)")
        if logits.shape[1] != len(self.regions):
            raise ValueError(f"RegionLoss: {logits.shape[1]} outputs for {len(self.regions)} regions")
        return self.loss(logits, region_targets(label.long(), self.regions))
