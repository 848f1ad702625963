"""DR-Net: dual-rotation network, its ablations and the PFM U-Net.

Reference: X. You, Y. Zhu, ... "DR-Net: dual-rotation network with feature map enhancement for medical image
segmentation", Complex & Intelligent Systems, 2022.

Layout (2D, 5 encoder + 5 decoder stages, widths 32-512 by default):

- encoder 1: plain block (two 3x3 conv-norm-act) at full resolution;
- encoder s = 2..5: ``Y_s = DRB_s(P(Y_{s-1})) + Conv1x1(P(Y_{s-1}))`` with ``P`` 2x2 max pooling (the paper's
  residual: previous output, max-pooled, 1x1 conv, added);
- decoder 1 (at the bottleneck resolution): ``D_1 = DRB(Y_5) + Conv1x1(Y_5)``;
- decoder j = 2..4: ``D_j = DRB_j(Y_{6-j} + U(D_{j-1})) + Conv1x1(U(D_{j-1}))`` with ``U`` bilinear x2 (the
  paper: the decoder gets the matching encoder features and the previous decoder stage, interpolated, fused
  residually);
- decoder 5: plain block on ``Y_1 + U(D_4)`` plus the same 1x1 residual, then a 1x1 head to the classes.

DRB is :class:`~segzoo.nets.blocks.rotation.DualRotationBlock`; DPFM is stacked twice in encoder 4-5 and decoder 1-2.
Where the paper is silent (decoder 1's input, decoder widths, norm, fusion) we chose; see ``docs/nets/drnet.md``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.layers.utils import get_act_layer, get_norm_layer
from torch import nn

from segzoo.nets._registry import register_net
from segzoo.nets.base import SegNet
from segzoo.nets.baselines.unet import UNet2D
from segzoo.nets.blocks.rotation import DualRotationBlock

__all__ = ["DRNet"]


def _plain_block(in_channels: int, out_channels: int, norm: str | tuple, act: str | tuple) -> nn.Sequential:
    layers: list[nn.Module] = []
    for cin in (in_channels, out_channels):
        layers += [
            nn.Conv2d(cin, out_channels, 3, padding=1, bias=False),
            get_norm_layer(norm, spatial_dims=2, channels=out_channels),
            get_act_layer(act),
        ]
    return nn.Sequential(*layers)


class DRNet(SegNet):
    """DR-Net (2D).

    Args:
        spatial_dims: must be 2 (the rotation blocks rotate in the (H, W) plane).
        in_channels: input channels (CHAOS: 1, BraTS: 4).
        out_channels: classes (CHAOS: 5, BraTS: 4).
        features: the 5 encoder widths (default 32, 64, 128, 256, 512); decoder j has width ``features[4 - j]``
            for j = 1..4 (``D_1``: 256 at the bottleneck resolution) and ``features[0]`` for decoder 5.
        kernel_sizes: PFM kernel size per group (the paper: 1, 3, 5, 7).
        dilations: DPFM dilation per group (the paper: 1, 2, 3, 4).
        angles: rotation angles in degrees; ``(0, 90, 180, 270)`` is DR-Net, a single angle gives the paper's
            single-direction ablations, ``(0, 0, 0, 0)`` keeps the 16-map layout without any rotation.
        branches: branch kinds added per (group, direction), see ``DualRotationBlock`` (``("pfm", "dpfm")``).
        deep_dpfm_depth: stacked DPFM convs in encoder 4-5 and decoder 1-2 (the paper: 2; 1 elsewhere).
        fusion: outer fusion of the direction maps, ``"concat"`` or ``"sum"``.
        skip_fusion: how a decoder stage merges the matching encoder features with the upsampled previous
            decoder stage before its block: ``"add"`` (default; the widths match, the paper's residual fusion) or
            ``"concat"`` (U-Net style; ~2.96 M parameters instead of ~2.79 M).
        residual: the encoder and decoder 1x1 residual paths (False: the paper's no-residual ablation).
        norm: MONAI norm spec (paper silent; batch norm).
        act: MONAI activation spec (paper silent; ReLU).

    Shapes:
        input ``(B, in_channels, H, W)`` with H and W divisible by 16 (the paper: 256 x 256);
        output logits ``(B, out_channels, H, W)``.
    """

    divisor = 16  # checked by SegNet before forward

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 5,
        features: Sequence[int] = (32, 64, 128, 256, 512),
        kernel_sizes: Sequence[int] = (1, 3, 5, 7),
        dilations: Sequence[int] = (1, 2, 3, 4),
        angles: Sequence[int] = (0, 90, 180, 270),
        branches: Sequence[str] = ("pfm", "dpfm"),
        deep_dpfm_depth: int = 2,
        fusion: str = "concat",
        skip_fusion: str = "add",
        residual: bool = True,
        norm: str | tuple = "batch",
        act: str | tuple = ("relu", {"inplace": True}),
    ) -> None:
        super().__init__()
        if spatial_dims != 2:
            raise ValueError(f"DRNet is 2D: spatial_dims must be 2, got {spatial_dims}")
        if len(features) != 5:
            raise ValueError(f"features must give the 5 encoder widths, got {tuple(features)}")
        f = [int(c) for c in features]
        self.residual = residual

        def drb(cin: int, cout: int, deep: bool) -> DualRotationBlock:
            return DualRotationBlock(
                cin,
                cout,
                kernel_sizes=kernel_sizes,
                dilations=dilations,
                dpfm_depth=deep_dpfm_depth if deep else 1,
                angles=angles,
                branches=branches,
                fusion=fusion,
                norm=norm,
                act=act,
            )

        def res(cin: int, cout: int) -> nn.Module:
            return nn.Conv2d(cin, cout, 1) if residual else nn.Identity()

        self.enc1 = _plain_block(in_channels, f[0], norm, act)
        self.enc = nn.ModuleList([drb(f[s - 1], f[s], deep=s >= 3) for s in range(1, 5)])
        self.enc_res = nn.ModuleList([res(f[s - 1], f[s]) for s in range(1, 5)])
        # decoder j = 1..4 (index j - 1): D_1 at the bottleneck resolution, then one level up per stage
        dec_out = [f[3], f[2], f[1], f[0]]
        if skip_fusion not in ("add", "concat"):
            raise ValueError(f"skip_fusion must be 'add' or 'concat', got {skip_fusion!r}")
        self.skip_fusion = skip_fusion
        cat = skip_fusion == "concat"
        dec_in = [f[4]] + [f[4 - j] + dec_out[j - 1] if cat else f[4 - j] for j in range(1, 4)]
        res_in = [f[4]] + dec_out[:3]
        self.dec = nn.ModuleList([drb(dec_in[j], dec_out[j], deep=j < 2) for j in range(4)])
        self.dec_res = nn.ModuleList([res(res_in[j], dec_out[j]) for j in range(4)])
        self.dec5 = _plain_block(2 * f[0] if cat else f[0], f[0], norm, act)
        self.dec5_res = res(dec_out[3], f[0])
        self.head = nn.Conv2d(f[0], out_channels, 1)

    def _merge(self, skip: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        return torch.cat([skip, up], dim=1) if self.skip_fusion == "concat" else skip + up

    def _add_res(self, y: torch.Tensor, path: nn.Module, skip: torch.Tensor) -> torch.Tensor:
        return y + path(skip) if self.residual else y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, out_channels, H, W)`` for ``x`` of shape ``(B, in_channels, H, W)``, H, W divisible by 16."""
        skips = [self.enc1(x)]
        for block, path in zip(self.enc, self.enc_res, strict=True):
            p = F.max_pool2d(skips[-1], 2)
            skips.append(self._add_res(block(p), path, p))
        d = self._add_res(self.dec[0](skips[4]), self.dec_res[0], skips[4])
        for j in range(1, 4):
            u = F.interpolate(d, scale_factor=2, mode="bilinear", align_corners=False)
            d = self._add_res(self.dec[j](self._merge(skips[4 - j], u)), self.dec_res[j], u)
        u = F.interpolate(d, scale_factor=2, mode="bilinear", align_corners=False)
        d = self._add_res(self.dec5(self._merge(skips[0], u)), self.dec5_res, u)
        return self.head(d)


_SMALL = (1, 32, 32)


@register_net(input_shape=_SMALL)
def drnet(**kwargs) -> DRNet:
    """DR-Net as in the paper (CHAOS defaults: 1 input channel, 5 classes); 2,790,309 parameters."""
    return DRNet(**kwargs)


@register_net(input_shape=_SMALL)
def drnet_norot(**kwargs) -> DRNet:
    """Rotation off at equal capacity: four unrotated directions (16-map layout kept), the paper's strategy 5."""
    return DRNet(**{"angles": (0, 0, 0, 0), **kwargs})


@register_net(input_shape=_SMALL)
def drnet_rot0(**kwargs) -> DRNet:
    """Single direction 0 degrees per group (paper Table 6, DR-Net(0))."""
    return DRNet(**{"angles": (0,), **kwargs})


@register_net(input_shape=_SMALL)
def drnet_rot90(**kwargs) -> DRNet:
    """Single direction 90 degrees per group (paper Table 6, DR-Net(90))."""
    return DRNet(**{"angles": (90,), **kwargs})


@register_net(input_shape=_SMALL)
def drnet_rot180(**kwargs) -> DRNet:
    """Single direction 180 degrees per group (paper Table 6, DR-Net(180))."""
    return DRNet(**{"angles": (180,), **kwargs})


@register_net(input_shape=_SMALL)
def drnet_rot270(**kwargs) -> DRNet:
    """Single direction 270 degrees per group (paper Table 6, DR-Net(270))."""
    return DRNet(**{"angles": (270,), **kwargs})


@register_net(input_shape=_SMALL)
def drnet_pfm(**kwargs) -> DRNet:
    """PFM only: DPFM replaced by a second PFM branch so the addition fusion is kept (paper, strategy 1)."""
    return DRNet(**{"branches": ("pfm", "pfm"), **kwargs})


@register_net(input_shape=_SMALL)
def drnet_dpfm(**kwargs) -> DRNet:
    """DPFM only: PFM replaced by a second DPFM branch (paper, strategy 2)."""
    return DRNet(**{"branches": ("dpfm", "dpfm"), **kwargs})


@register_net(input_shape=_SMALL)
def drnet_nores(**kwargs) -> DRNet:
    """DR-Net without the encoder and decoder 1x1 residual paths."""
    return DRNet(**{"residual": False, **kwargs})


@register_net(input_shape=_SMALL)
def unet_pfm(**kwargs) -> UNet2D:
    """Plain 2D U-Net (widths 64-1024) whose convs, all but the first, are PFM blocks (paper, Table 5)."""
    return UNet2D(**{"in_channels": 1, "out_channels": 5, "block": "pfm", **kwargs})
