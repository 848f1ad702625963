"""Dual-rotation blocks of DR-Net: partial feature maps (PFM) and dilated partial feature maps (DPFM).

Reference: X. You, Y. Zhu, ... "DR-Net: dual-rotation network with feature map enhancement for medical image
segmentation", Complex & Intelligent Systems, 2022.

Inner rotation: the input channels are split into ``groups`` equal parts; every part is rotated by every angle of
``angles`` (``torch.rot90`` over the last two axes ``(H, W)``), convolved by the part's own convolution (one kernel
size per group for PFM, one dilation per group for DPFM; the weights are shared by the directions, as the paper
says "even with the same kernel, different directions give different semantics"), and rotated back, so non-square
inputs work. Each (group, direction) pair yields one *direction map* of ``out_channels // 8`` channels (the paper's
parameter formula maps ``C_in / 4`` to ``C_out / 8`` channels per group conv). The PFM and DPFM maps of the same
group and direction are added (16 fused maps for 4 groups x 4 angles); the outer fusion turns them into the block
output. Choices where the paper is silent are arguments; see ``docs/nets/drnet.md``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.layers.utils import get_act_layer, get_norm_layer
from torch import nn

__all__ = ["BRANCH_KINDS", "FUSIONS", "DualRotationBlock", "PartialConv", "rotate"]

BRANCH_KINDS = ("pfm", "dpfm")
FUSIONS = ("concat", "sum")


def rotate(x: torch.Tensor, angle: int) -> torch.Tensor:
    """Rotate ``x`` of shape ``(B, C, H, W)`` counter-clockwise by ``angle`` degrees (a multiple of 90)."""
    return torch.rot90(x, k=(angle // 90) % 4, dims=(-2, -1))


class PartialConv(nn.Module):
    """The convolution one group sees: a PFM conv (kernel ``k``) or a DPFM stack of 3x3 convs (dilation ``d``).

    Args:
        in_channels: channels of the group (``C_in / groups``).
        out_channels: channels of one direction map (``C_out / 8`` in the paper).
        kernel_size: odd kernel size.
        dilation: dilation of every conv of the stack.
        depth: number of stacked convs (DPFM: 1 in the shallow blocks, 2 in the deep ones); between two stacked
            convs an activation ``act`` is applied (our choice; the paper's Fig. 3 shows none explicitly).
        act: MONAI activation spec used between stacked convs.

    Shapes:
        ``(B, in_channels, H, W)`` -> ``(B, out_channels, H, W)`` ('same' padding).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        dilation: int = 1,
        depth: int = 1,
        act: str | tuple = ("relu", {"inplace": True}),
    ) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd for 'same' padding, got {kernel_size}")
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        pad = dilation * (kernel_size - 1) // 2
        layers: list[nn.Module] = []
        for i in range(depth):
            if i > 0:
                layers.append(get_act_layer(act))
            cin = in_channels if i == 0 else out_channels
            layers.append(nn.Conv2d(cin, out_channels, kernel_size, padding=pad, dilation=dilation))
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class DualRotationBlock(nn.Module):
    """DR-Net's dual-rotation block: multi-direction, multi-scale partial convs (PFM and/or DPFM) plus fusion.

    Args:
        in_channels: input channels, divisible by ``groups``.
        out_channels: output channels, divisible by ``map_ratio``.
        kernel_sizes: PFM kernel size per group (the paper: 1, 3, 5, 7).
        dilations: DPFM dilation per group (3x3 kernels; the paper: 1, 2, 3, 4).
        dpfm_depth: stacked dilated convs per DPFM group (the paper: 1 in shallow blocks, 2 in the deep ones).
        angles: rotation angles in degrees (multiples of 90); each group is seen in every direction. ``(0,)`` or
            any single angle gives a single direction per group.
        branches: kinds of the branches whose direction maps are added, each ``"pfm"`` or ``"dpfm"``. DR-Net:
            ``("pfm", "dpfm")``; the paper's PFM-only ablation keeps the addition with ``("pfm", "pfm")``
            (two independent PFM branches), DPFM-only likewise; ``("pfm",)`` is the bare PFM block.
        fusion: outer fusion of the ``groups * len(angles)`` direction maps: ``"concat"`` (concatenate all maps,
            1x1 conv, norm, act; default) or ``"sum"`` (sum each group's maps over the directions, then
            concatenate the groups, 1x1 conv, norm, act; with the full 4-angle set this makes the block exactly
            rotation-equivariant).
        map_ratio: each direction map has ``out_channels // map_ratio`` channels (the paper's formula: 8).
        norm: MONAI norm spec after the fusion conv.
        act: MONAI activation spec after the fusion (and between stacked DPFM convs).

    Shapes:
        ``(B, in_channels, H, W)`` -> ``(B, out_channels, H, W)``; ``H != W`` is fine.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_sizes: Sequence[int] = (1, 3, 5, 7),
        dilations: Sequence[int] = (1, 2, 3, 4),
        dpfm_depth: int = 1,
        angles: Sequence[int] = (0, 90, 180, 270),
        branches: Sequence[str] = ("pfm", "dpfm"),
        fusion: str = "concat",
        map_ratio: int = 8,
        norm: str | tuple = "batch",
        act: str | tuple = ("relu", {"inplace": True}),
    ) -> None:
        super().__init__()
        groups = len(kernel_sizes)
        if len(dilations) != groups:
            raise ValueError(
                f"kernel_sizes {tuple(kernel_sizes)} and dilations {tuple(dilations)} must have one entry per group"
            )
        if groups < 1 or in_channels % groups:
            raise ValueError(f"in_channels={in_channels} must be divisible by the number of groups ({groups})")
        if out_channels % map_ratio:
            raise ValueError(f"out_channels={out_channels} must be divisible by map_ratio={map_ratio}")
        if not angles or any(a % 90 for a in angles):
            raise ValueError(f"angles must be a non-empty list of multiples of 90 degrees, got {tuple(angles)}")
        if not branches or any(b not in BRANCH_KINDS for b in branches):
            raise ValueError(f"branches must be a non-empty list of {BRANCH_KINDS}, got {tuple(branches)}")
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.groups = groups
        self.angles = tuple(int(a) for a in angles)
        self.branch_kinds = tuple(branches)
        self.fusion = fusion
        cin, cmap = in_channels // groups, out_channels // map_ratio
        self.branches = nn.ModuleList()
        for kind in self.branch_kinds:
            if kind == "pfm":
                convs = [PartialConv(cin, cmap, kernel_size=k, act=act) for k in kernel_sizes]
            else:
                convs = [PartialConv(cin, cmap, 3, dilation=d, depth=dpfm_depth, act=act) for d in dilations]
            self.branches.append(nn.ModuleList(convs))
        n_maps = groups * (len(self.angles) if fusion == "concat" else 1)
        self.fuse = nn.Sequential(
            nn.Conv2d(n_maps * cmap, out_channels, 1, bias=False),
            get_norm_layer(norm, spatial_dims=2, channels=out_channels),
            get_act_layer(act),
        )

    def direction_maps(self, x: torch.Tensor) -> torch.Tensor:
        """The fused (summed over branches) direction maps before the outer fusion.

        Args:
            x: ``(B, in_channels, H, W)``.

        Returns:
            ``(B, groups, len(angles), out_channels // map_ratio, H, W)``; entry ``[:, g, a]`` is
            ``rotate(sum_b conv_{b,g}(rotate(x_g, angle_a)), -angle_a)``.
        """
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"DualRotationBlock expects (B, {self.in_channels}, H, W) input, got shape {tuple(x.shape)}"
            )
        parts = torch.chunk(x, self.groups, dim=1)
        # angles that keep (H, W) and angles that swap them are batched separately: one conv call per parity
        parities = [[i for i, a in enumerate(self.angles) if (a // 90) % 2 == p] for p in (0, 1)]
        per_group = []
        for g, xg in enumerate(parts):
            out: list[torch.Tensor] = [xg] * len(self.angles)
            for idx in parities:
                if not idx:
                    continue
                xr = torch.cat([rotate(xg, self.angles[i]) for i in idx], dim=0).contiguous()
                y = sum(branch[g](xr) for branch in self.branches)
                for i, yi in zip(idx, torch.chunk(y, len(idx), dim=0), strict=True):
                    out[i] = rotate(yi, -self.angles[i])
            per_group.append(torch.stack(out, dim=1))
        return torch.stack(per_group, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.direction_maps(x)
        if self.fusion == "sum":
            maps = maps.sum(dim=2)
        return self.fuse(maps.flatten(1, -3))
