"""MS-Dual: multi-scale self-guided attention network (compact version).

Reference: A. Sinha, J. Dolz, "Multi-scale self-guided attention for medical image segmentation", IEEE JBHI 25(1),
2021 (arXiv:1906.02849).

Follows the paper's layout and, where cheap, the original code (github.com/sinAshish/Multi-Scale-Attention): a
ResNet backbone gives features at four scales; each is reduced to ``attention_features`` channels and upsampled to the finest
scale (``H / 4``); their concatenation, convolved, is the multi-scale map ``F_MS``. For every scale s a guided
attention module runs two refinement steps on ``cat(F_s, F_MS)`` and then on ``cat(F_s, A_1 * F_MS)``: each step
multiplies dual self-attention (position + channel attention modules as in DANet, each between 3x3
conv-norm-PReLU layers) by the guide of a small encoder-decoder (the "semantic guidance" module, one per step,
shared by the four scales as in the original code). Each scale predicts from its step-2 output ``A_2``; the output
is the mean of the four predictions, upsampled to the input size. PReLU throughout, as in the original code.

Departures (see ``docs/nets/baselines.md``): a ResNet-34 encoder trained from scratch instead of the original
code's ImageNet ResNeXt-101 32x4d; a one-level semantic encoder-decoder; the guiding and reconstruction losses of
the encoder-decoders and the per-scale deep supervision are training-recipe parts that are not built in
(``forward`` returns only the averaged logits).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segzoo.nets._registry import register_net
from segzoo.nets.base import SegNet
from segzoo.nets.baselines._resnet import ResNetEncoder
from segzoo.nets.blocks.conv import conv_norm_act

__all__ = ["ChannelAttention", "MSDual", "PositionAttention"]


def _cna(cin: int, cout: int, k: int, norm: str | tuple, act: str | tuple) -> nn.Sequential:
    return nn.Sequential(*conv_norm_act(cin, cout, k, norm=norm, act=act))


class PositionAttention(nn.Module):
    """DANet position attention: ``x + gamma * V softmax(Q^T K)^T`` over all positions (gamma starts at 0).

    Shapes:
        ``(B, C, H, W)`` -> ``(B, C, H, W)``.
    """

    def __init__(self, channels: int, reduction: int = 8) -> None:
        super().__init__()
        inner = max(channels // reduction, 1)
        self.query = nn.Conv2d(channels, inner, 1)
        self.key = nn.Conv2d(channels, inner, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q = self.query(x).flatten(2).transpose(1, 2).unsqueeze(1)  # (B, 1, N, C')
        k = self.key(x).flatten(2).transpose(1, 2).unsqueeze(1)
        v = self.value(x).flatten(2).transpose(1, 2).unsqueeze(1)  # (B, 1, N, C)
        # DANet uses unscaled dot products; SDPA avoids materialising the N x N matrix on GPU
        out = F.scaled_dot_product_attention(q, k, v, scale=1.0)
        return x + self.gamma * out.squeeze(1).transpose(1, 2).reshape(b, c, h, w)


class ChannelAttention(nn.Module):
    """DANet channel attention: ``x + gamma * softmax(max(E) - E) X`` with ``E = X X^T`` (gamma starts at 0).

    Shapes:
        ``(B, C, H, W)`` -> ``(B, C, H, W)``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(2)  # (B, C, N)
        energy = flat @ flat.transpose(1, 2)
        attn = torch.softmax(energy.amax(dim=-1, keepdim=True) - energy, dim=-1)
        return x + self.gamma * (attn @ flat).view_as(x)


class _AttentionBranch(nn.Sequential):
    """The original code's ``PAM_CAM_Layer``: 3x3 conv-norm-act from ``2C`` to ``C``, PAM or CAM, 3x3 conv-norm-act."""

    def __init__(self, channels: int, position: bool, norm: str | tuple, act: str | tuple) -> None:
        super().__init__(
            _cna(2 * channels, channels, 3, norm, act),
            PositionAttention(channels) if position else ChannelAttention(),
            _cna(channels, channels, 3, norm, act),
        )


class _SemanticModule(nn.Module):
    """Semantic guidance: a small encoder-decoder on ``z`` (``2C`` channels), then a 3x3 conv to ``C`` (the guide).

    Shared by the four scales of one refinement step, as in the original code.
    """

    def __init__(self, channels: int, norm: str | tuple, act: str | tuple) -> None:
        super().__init__()
        c2 = 2 * channels
        self.encdec = nn.Sequential(
            _cna(c2, channels, 3, norm, act),
            nn.MaxPool2d(2),
            _cna(channels, channels, 3, norm, act),
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            _cna(channels, c2, 3, norm, act),
        )
        self.guide = nn.Conv2d(c2, channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.guide(self.encdec(z))


class _GuidedStep(nn.Module):
    """One refinement step of one scale: ``conv1x1((PAM(z) + CAM(z)) * guide)`` with ``guide`` from the shared module."""

    def __init__(self, channels: int, norm: str | tuple, act: str | tuple) -> None:
        super().__init__()
        self.pam = _AttentionBranch(channels, True, norm, act)
        self.cam = _AttentionBranch(channels, False, norm, act)
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, z: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        return self.out((self.pam(z) + self.cam(z)) * guide)


class MSDual(SegNet):
    """MS-Dual (2D, compact).

    Args:
        spatial_dims: must be 2.
        in_channels: input channels.
        out_channels: classes.
        features: ResNet encoder stage widths (ResNet-34: 64, 128, 256, 512).
        layers: basic blocks per ResNet stage (ResNet-34: 3, 4, 6, 3).
        attention_features: width of the per-scale maps, ``F_MS`` and the attention modules (the paper: 64).
        norm: MONAI norm spec.
        act: MONAI activation spec (the original code: PReLU throughout).

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
        attention_features: int = 64,
        norm: str | tuple = "batch",
        act: str | tuple = "prelu",
    ) -> None:
        super().__init__()
        c = int(attention_features)
        self.encoder = ResNetEncoder(in_channels, features, layers, norm, act)
        n = len(features)
        self.lateral = nn.ModuleList(_cna(cin, c, 1, norm, act) for cin in features)
        self.fuse = _cna(n * c, c, 3, norm, act)
        self.step1 = nn.ModuleList(_GuidedStep(c, norm, act) for _ in range(n))
        self.step2 = nn.ModuleList(_GuidedStep(c, norm, act) for _ in range(n))
        self.semantic1 = _SemanticModule(c, norm, act)  # shared by the scales (original code)
        self.semantic2 = _SemanticModule(c, norm, act)
        self.predict = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, out_channels, H, W)`` for ``x`` of shape ``(B, in_channels, H, W)``, H, W divisible by 32."""
        feats = self.encoder(x)
        size = feats[0].shape[-2:]
        scales = [
            F.interpolate(lat(f), size=size, mode="bilinear", align_corners=False) if i else lat(f)
            for i, (lat, f) in enumerate(zip(self.lateral, feats, strict=True))
        ]
        fms = self.fuse(torch.cat(scales, dim=1))
        preds = []
        for fs, step1, step2, predict in zip(scales, self.step1, self.step2, self.predict, strict=True):
            z1 = torch.cat([fs, fms], dim=1)
            a1 = step1(z1, self.semantic1(z1))
            z2 = torch.cat([fs, a1 * fms], dim=1)
            a2 = step2(z2, self.semantic2(z2))
            preds.append(predict(a2))  # the original predicts from the step-2 output
        logits = torch.stack(preds).mean(dim=0)
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


@register_net(input_shape=(1, 32, 32))
def msdual(**kwargs) -> MSDual:
    """Compact MS-Dual with a ResNet-34 encoder trained from scratch (CHAOS defaults: 1 input, 5 classes)."""
    return MSDual(**kwargs)
