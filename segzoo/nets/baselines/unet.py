"""Classic 2D U-Net, optionally with DR-Net's PFM blocks in place of its convolutions.

Reference: O. Ronneberger, P. Fischer, T. Brox, "U-Net: Convolutional Networks for Biomedical Image Segmentation",
MICCAI 2015. PFM variant: X. You et al., "DR-Net", Complex & Intelligent Systems 2022 (Table 5).

Departures from the 2015 paper, as in most re-implementations: 'same' padding (output at input size) and batch
norm after every conv. As in the paper, dropout ends the contracting path (the two deepest levels). See ``docs/nets/baselines.md``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from segzoo.nets._registry import register_net
from segzoo.nets.base import SegNet
from segzoo.nets.blocks.conv import conv_norm_act
from segzoo.nets.blocks.rotation import DualRotationBlock

__all__ = ["UNet2D"]

BLOCKS = ("conv", "pfm")


class UNet2D(SegNet):
    """2D U-Net: per level two 3x3 conv-norm-act, 2x2 max pooling, 2x2 transposed-conv upsampling, concat skips.

    Args:
        spatial_dims: must be 2.
        in_channels: input channels.
        out_channels: classes.
        features: widths per level (the paper: 64, 128, 256, 512, 1024); ``len(features) - 1`` poolings.
        block: ``"conv"`` (classic) or ``"pfm"``: every 3x3 conv except the very first becomes a PFM block
            (:class:`~segzoo.nets.blocks.rotation.DualRotationBlock` with one PFM branch and 4 directions).
        kernel_size: PFM kernel size per group when ``block="pfm"``.
        angles: PFM rotation angles when ``block="pfm"``.
        dropout: dropout probability on the outputs of the two deepest contracting levels (the paper: "drop-out
            layers at the end of the contracting path", 0.5 in the original Caffe model); 0 turns it off.
        norm: MONAI norm spec.
        act: MONAI activation spec.

    Shapes:
        input ``(B, in_channels, H, W)``, H and W divisible by ``2 ** (len(features) - 1)``;
        output ``(B, out_channels, H, W)``.
    """

    supported_spatial_dims = (2,)  # checked by SegNet before __init__

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 2,
        features: Sequence[int] = (64, 128, 256, 512, 1024),
        block: str = "conv",
        kernel_size: Sequence[int] = (1, 3, 5, 7),
        angles: Sequence[int] = (0, 90, 180, 270),
        dropout: float = 0.5,
        norm: str | tuple = "batch",
        act: str | tuple = ("relu", {"inplace": True}),
    ) -> None:
        super().__init__()
        if block not in BLOCKS:
            raise ValueError(f"block must be one of {BLOCKS}, got {block!r}")
        if len(features) < 2:
            raise ValueError(f"features needs at least 2 levels, got {tuple(features)}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        f = [int(c) for c in features]
        self.levels = len(f)
        self.divisor = 2 ** (self.levels - 1)  # checked by SegNet before forward

        def conv(cin: int, cout: int, first: bool = False) -> nn.Module:
            if block == "pfm" and not first:
                dilations = (1,) * len(kernel_size)  # unused: no DPFM branch
                # a PFM block stands in for one conv-norm-act, so its maps stay linear up to the fusion (DR-Net's
                # norm + act on the maps is there for its residual, which a U-Net block has not)
                return DualRotationBlock(
                    cin,
                    cout,
                    kernel_size,
                    dilations,
                    angles=angles,
                    branches=("pfm",),
                    map_norm_act=False,
                    norm=norm,
                    act=act,
                )
            return nn.Sequential(*conv_norm_act(cin, cout, norm=norm, act=act))

        def double(cin: int, cout: int, first: bool = False) -> nn.Sequential:
            return nn.Sequential(conv(cin, cout, first), conv(cout, cout))

        self.down = nn.ModuleList([double(in_channels, f[0], first=True)])
        self.down.extend(double(f[i - 1], f[i]) for i in range(1, self.levels))
        self.upconv = nn.ModuleList(
            nn.ConvTranspose2d(f[i], f[i - 1], 2, stride=2) for i in range(self.levels - 1, 0, -1)
        )
        self.up = nn.ModuleList(double(2 * f[i - 1], f[i - 1]) for i in range(self.levels - 1, 0, -1))
        self.head = nn.Conv2d(f[0], out_channels, 1)
        # the two deepest contracting levels (the bottleneck and the level above it) end in dropout
        self.drop = nn.ModuleList(
            nn.Dropout(dropout) if i >= self.levels - 2 and dropout > 0 else nn.Identity() for i in range(self.levels)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, out_channels, H, W)``."""
        skips = []
        for i, (stage, drop) in enumerate(zip(self.down, self.drop, strict=True)):
            x = drop(stage(x if i == 0 else nn.functional.max_pool2d(x, 2)))
            skips.append(x)
        x = skips.pop()
        for upconv, stage in zip(self.upconv, self.up, strict=True):
            x = stage(torch.cat([skips.pop(), upconv(x)], dim=1))
        return self.head(x)


@register_net(input_shape=(1, 32, 32))
def unet2d(**kwargs) -> UNet2D:
    """The classic U-Net (widths 64-1024) as the paper's baseline (CHAOS defaults: 1 input, 5 classes)."""
    return UNet2D(**{"in_channels": 1, "out_channels": 5, **kwargs})
