"""Region outputs (nnU-Net's region-based training) turned into one class distribution, for whole-case inference.

A net trained on nnU-Net region labels (``{"whole tumour": [1, 2, 3], "tumour core": [2, 3], "enhancing": [3]}``
with ``regions_class_order``) has one sigmoid output per region. nnU-Net writes a label map by painting: background,
then for each region in order the voxels whose probability exceeds 0.5 get that region's value, later regions over
earlier ones. :class:`RegionScores` wraps such a net so that its output is the log of a class distribution over the
label values instead, which every argmax-based piece of segzoo (flip and window averaging of softmax outputs,
restoring to the original grid, metrics, post-processing) takes as it is:

    P(value of region j) = p_j * prod_{i > j} (1 - p_i),   P(background) = prod_i (1 - p_i)

(the probability that region j is the last one present, the painting read as independent events), zero for values
no region paints. It sums to 1, and its argmax is nnU-Net's painting wherever the painted region's probability
exceeds that of every other outcome, e.g. whenever it is above 0.5; the two rules differ only in ambiguous voxels
(several regions near 0.5). Our choice: see ``docs/own_data.md``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["RegionScores", "region_class_probabilities"]


def region_class_probabilities(
    region_probs: torch.Tensor, class_order: Sequence[int], num_classes: int, eps: float = 1e-7
) -> torch.Tensor:
    """``(B, R, *spatial)`` region probabilities -> ``(B, num_classes, *spatial)`` class probabilities (see module).

    Args:
        region_probs: sigmoid outputs, regions in painting order.
        class_order: the label value each region paints (nnU-Net's ``regions_class_order``).
        num_classes: label values, background included (``max(value) + 1`` or more).
        eps: floor of every probability (their log is taken).
    """
    if region_probs.shape[1] != len(class_order):
        raise ValueError(f"{region_probs.shape[1]} region outputs but regions_class_order has {len(class_order)}")
    out = region_probs.new_zeros((region_probs.shape[0], num_classes, *region_probs.shape[2:]))
    later = torch.ones_like(region_probs[:, 0])  # prod over the regions after j of (1 - p_i)
    for j in range(len(class_order) - 1, -1, -1):
        out[:, int(class_order[j])] += region_probs[:, j] * later
        later = later * (1 - region_probs[:, j])
    out[:, 0] += later
    return out.clamp_min(eps)


class RegionScores(nn.Module):
    """Wraps a region net: ``forward`` returns the log class probabilities of :func:`region_class_probabilities`
    (full resolution only, for inference), so ``softmax`` of the output is that distribution.

    Args:
        net: the net, one logit per region.
        class_order: the label value each region paints, in painting order.
        num_classes: label values, background included.
    """

    def __init__(self, net: nn.Module, class_order: Sequence[int], num_classes: int) -> None:
        super().__init__()
        self.net = net
        self.class_order = [int(v) for v in class_order]
        self.num_classes = int(num_classes)
        if hasattr(net, "spatial_dims"):  # what inferers read off a net
            self.spatial_dims = net.spatial_dims
        config = getattr(net, "init_config", None)
        if isinstance(config, dict):  # the inner net's arguments, with the outputs this wrapper gives
            init_args = {**config.get("init_args", {}), "out_channels": self.num_classes}
            self.init_config = {**config, "init_args": init_args}

    @property
    def out_channels(self) -> int:
        return self.num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        if isinstance(out, list | tuple):  # deep supervision in training mode: full resolution first
            out = out[0]
        return torch.log(region_class_probabilities(torch.sigmoid(out.float()), self.class_order, self.num_classes))
