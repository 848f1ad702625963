"""Dual-rotation blocks of DR-Net: partial feature maps (PFM) and dilated partial feature maps (DPFM).

Reference: X. You, Y. Zhu, ... "DR-Net: dual-rotation network with feature map enhancement for medical image
segmentation", Complex & Intelligent Systems, 2022.

Inner rotation: the input channels are split into ``groups`` equal parts; every part is rotated by every angle of
``angles`` (``torch.rot90`` over the last two axes ``(H, W)``), convolved by the part's convolution (one kernel
size per group for PFM, one dilation per group for DPFM), and rotated back, so non-square inputs work. By default
the directions of a group share its weights (the paper: "even with the same kernel, different directions give
different semantics"); ``share_weights=False`` gives every direction its own. Each (group, direction) pair yields
one *direction map* of ``out_channels // 8`` channels (the paper's parameter formula maps ``C_in / 4`` to
``C_out / 8`` channels per group conv). The PFM and DPFM maps of the same group and direction are added and go through
norm + act (``map_norm_act``); then, when the block owns the residual (``residual_channels > 0``, the paper's Fig. 4),
a 1x1 conv of the matching group of the residual input is added, so the residual is a path around a nonlinearity;
the outer fusion turns the 16 maps (4 groups x 4 angles) into the block output.

Rotating the input of a conv and rotating its output back is the conv with a rotated kernel. So a direction whose
weights are its own is a reparametrisation of an unrotated one: rotation only constrains the model when the
directions share weights. See ``docs/nets/drnet.md`` for what that means for the paper's ablations.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.layers.utils import get_act_layer, get_norm_layer
from torch import nn

from segzoo.nets.blocks.conv import conv_norm_act

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
        copies: independent copies of the stack run side by side as one grouped conv (one per direction when the
            directions do not share weights). The input is then ``copies`` inputs concatenated along channels.
        bias: bias of the last conv of the stack (off when a norm follows it); the earlier convs always have one.

    Shapes:
        ``(B, copies * in_channels, H, W)`` -> ``(B, copies * out_channels, H, W)`` ('same' padding).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        dilation: int = 1,
        depth: int = 1,
        act: str | tuple = ("relu", {"inplace": True}),
        copies: int = 1,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd for 'same' padding, got {kernel_size}")
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        if copies < 1:
            raise ValueError(f"copies must be >= 1, got {copies}")
        self.copies = copies
        pad = dilation * (kernel_size - 1) // 2
        layers: list[nn.Module] = []
        for i in range(depth):
            if i > 0:
                layers.append(get_act_layer(act))
            cin = in_channels if i == 0 else out_channels
            layers.append(
                nn.Conv2d(
                    copies * cin,
                    copies * out_channels,
                    kernel_size,
                    padding=pad,
                    dilation=dilation,
                    groups=copies,
                    bias=bias or i < depth - 1,
                )
            )
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, copies: Sequence[int] | None = None) -> torch.Tensor:
        """Run all copies, or only the copies listed in ``copies`` (their inputs concatenated in that order)."""
        if copies is None or list(copies) == list(range(self.copies)):
            return self.conv(x)
        n = len(copies)
        for layer in self.conv:
            if not isinstance(layer, nn.Conv2d):
                x = layer(x)
                continue
            weight = layer.weight.unflatten(0, (self.copies, -1))[list(copies)].flatten(0, 1)
            bias = None if layer.bias is None else layer.bias.unflatten(0, (self.copies, -1))[list(copies)].flatten()
            x = F.conv2d(x, weight, bias, padding=layer.padding, dilation=layer.dilation, groups=n)
        return x


class DualRotationBlock(nn.Module):
    """DR-Net's dual-rotation block: multi-direction, multi-scale partial convs (PFM and/or DPFM) plus fusion.

    Args:
        in_channels: input channels, divisible by ``groups``.
        out_channels: output channels, divisible by ``map_ratio``.
        kernel_size: PFM kernel size per group (the paper: 1, 3, 5, 7).
        dilations: DPFM dilation per group (3x3 kernels; the paper: 1, 2, 3, 4).
        dpfm_depth: stacked dilated convs per DPFM group (the paper: 1 in shallow blocks, 2 in the deep ones).
        angles: rotation angles in degrees (multiples of 90); each group is seen in every direction. A single
            angle gives a single direction per group.
        branches: kinds of the branches whose direction maps are added, each ``"pfm"`` or ``"dpfm"``. DR-Net:
            ``("pfm", "dpfm")``; ``("dpfm", "dpfm")`` is the paper's DPFM-only strategy 2 (two DPFM branches
            added); ``("pfm",)`` the bare PFM block (``("pfm", "pfm")`` is the same model: two added single convs
            of equal shape are one conv).
        share_weights: the directions of a group share its convolutions (default, the paper's wording). With
            ``False`` every (group, direction) has its own; rotation is then a reparametrisation (rotated kernels).
        residual_channels: when > 0, ``forward(x, res)`` takes a residual input of that many channels (divisible by
            ``groups``) and adds a 1x1 conv of its group ``g`` to every direction map of group ``g`` before the
            outer fusion (the paper's Fig. 4: the residual is added to each of the 16 maps, then the maps are
            fused). Its weights are shared by the directions when ``share_weights``.
        map_norm_act: each direction map (the sum of its branches) goes through ``norm`` + ``act`` before the
            residual is added and the maps are fused (default): the residual then adds a path around a
            nonlinearity, the reading that gives Fig. 4's residual a meaning. The norm's statistics and affine
            weights are shared by the directions when their convs are (so the rotation properties hold), and
            the last conv of each branch has no bias (the norm follows). ``False`` (segzoo before issue 25): the
            maps are linear in ``x`` up to the fusion, so a residual of ``x`` itself folds into the branch convs.
        fusion: outer fusion of the ``groups * len(angles)`` direction maps: ``"concat"`` (concatenate all maps,
            1x1 conv, norm, act; default) or ``"sum"`` (sum each group's maps over the directions, then
            concatenate the groups, 1x1 conv, norm, act; with the full 4-angle set and shared weights this makes
            the block exactly rotation-equivariant).
        map_ratio: each direction map has ``out_channels // map_ratio`` channels (the paper's formula: 8).
        norm: MONAI norm spec after the fusion conv.
        act: MONAI activation spec after the fusion (and between stacked DPFM convs).

    Shapes:
        ``x`` ``(B, in_channels, H, W)``, ``res`` ``(B, residual_channels, H, W)`` -> ``(B, out_channels, H, W)``;
        ``H != W`` is fine.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Sequence[int] = (1, 3, 5, 7),
        dilations: Sequence[int] = (1, 2, 3, 4),
        dpfm_depth: int = 1,
        angles: Sequence[int] = (0, 90, 180, 270),
        branches: Sequence[str] = ("pfm", "dpfm"),
        share_weights: bool = True,
        residual_channels: int = 0,
        map_norm_act: bool = True,
        fusion: str = "concat",
        map_ratio: int = 8,
        norm: str | tuple = "batch",
        act: str | tuple = ("relu", {"inplace": True}),
    ) -> None:
        super().__init__()
        groups = len(kernel_size)
        if len(dilations) != groups:
            raise ValueError(
                f"kernel_size {tuple(kernel_size)} and dilations {tuple(dilations)} must have one entry per group"
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
        if residual_channels < 0 or residual_channels % groups:
            raise ValueError(
                f"residual_channels={residual_channels} must be >= 0 and divisible by the number of groups ({groups})"
            )
        self.in_channels, self.out_channels = in_channels, out_channels
        self.groups = groups
        self.angles = tuple(int(a) for a in angles)
        self.branch_kinds = tuple(branches)
        self.share_weights = bool(share_weights)
        self.residual_channels = int(residual_channels)
        self.map_norm_act = bool(map_norm_act)
        self.fusion = fusion
        cin, cmap = in_channels // groups, out_channels // map_ratio
        copies = 1 if self.share_weights else len(self.angles)
        self.branches = nn.ModuleList()
        bias = not self.map_norm_act
        for kind in self.branch_kinds:
            if kind == "pfm":
                convs = [PartialConv(cin, cmap, k, act=act, copies=copies, bias=bias) for k in kernel_size]
            else:
                convs = [
                    PartialConv(cin, cmap, 3, dilation=d, depth=dpfm_depth, act=act, copies=copies, bias=bias)
                    for d in dilations
                ]
            self.branches.append(nn.ModuleList(convs))
        # shared convs: one norm channel per (group, channel), the directions stacked along the batch; own convs:
        # one per (group, direction, channel)
        self.map_norm = (
            nn.Sequential(
                *[] if norm is None else [get_norm_layer(norm, spatial_dims=2, channels=groups * copies * cmap)],
                get_act_layer(act),
            )
            if self.map_norm_act
            else None
        )
        # per-map residual: one 1x1 conv per group (and per direction when unshared); group g sees res group g
        self.res = (
            nn.Conv2d(self.residual_channels, groups * copies * cmap, 1, groups=groups)
            if self.residual_channels
            else None
        )
        n_maps = groups * (len(self.angles) if fusion == "concat" else 1)
        self.fuse = nn.Sequential(*conv_norm_act(n_maps * cmap, out_channels, 1, norm=norm, act=act))

    def direction_maps(self, x: torch.Tensor, res: torch.Tensor | None = None) -> torch.Tensor:
        """The direction maps (summed over branches, norm + act, plus the per-map residual) before the outer fusion.

        Args:
            x: ``(B, in_channels, H, W)``.
            res: ``(B, residual_channels, H, W)``, required when the block owns a residual, else ignored.

        Returns:
            ``(B, groups, len(angles), out_channels // map_ratio, H, W)``; entry ``[:, g, a]`` is
            ``act(norm(rotate(sum_b conv_{b,g,a}(rotate(x_g, angle_a)), -angle_a))) [+ conv1x1_{g,a}(res_g)]``
            (without ``norm`` and ``act`` when ``map_norm_act`` is off).
        """
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"DualRotationBlock expects (B, {self.in_channels}, H, W) input, got shape {tuple(x.shape)}"
            )
        parts = torch.chunk(x, self.groups, dim=1)
        # angles that keep (H, W) and angles that swap them are batched separately: one conv call per parity
        # (no shortcut for square inputs: a traced or exported graph must not depend on the example's shape)
        parities = [[i for i, a in enumerate(self.angles) if (a // 90) % 2 == p] for p in (0, 1)]
        # shared weights: directions stacked along the batch; own weights: along channels into a grouped conv
        dim = 0 if self.share_weights else 1
        per_group = []
        for g, xg in enumerate(parts):
            out: list[torch.Tensor] = [xg] * len(self.angles)
            for idx in parities:
                if not idx:
                    continue
                xr = torch.cat([rotate(xg, self.angles[i]) for i in idx], dim=dim).contiguous()
                copies = None if self.share_weights else idx
                y = sum(branch[g](xr, copies) for branch in self.branches)
                for i, yi in zip(idx, torch.chunk(y, len(idx), dim=dim), strict=True):
                    out[i] = rotate(yi, -self.angles[i])
            per_group.append(torch.stack(out, dim=1))
        maps = torch.stack(per_group, dim=1)
        if self.map_norm is not None:
            b, g, a, c, h, w = maps.shape
            if self.share_weights:  # (B * A, G * C, H, W): the directions share the norm as they share the convs
                flat = maps.transpose(1, 2).reshape(b * a, g * c, h, w)
                maps = self.map_norm(flat).reshape(b, a, g, c, h, w).transpose(1, 2)
            else:
                maps = self.map_norm(maps.reshape(b, g * a * c, h, w)).reshape(b, g, a, c, h, w)
        if self.res is not None:
            if res is None or res.ndim != 4 or res.shape[1] != self.residual_channels or res.shape[2:] != x.shape[2:]:
                got = None if res is None else tuple(res.shape)
                raise ValueError(
                    f"DualRotationBlock with a per-map residual expects res of shape (B, {self.residual_channels}, "
                    f"{x.shape[2]}, {x.shape[3]}), got {got}"
                )
            # a 1x1 conv commutes with rotation: rotating its input and output back changes nothing
            r = self.res(res).unflatten(1, (self.groups, -1, maps.shape[3]))
            maps = maps + r  # (B, G, 1 or A, C, H, W) broadcasts over the directions when shared
        return maps

    def forward(self, x: torch.Tensor, res: torch.Tensor | None = None) -> torch.Tensor:
        maps = self.direction_maps(x, res)
        if self.fusion == "sum":
            maps = maps.sum(dim=2)
        return self.fuse(maps.flatten(1, -3))
