"""Multi-scale supervised 3D U-Net.

Reference: W. Zhao, D. Jiang, J. Peña Queralta, T. Westerlund, "Multi Scale Supervised 3D U-Net for Kidney and
Tumor Segmentation", KiTS19 challenge, 2019 (arXiv:2004.08108).

A plain U-Net (two conv-norm-act per stage, strided-conv downsampling, transposed-conv upsampling) built from
MONAI's ``dynunet_block`` layers, with a 1x1x1 segmentation head at every decoder level. Unlike MONAI's
``DynUNet``, the deep-supervision outputs are returned at their native scales (nnU-Net style) instead of being
upsampled to full resolution and stacked, which saves memory and time; the loss downsamples the target instead.

Axis convention: tensors are ``(B, C, *spatial)``; for KiTS19 the spatial axes are ``(slices, H, W)`` exactly as the
arrays lie in the NIfTI files, so anisotropic kernels/strides are written with the slice axis first.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks.dynunet_block import UnetBasicBlock, UnetOutBlock, UnetUpBlock
from torch import nn

from segzoo.nets._registry import register_net
from segzoo.nets.base import SegNet

IntOrSeq = int | Sequence[int]


def default_features(levels: int, base_features: int = 30, max_features: int = 320) -> tuple[int, ...]:
    """Widths doubling from ``base_features`` per level, capped at ``max_features`` (the paper: 30 ... 320)."""
    return tuple(min(base_features * 2**i, max_features) for i in range(levels))


class MSSUNet(SegNet):
    """Plain U-Net with multi-scale (deep) supervision heads at every decoder level.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: number of classes (logits per class).
        kernel_size: per-level convolution kernel sizes (an int or one size per spatial dim); its length is the
            number of resolution levels.
        strides: per-level strides of the first convolution of each encoder stage; ``strides[0]`` is usually 1.
            The decoder's transposed convolutions use the same strides as kernel size and stride.
        features: per-level widths; default ``default_features(levels, base_features, max_features)``.
        base_features: width of the first level when ``features`` is not given (the paper: 30).
        max_features: cap on the width (the paper, following nnU-Net: 320).
        norm: MONAI norm spec, e.g. ``"instance"`` or ``("instance", {"affine": True})``.
        act: MONAI activation spec (default leaky ReLU 0.01 as in nnU-Net).
        dropout: dropout probability inside the conv blocks (the paper uses none).
        deep_supervision: if True, ``forward`` in training mode returns one logit tensor per decoder level,
            full resolution first, each at its own scale. In eval mode (and when False) it returns the
            full-resolution logits only. The heads are always built, so checkpoints load either way.
        num_ds_heads: how many decoder levels are supervised in training, counted from full resolution;
            default all ``levels - 1``.

    Shapes:
        input ``(B, in_channels, *spatial)`` with every spatial size divisible by the product of the strides
        along that axis; output ``(B, out_channels, *spatial)`` (eval) or a list of ``(B, out_channels, *spatial_i)``.
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        out_channels: int = 3,
        kernel_size: Sequence[IntOrSeq] = (3, 3, 3, 3, 3),
        strides: Sequence[IntOrSeq] = (1, 2, 2, 2, 2),
        features: Sequence[int] | None = None,
        base_features: int = 30,
        max_features: int = 320,
        norm: str | tuple = ("instance", {"affine": True}),
        act: str | tuple = ("leakyrelu", {"negative_slope": 0.01, "inplace": True}),
        dropout: float | None = None,
        deep_supervision: bool = True,
        num_ds_heads: int | None = None,
    ) -> None:
        super().__init__()
        levels = len(strides)
        if len(kernel_size) != levels:
            raise ValueError(f"kernel_size has {len(kernel_size)} entries but strides has {levels}: one per level")
        if levels < 2:
            raise ValueError("MSSUNet needs at least 2 resolution levels")
        features = tuple(features) if features is not None else default_features(levels, base_features, max_features)
        if len(features) != levels:
            raise ValueError(f"features has {len(features)} entries but there are {levels} levels")
        self.spatial_dims = spatial_dims
        self.strides = [self._expand(s, spatial_dims) for s in strides]
        self.features = features
        self.deep_supervision = deep_supervision
        self.num_ds_heads = levels - 1 if num_ds_heads is None else max(1, min(num_ds_heads, levels - 1))

        self.encoder = nn.ModuleList()
        prev = in_channels
        for k, s, f in zip(kernel_size, strides, features):
            self.encoder.append(
                UnetBasicBlock(
                    spatial_dims,
                    prev,
                    f,
                    kernel_size=k,
                    stride=s,
                    norm_name=norm,
                    act_name=act,
                    dropout=dropout,
                )
            )
            prev = f
        # decoder[i] brings level i+1 up to level i; listed from the deepest level upwards
        self.decoder = nn.ModuleList()
        self.heads = nn.ModuleList()
        for i in reversed(range(levels - 1)):
            self.decoder.append(
                UnetUpBlock(
                    spatial_dims,
                    features[i + 1],
                    features[i],
                    kernel_size=kernel_size[i],
                    stride=1,
                    upsample_kernel_size=strides[i + 1],
                    norm_name=norm,
                    act_name=act,
                    dropout=dropout,
                )
            )
        # heads[i] predicts at level i (0 = full resolution)
        for i in range(levels - 1):
            self.heads.append(UnetOutBlock(spatial_dims, features[i], out_channels))

    @staticmethod
    def _expand(s: IntOrSeq, n: int) -> tuple[int, ...]:
        return (s,) * n if isinstance(s, int) else tuple(s)

    @property
    def divisor(self) -> tuple[int, ...]:
        """Per-axis factor every input size must be divisible by."""
        out = [1] * self.spatial_dims
        for s in self.strides:
            out = [a * b for a, b in zip(out, s)]
        return tuple(out)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
        x = skips.pop()
        supervise = self.deep_supervision and self.training
        levels_out = len(self.decoder)
        outputs: list[torch.Tensor] = []
        for j, up in enumerate(self.decoder):
            x = up(x, skips.pop())
            level = levels_out - 1 - j
            if supervise and level < self.num_ds_heads:
                outputs.append(self.heads[level](x))
        if not supervise:
            return self.heads[0](x)
        return outputs[::-1]


KITS19_KERNELS = ((1, 3, 3), (1, 3, 3), 3, 3, 3)
KITS19_STRIDES = (1, (1, 2, 2), 2, 2, 2)


@register_net(input_shape=(1, 16, 32, 32))
def mss_unet3d(**kwargs) -> MSSUNet:
    """The paper's net for KiTS19: 5 levels, widths 30-320, anisotropic first levels (slice axis first)."""
    args = dict(spatial_dims=3, in_channels=1, out_channels=3, kernel_size=KITS19_KERNELS, strides=KITS19_STRIDES)
    return MSSUNet(**{**args, **kwargs})


@register_net(input_shape=(1, 16, 32, 32))
def mss_unet3d_small(**kwargs) -> MSSUNet:
    """A laptop-sized variant (4 levels, widths 8-64) used by the demo and the tests."""
    args = dict(
        spatial_dims=3,
        in_channels=1,
        out_channels=3,
        kernel_size=((1, 3, 3), 3, 3, 3),
        strides=(1, (1, 2, 2), 2, 2),
        base_features=8,
        max_features=64,
    )
    return MSSUNet(**{**args, **kwargs})


@register_net(input_shape=(1, 32, 32))
def mss_unet2d(**kwargs) -> MSSUNet:
    """The same design in 2D (5 levels, widths 32-512), a deeply supervised 2D U-Net."""
    args = dict(
        spatial_dims=2,
        in_channels=1,
        out_channels=2,
        kernel_size=(3,) * 5,
        strides=(1, 2, 2, 2, 2),
        base_features=32,
        max_features=512,
    )
    return MSSUNet(**{**args, **kwargs})
