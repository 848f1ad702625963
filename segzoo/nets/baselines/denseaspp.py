"""DenseASPP: densely connected atrous spatial pyramid pooling on a dilated DenseNet.

Reference: M. Yang, K. Yu, C. Zhang, Z. Li, K. Yang, "DenseASPP for Semantic Segmentation in Street Scenes",
CVPR 2018.

Backbone: DenseNet-121 layout (growth 32, blocks 6/12/24/16) trained from scratch, output stride 8 (the last two
transitions do not pool; blocks 3 and 4 use dilation 2 and 4), ending in a BN without activation (the original
code's ``norm5``). Head: five densely connected atrous layers (dilations 3, 6, 12, 18, 24), each BN-ReLU-1x1 conv
to ``aspp_mid`` channels (the first without the leading BN-ReLU: the original code's ``bn_start=False``) then
BN-ReLU-3x3 dilated conv to ``aspp_out`` channels, concatenated to everything before it; dropout, a 1x1
classifier, bilinear x8 upsampling.
Widths are arguments; the defaults follow the DenseNet-121 setting of the paper (mid 128 / out 64 after a 1x1
reduction of the backbone output to half its channels). See ``docs/nets/baselines.md``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.layers.utils import get_norm_layer
from torch import nn

from segzoo.nets._registry import register_net
from segzoo.nets.base import SegNet
from segzoo.nets.blocks.conv import conv_norm_act

__all__ = ["DenseASPP"]


def _norm_act_conv(
    cin: int, cout: int, k: int, norm: str | tuple, act: str | tuple, dilation: int = 1, dropout: float = 0.0
) -> list[nn.Module]:
    layers = conv_norm_act(cin, cout, k, dilation=dilation, norm=norm, act=act, preactivation=True)
    if dropout:
        layers.append(nn.Dropout2d(dropout))
    return layers


class _DenseBlock(nn.Module):
    """DenseNet block of bottleneck layers (BN-ReLU-1x1 to 4*growth, BN-ReLU-3x3 to growth), all concatenated."""

    def __init__(self, cin: int, n: int, growth: int, dilation: int, norm: str | tuple, act: str | tuple) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Sequential(
                *_norm_act_conv(cin + i * growth, 4 * growth, 1, norm, act),
                *_norm_act_conv(4 * growth, growth, 3, norm, act, dilation=dilation),
            )
            for i in range(n)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        for layer in self.layers:
            feats.append(layer(torch.cat(feats, dim=1)))
        return torch.cat(feats, dim=1)


class DenseASPP(SegNet):
    """DenseASPP (2D).

    Args:
        spatial_dims: must be 2.
        in_channels: input channels.
        out_channels: classes.
        growth_rate: DenseNet growth rate (DenseNet-121: 32).
        layers: layers per dense block, 4 blocks (DenseNet-121: 6, 12, 24, 16; MONAI's ``DenseNet``: ``block_config``).
        init_features: stem width (DenseNet-121: 64).
        aspp_dilations: dilation of each densely connected atrous layer (the paper: 3, 6, 12, 18, 24).
        aspp_mid: width of each atrous layer's 1x1 reduction (the paper, DenseNet-121: 128).
        aspp_out: output width of each atrous layer (the paper, DenseNet-121: 64).
        dropout: dropout after each atrous layer and before the classifier (the paper's code: 0.1).
        norm: MONAI norm spec.
        act: MONAI activation spec.

    Shapes:
        input ``(B, in_channels, H, W)`` with H and W divisible by 8; output ``(B, out_channels, H, W)``.
    """

    supported_spatial_dims = (2,)  # checked by SegNet before __init__
    divisor = 8  # checked by SegNet before forward

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 5,
        growth_rate: int = 32,
        layers: Sequence[int] = (6, 12, 24, 16),
        init_features: int = 64,
        aspp_dilations: Sequence[int] = (3, 6, 12, 18, 24),
        aspp_mid: int = 128,
        aspp_out: int = 64,
        dropout: float = 0.1,
        norm: str | tuple = "batch",
        act: str | tuple = ("relu", {"inplace": True}),
    ) -> None:
        super().__init__()
        if len(layers) != 4:
            raise ValueError(f"layers must list 4 dense blocks, got {tuple(layers)}")
        backbone: list[nn.Module] = [
            *conv_norm_act(in_channels, init_features, 7, stride=2, norm=norm, act=act),
            nn.MaxPool2d(3, stride=2, padding=1),
        ]
        c = init_features
        block_dilations = (1, 1, 2, 4)
        for i, (n, dil) in enumerate(zip(layers, block_dilations, strict=True)):
            backbone.append(_DenseBlock(c, n, growth_rate, dil, norm, act))
            c += n * growth_rate
            # transitions halve the width; only the first one pools (output stride 8)
            backbone += _norm_act_conv(c, c // 2, 1, norm, act)
            if i == 0:
                backbone.append(nn.AvgPool2d(2, stride=2))
            c //= 2
        # the original code ends the backbone with a BN (norm5) and no activation before the concatenation
        backbone.append(get_norm_layer(norm, spatial_dims=2, channels=c))
        self.backbone = nn.Sequential(*backbone)
        self.aspp = nn.ModuleList()
        for i, d in enumerate(aspp_dilations):
            # bn_start=False for the first atrous layer (original code): its 1x1 conv sees the backbone output as is
            reduce = _norm_act_conv(c, aspp_mid, 1, norm, act)
            self.aspp.append(
                nn.Sequential(
                    *(reduce[2:] if i == 0 else reduce),
                    *_norm_act_conv(aspp_mid, aspp_out, 3, norm, act, dilation=d, dropout=dropout),
                )
            )
            c += aspp_out
        self.classifier = nn.Sequential(nn.Dropout2d(dropout), nn.Conv2d(c, out_channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, out_channels, H, W)`` for ``x`` of shape ``(B, in_channels, H, W)``, H, W divisible by 8."""
        f = self.backbone(x)
        for layer in self.aspp:
            f = torch.cat([f, layer(f)], dim=1)
        return F.interpolate(self.classifier(f), size=x.shape[-2:], mode="bilinear", align_corners=False)


@register_net(input_shape=(1, 32, 32))
def denseaspp(**kwargs) -> DenseASPP:
    """DenseASPP with a DenseNet-121 backbone trained from scratch (CHAOS defaults: 1 input, 5 classes)."""
    return DenseASPP(**kwargs)
