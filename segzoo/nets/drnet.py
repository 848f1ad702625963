"""DR-Net: dual-rotation network, its ablations and the PFM U-Net.

Reference: X. You, Y. Zhu, ... "DR-Net: dual-rotation network with feature map enhancement for medical image
segmentation", Complex & Intelligent Systems, 2022.

Layout (2D, 5 encoder + 5 decoder stages, widths 32-512 by default). ``DRB(x; r)`` is a dual-rotation block on
``x`` whose residual input ``r`` goes through a 1x1 conv per group and is added to each of the 16 direction maps
after their norm + act and before the outer fusion (the paper's Fig. 4; ``residual_placement="map"``), or, with
``"fused"``, is ``DRB(x) + Conv1x1(r)`` after the fusion:

- encoder 1: plain block (two 3x3 conv-norm-act) at full resolution;
- encoder s = 2..5: ``Y_s = DRB_s(P(Y_{s-1}); P(Y_{s-1}))`` with ``P`` 2x2 max pooling (the paper's residual:
  previous output, max-pooled, 1x1 conv, added);
- decoder 1 (at the bottleneck resolution): ``D_1 = DRB(Y_5; Y_5)``;
- decoder j = 2..4: ``D_j = DRB_j(Y_{6-j} + U(D_{j-1}); U(D_{j-1}))`` with ``U`` bilinear x2 (the paper: the
  decoder gets the matching encoder features and the previous decoder stage, interpolated, fused residually;
  ``decoder_inputs`` drops either, the paper's strategies 3 and 4);
- decoder 5: plain block on ``Y_1 + U(D_4)`` plus ``Conv1x1(U(D_4))``, then a 1x1 head to the classes.

DRB is :class:`~segzoo.nets.blocks.rotation.DualRotationBlock`; DPFM is stacked twice in encoder 4-5 and decoder 1-2.
Where the paper is silent (decoder 1's input, decoder widths, norm, fusion, weight sharing, residual placement) we
chose; see ``docs/nets/drnet.md``, which also says which of the registered ablations are distinct models.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segzoo.nets._registry import register_net
from segzoo.nets.base import SegNet
from segzoo.nets.baselines.unet import UNet2D
from segzoo.nets.blocks.conv import conv_norm_act
from segzoo.nets.blocks.rotation import DualRotationBlock

__all__ = ["DRNet"]


def _plain_block(in_channels: int, out_channels: int, norm: str | tuple, act: str | tuple) -> nn.Sequential:
    return nn.Sequential(
        *conv_norm_act(in_channels, out_channels, norm=norm, act=act),
        *conv_norm_act(out_channels, out_channels, norm=norm, act=act),
    )


class DRNet(SegNet):
    """DR-Net (2D).

    Args:
        spatial_dims: must be 2 (the rotation blocks rotate in the (H, W) plane).
        in_channels: input channels (CHAOS: 1, BraTS: 4).
        out_channels: classes (CHAOS: 5, BraTS: 4).
        features: the 5 encoder widths (default 32, 64, 128, 256, 512); decoder j has width ``features[4 - j]``
            for j = 1..4 (``D_1``: 256 at the bottleneck resolution) and ``features[0]`` for decoder 5.
        kernel_size: PFM kernel size per group (the paper: 1, 3, 5, 7).
        dilations: DPFM dilation per group (the paper: 1, 2, 3, 4).
        angles: rotation angles in degrees; ``(0, 90, 180, 270)`` is DR-Net, ``(0,)`` a single direction.
        branches: branch kinds added per (group, direction), see ``DualRotationBlock`` (``("pfm", "dpfm")``).
        share_weights: the 4 directions of a group share its convolutions (default, the paper's wording); with
            ``False`` each direction has its own (and rotation becomes a reparametrisation, see the docs).
        dpfm_depth: stacked DPFM convs in encoder 4-5 and decoder 1-2 (the paper: 2); the other stages use 1.
        fusion: outer fusion of the direction maps, ``"concat"`` or ``"sum"``.
        skip_fusion: how a decoder stage merges the matching encoder features with the upsampled previous
            decoder stage before its block: ``"add"`` (default; the widths match, the paper's residual fusion) or
            ``"concat"`` (U-Net style).
        residual: the encoder and decoder 1x1 residual paths (False: the paper's no-residual ablation).
        residual_placement: where a rotation block's residual enters: ``"map"`` (default, our reading of the
            paper's Fig. 4: a 1x1 conv of each group of the residual input is added to each of that group's
            direction maps, before the outer fusion) or ``"fused"`` (a 1x1 conv of the whole residual input added
            to the block output, after fusion + norm + act). Decoder 5 (a plain block) always adds it after.
        map_norm_act: the direction maps of every rotation block go through norm + act before the per-map
            residual is added and the maps are fused (default, issue 25), so the residual is a path around a
            nonlinearity. ``False`` is segzoo's reading before issue 25, in which the maps stay linear up to the
            fusion and the per-map residual of an encoder stage folds into the branch convs.
        decoder_inputs: what decoder stages 2-5 get besides their main path: ``"encoder"`` (the matching encoder
            features, merged by ``skip_fusion``) and/or ``"previous"`` (the residual path from the upsampled
            previous decoder stage). ``("previous",)`` is the paper's strategy 3, ``("encoder",)`` its strategy 4.
        norm: MONAI norm spec (paper silent; batch norm).
        act: MONAI activation spec (paper silent; ReLU).

    Shapes:
        input ``(B, in_channels, H, W)`` with H and W divisible by 16 (the paper: 256 x 256);
        output logits ``(B, out_channels, H, W)``.
    """

    supported_spatial_dims = (2,)  # checked by SegNet before __init__
    divisor = 16  # checked by SegNet before forward

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 5,
        features: Sequence[int] = (32, 64, 128, 256, 512),
        kernel_size: Sequence[int] = (1, 3, 5, 7),
        dilations: Sequence[int] = (1, 2, 3, 4),
        angles: Sequence[int] = (0, 90, 180, 270),
        branches: Sequence[str] = ("pfm", "dpfm"),
        share_weights: bool = True,
        dpfm_depth: int = 2,
        fusion: str = "concat",
        skip_fusion: str = "add",
        residual: bool = True,
        residual_placement: str = "map",
        map_norm_act: bool = True,
        decoder_inputs: Sequence[str] = ("encoder", "previous"),
        norm: str | tuple = "batch",
        act: str | tuple = ("relu", {"inplace": True}),
    ) -> None:
        super().__init__()
        if len(features) != 5:
            raise ValueError(f"features must give the 5 encoder widths, got {tuple(features)}")
        if skip_fusion not in ("add", "concat"):
            raise ValueError(f"skip_fusion must be 'add' or 'concat', got {skip_fusion!r}")
        if residual_placement not in ("map", "fused"):
            raise ValueError(f"residual_placement must be 'map' or 'fused', got {residual_placement!r}")
        decoder_inputs = tuple(decoder_inputs)
        if not decoder_inputs or not set(decoder_inputs) <= {"encoder", "previous"}:
            raise ValueError(
                f"decoder_inputs must be a non-empty subset of ('encoder', 'previous'), got {decoder_inputs}"
            )
        f = [int(c) for c in features]
        self.skip_fusion = skip_fusion
        self.skips = "encoder" in decoder_inputs
        self.enc_residual = residual
        self.dec_residual = residual and "previous" in decoder_inputs
        self.residual_placement = residual_placement
        per_map = residual_placement == "map"

        def drb(cin: int, cout: int, deep: bool, res_in: int) -> DualRotationBlock:
            return DualRotationBlock(
                cin,
                cout,
                kernel_size=kernel_size,
                dilations=dilations,
                dpfm_depth=dpfm_depth if deep else 1,
                angles=angles,
                branches=branches,
                share_weights=share_weights,
                residual_channels=res_in if per_map else 0,
                map_norm_act=map_norm_act,
                fusion=fusion,
                norm=norm,
                act=act,
            )

        def res(cin: int, cout: int, on: bool, block: bool = True) -> nn.Module:
            # with per-map placement the rotation block owns its residual conv
            return nn.Conv2d(cin, cout, 1) if on and not (per_map and block) else nn.Identity()

        self.enc1 = _plain_block(in_channels, f[0], norm, act)
        self.enc = nn.ModuleList(
            [drb(f[s - 1], f[s], deep=s >= 3, res_in=f[s - 1] if residual else 0) for s in range(1, 5)]
        )
        self.enc_res = nn.ModuleList([res(f[s - 1], f[s], residual) for s in range(1, 5)])
        # decoder j = 1..4 (index j - 1): D_1 at the bottleneck resolution, then one level up per stage
        dec_out = [f[3], f[2], f[1], f[0]]
        cat = skip_fusion == "concat" and self.skips
        dec_in = [f[4]] + [f[4 - j] + dec_out[j - 1] if cat else dec_out[j - 1] for j in range(1, 4)]
        res_in = [f[4]] + dec_out[:3]
        # decoder 1 refines Y_5; its residual is Y_5 itself (our choice), kept with `residual`
        dec_res_on = [residual] + [self.dec_residual] * 3
        self.dec = nn.ModuleList(
            [drb(dec_in[j], dec_out[j], deep=j < 2, res_in=res_in[j] if dec_res_on[j] else 0) for j in range(4)]
        )
        self.dec_res = nn.ModuleList([res(res_in[j], dec_out[j], dec_res_on[j]) for j in range(4)])
        self.dec5 = _plain_block(2 * f[0] if cat else f[0], f[0], norm, act)
        self.dec5_res = res(dec_out[3], f[0], self.dec_residual, block=False)
        self.head = nn.Conv2d(f[0], out_channels, 1)

    def _merge(self, skip: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        if not self.skips:
            return up
        return torch.cat([skip, up], dim=1) if self.skip_fusion == "concat" else skip + up

    def _stage(self, block: nn.Module, path: nn.Module, x: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        """One rotation-block stage: the block on ``x`` with its residual from ``source`` (per map or after)."""
        if getattr(block, "res", None) is not None:
            return block(x, source)
        y = block(x)
        return y if isinstance(path, nn.Identity) else y + path(source)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, out_channels, H, W)`` for ``x`` of shape ``(B, in_channels, H, W)``, H, W divisible by 16."""
        skips = [self.enc1(x)]
        for block, path in zip(self.enc, self.enc_res, strict=True):
            p = F.max_pool2d(skips[-1], 2)
            skips.append(self._stage(block, path, p, p))
        d = self._stage(self.dec[0], self.dec_res[0], skips[4], skips[4])
        for j in range(1, 4):
            u = F.interpolate(d, scale_factor=2, mode="bilinear", align_corners=False)
            d = self._stage(self.dec[j], self.dec_res[j], self._merge(skips[4 - j], u), u)
        u = F.interpolate(d, scale_factor=2, mode="bilinear", align_corners=False)
        d = self._stage(self.dec5, self.dec5_res, self._merge(skips[0], u), u)
        return self.head(d)


_SMALL = (1, 32, 32)


@register_net(input_shape=_SMALL)
def drnet(**kwargs) -> DRNet:
    """DR-Net as in the paper (CHAOS defaults: 1 input channel, 5 classes)."""
    return DRNet(**kwargs)


# Rotation ablations. A rotated direction with its own weights is an unrotated one with rotated kernels, so the
# paper's single-angle rows DR-Net(0/90/180/270) are one model, and "rotation off" only differs from DR-Net when
# the directions share weights. See docs/nets/drnet.md ("Which ablations are distinct models").
@register_net(input_shape=_SMALL)
def drnet_norot(**kwargs) -> DRNet:
    """Strategy 5, rotation off: 4 unrotated directions per group with their own weights (untied)."""
    return DRNet(**{"angles": (0, 0, 0, 0), "share_weights": False, **kwargs})


@register_net(input_shape=_SMALL)
def drnet_rot0(**kwargs) -> DRNet:
    """Table 6 DR-Net(0), one direction per group; DR-Net(90/180/270) are this model with rotated kernels."""
    return DRNet(**{"angles": (0,), **kwargs})


@register_net(input_shape=_SMALL)
def drnet_rot0_90(**kwargs) -> DRNet:
    """Angle question as a distinct model: one shared kernel per group seen at 0 and 90 degrees (= 0 and 270)."""
    return DRNet(**{"angles": (0, 90), **kwargs})


@register_net(input_shape=_SMALL)
def drnet_rot0_180(**kwargs) -> DRNet:
    """Angle question as a distinct model: one shared kernel per group seen at 0 and 180 degrees."""
    return DRNet(**{"angles": (0, 180), **kwargs})


@register_net(input_shape=_SMALL)
def drnet_pfm(**kwargs) -> DRNet:
    """PFM only: strategy 1 and Table 6 DR-Net(a) (two added PFM branches, strategy 1's wording, are one PFM)."""
    return DRNet(**{"branches": ("pfm",), **kwargs})


@register_net(input_shape=_SMALL)
def drnet_dpfm(**kwargs) -> DRNet:
    """DPFM only, strategy 2: PFM replaced by a second DPFM branch so the addition fusion is kept."""
    return DRNet(**{"branches": ("dpfm", "dpfm"), **kwargs})


@register_net(input_shape=_SMALL)
def drnet_b(**kwargs) -> DRNet:
    """Table 6 DR-Net(b): dilated convolution only, one DPFM branch (differs from strategy 2 where DPFM is 2 deep)."""
    return DRNet(**{"branches": ("dpfm",), **kwargs})


@register_net(input_shape=_SMALL)
def drnet_s3(**kwargs) -> DRNet:
    """Strategy 3: the decoder gets only the previous decoder stage (no encoder skip features)."""
    return DRNet(**{"decoder_inputs": ("previous",), **kwargs})


@register_net(input_shape=_SMALL)
def drnet_s4(**kwargs) -> DRNet:
    """Strategy 4: the decoder gets only the matching encoder features (no residual from the previous stage)."""
    return DRNet(**{"decoder_inputs": ("encoder",), **kwargs})


@register_net(input_shape=_SMALL)
def drnet_nores(**kwargs) -> DRNet:
    """DR-Net without the encoder and decoder 1x1 residual paths."""
    return DRNet(**{"residual": False, **kwargs})


@register_net(input_shape=_SMALL)
def unet_pfm(**kwargs) -> UNet2D:
    """Plain 2D U-Net (widths 64-1024) whose convs, all but the first, are PFM blocks (paper, Table 5)."""
    return UNet2D(**{"in_channels": 1, "out_channels": 5, "block": "pfm", **kwargs})
