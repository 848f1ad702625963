"""CE-Net: context encoder network.

Reference: Z. Gu, J. Cheng, H. Fu, K. Zhou, H. Hao, Y. Zhao, T. Zhang, S. Gao, J. Liu, "CE-Net: Context Encoder
Network for 2D Medical Image Segmentation", IEEE TMI 38(10), 2019.

ResNet-34 encoder (here trained from scratch: no pretrained weights are downloaded), Dense Atrous Convolution
(DAC) block and Residual Multi-kernel Pooling (RMP) block at the bottleneck, decoder of 1x1 / 3x3 transposed /
1x1 blocks with additive skips, and a transposed-conv head back to the input size. Departures: the RMP pooling
kernels (2, 3, 5, 6) are clamped to the bottleneck size so inputs down to 32 x 32 work; see
``docs/nets/baselines.md``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.layers.utils import get_act_layer
from torch import nn

from segzoo.nets._registry import register_net
from segzoo.nets.base import SegNet
from segzoo.nets.baselines._resnet import ResNetEncoder
from segzoo.nets.blocks.conv import conv_norm_act

__all__ = ["CENet", "DACBlock", "RMPBlock"]


class DACBlock(nn.Module):
    """Dense Atrous Convolution: four cascaded branches of 3x3 convs with dilations (1), (3), (1, 3), (1, 3, 5).

    As in the authors' code, the dilated convs are shared by the branches, branches 2-4 end with a shared 1x1 conv,
    each branch is followed by ReLU, and the input is added to the four branch outputs.

    Shapes:
        ``(B, C, H, W)`` -> ``(B, C, H, W)``.
    """

    def __init__(self, channels: int, act: str | tuple = ("relu", {"inplace": False})) -> None:
        super().__init__()
        self.dilate1 = nn.Conv2d(channels, channels, 3, padding=1, dilation=1)
        self.dilate2 = nn.Conv2d(channels, channels, 3, padding=3, dilation=3)
        self.dilate3 = nn.Conv2d(channels, channels, 3, padding=5, dilation=5)
        self.conv1x1 = nn.Conv2d(channels, channels, 1)
        self.act = get_act_layer(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d1 = self.dilate1(x)
        b1 = self.act(d1)
        b2 = self.act(self.conv1x1(self.dilate2(x)))
        d12 = self.dilate2(d1)
        b3 = self.act(self.conv1x1(d12))
        b4 = self.act(self.conv1x1(self.dilate3(d12)))
        return x + b1 + b2 + b3 + b4


class RMPBlock(nn.Module):
    """Residual Multi-kernel Pooling: max pooling with kernels = strides (2, 3, 5, 6), a shared 1x1 conv to one
    channel each, bilinear upsampling, concatenated to the input.

    Args:
        channels: input channels.
        pool_sizes: pooling kernels; each is clamped to the feature-map size (our departure for small inputs).

    Shapes:
        ``(B, C, H, W)`` -> ``(B, C + len(pool_sizes), H, W)``.
    """

    def __init__(self, channels: int, pool_sizes: Sequence[int] = (2, 3, 5, 6)) -> None:
        super().__init__()
        self.pool_sizes = tuple(int(p) for p in pool_sizes)
        self.conv = nn.Conv2d(channels, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        outs = [x]
        for p in self.pool_sizes:
            k = (min(p, h), min(p, w))
            y = self.conv(F.max_pool2d(x, kernel_size=k, stride=k))
            outs.append(F.interpolate(y, size=(h, w), mode="bilinear", align_corners=False))
        return torch.cat(outs, dim=1)


class _DecoderBlock(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int, norm: str | tuple, act: str | tuple) -> None:
        mid = in_channels // 4
        super().__init__(
            *conv_norm_act(in_channels, mid, 1, norm=norm, act=act, bias=True),
            *conv_norm_act(mid, mid, 3, stride=2, norm=norm, act=act, bias=True, is_transposed=True),
            *conv_norm_act(mid, out_channels, 1, norm=norm, act=act, bias=True),
        )


class CENet(SegNet):
    """CE-Net (2D).

    Args:
        spatial_dims: must be 2.
        in_channels: input channels.
        out_channels: classes.
        features: encoder stage widths (ResNet-34: 64, 128, 256, 512).
        layers: basic blocks per encoder stage (ResNet-34: 3, 4, 6, 3).
        pool_sizes: RMP pooling kernels (the paper: 2, 3, 5, 6).
        norm: MONAI norm spec.
        act: MONAI activation spec.

    Shapes:
        input ``(B, in_channels, H, W)`` with H and W divisible by 32; output ``(B, out_channels, H, W)``.
    """

    supported_spatial_dims = (2,)  # checked by SegNet before __init__
    divisor = 32  # checked by SegNet before forward

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 5,
        features: Sequence[int] = (64, 128, 256, 512),
        layers: Sequence[int] = (3, 4, 6, 3),
        pool_sizes: Sequence[int] = (2, 3, 5, 6),
        norm: str | tuple = "batch",
        act: str | tuple = ("relu", {"inplace": True}),
    ) -> None:
        super().__init__()
        if len(features) != 4 or len(layers) != 4:
            raise ValueError(f"CENet needs 4 encoder stages, got features={tuple(features)} layers={tuple(layers)}")
        f = [int(c) for c in features]
        self.encoder = ResNetEncoder(in_channels, f, layers, norm, act)
        self.dac = DACBlock(f[3])
        self.rmp = RMPBlock(f[3], pool_sizes)
        self.decoders = nn.ModuleList(
            [
                _DecoderBlock(f[3] + len(pool_sizes), f[2], norm, act),
                _DecoderBlock(f[2], f[1], norm, act),
                _DecoderBlock(f[1], f[0], norm, act),
                _DecoderBlock(f[0], f[0], norm, act),
            ]
        )
        half = f[0] // 2
        self.head = nn.Sequential(
            nn.ConvTranspose2d(f[0], half, 4, stride=2, padding=1),
            get_act_layer(act),
            nn.Conv2d(half, half, 3, padding=1),
            get_act_layer(act),
            nn.Conv2d(half, out_channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, out_channels, H, W)`` for ``x`` of shape ``(B, in_channels, H, W)``, H, W divisible by 32."""
        e1, e2, e3, e4 = self.encoder(x)
        d = self.rmp(self.dac(e4))
        for decoder, skip in zip(self.decoders[:3], (e3, e2, e1), strict=True):
            d = decoder(d) + skip
        return self.head(self.decoders[3](d))


@register_net(input_shape=(1, 32, 32))
def cenet(**kwargs) -> CENet:
    """CE-Net with a ResNet-34 encoder trained from scratch (CHAOS defaults: 1 input, 5 classes)."""
    return CENet(**kwargs)
