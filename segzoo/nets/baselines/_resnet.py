"""A ResNet-34-style encoder (no pretrained weights) shared by the CE-Net and MS-Dual baselines.

Reference: K. He, X. Zhang, S. Ren, J. Sun, "Deep Residual Learning for Image Recognition", CVPR 2016.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.layers.utils import get_act_layer
from torch import nn

from segzoo.nets.blocks.conv import conv_norm_act


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 conv-norm, identity (or 1x1 strided projection) shortcut, activation."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, norm: str | tuple, act: str | tuple) -> None:
        super().__init__()
        # the activation follows the shortcut's addition: conv-norm here, act in forward
        self.conv1, self.norm1 = conv_norm_act(in_channels, out_channels, stride=stride, norm=norm, act=None)
        self.conv2, self.norm2 = conv_norm_act(out_channels, out_channels, norm=norm, act=None)
        self.act = get_act_layer(act)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                *conv_norm_act(in_channels, out_channels, 1, stride=stride, norm=norm, act=None)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.norm1(self.conv1(x)))
        return self.act(self.norm2(self.conv2(y)) + self.shortcut(x))


class ResNetEncoder(nn.Module):
    """7x7/2 stem, 3x3/2 max pooling, then stages of basic blocks (the first unstrided, the others stride 2).

    Args:
        in_channels: input channels.
        features: stage widths (ResNet-34: 64, 128, 256, 512).
        layers: blocks per stage (ResNet-34: 3, 4, 6, 3).
        norm: MONAI norm spec.
        act: MONAI activation spec.

    Shapes:
        ``(B, in_channels, H, W)`` -> list of stage outputs at ``H / 4, H / 8, ...`` (one per stage).
    """

    def __init__(
        self,
        in_channels: int,
        features: Sequence[int] = (64, 128, 256, 512),
        layers: Sequence[int] = (3, 4, 6, 3),
        norm: str | tuple = "batch",
        act: str | tuple = ("relu", {"inplace": True}),
    ) -> None:
        super().__init__()
        if len(features) != len(layers):
            raise ValueError(f"features {tuple(features)} and layers {tuple(layers)} must have the same length")
        self.stem = nn.Sequential(*conv_norm_act(in_channels, features[0], 7, stride=2, norm=norm, act=act))
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.stages = nn.ModuleList()
        cin = features[0]
        for i, (cout, n) in enumerate(zip(features, layers, strict=True)):
            blocks = [
                BasicBlock(cin if j == 0 else cout, cout, 2 if (i > 0 and j == 0) else 1, norm, act) for j in range(n)
            ]
            self.stages.append(nn.Sequential(*blocks))
            cin = cout

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Stage outputs, finest first: ``[(B, features[0], H/4, W/4), (B, features[1], H/8, W/8), ...]``."""
        x = self.pool(self.stem(x))
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs
