"""Conv-norm-act from MONAI's layer factories: the one place segzoo's 2D nets build a convolution with its norm and
activation.

MONAI's ``Convolution`` block nests its layers (``conv``, ``adn.N``, ``adn.A``), which would rename every state-dict
key of the nets trained before it, so checkpoints would no longer load. :func:`conv_norm_act` builds the same layers
with the factories ``Convolution`` itself uses (``Conv``, ``get_norm_layer``, ``get_act_layer``, ``same_padding``,
``stride_minus_kernel_padding``) and returns them as a flat list, which a net splices into its own ``nn.Sequential``
(or unpacks into named attributes): one helper, unchanged keys and parameter counts.
"""

from __future__ import annotations

from monai.networks.layers.convutils import same_padding, stride_minus_kernel_padding
from monai.networks.layers.factories import Conv
from monai.networks.layers.utils import get_act_layer, get_norm_layer
from torch import nn

__all__ = ["conv_norm_act"]


def conv_norm_act(
    in_channels: int,
    out_channels: int,
    kernel_size: int = 3,
    *,
    spatial_dims: int = 2,
    stride: int = 1,
    dilation: int = 1,
    norm: str | tuple | None = "batch",
    act: str | tuple | None = ("relu", {"inplace": True}),
    bias: bool = False,
    is_transposed: bool = False,
    preactivation: bool = False,
) -> list[nn.Module]:
    """``[conv, norm, act]`` (``preactivation``: ``[norm, act, conv]``), 'same' padding as MONAI's ``Convolution``.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: odd kernel size.
        spatial_dims: 2 or 3.
        stride: convolution stride; a transposed conv upsamples by it (``output_padding = stride - 1``).
        dilation: convolution dilation.
        norm: MONAI norm spec, or ``None`` for none. It normalises the conv output (``in_channels`` with
            ``preactivation``).
        act: MONAI activation spec, or ``None`` for none.
        bias: conv bias (off by default: a norm follows).
        is_transposed: a transposed convolution.
        preactivation: norm and act before the conv (DenseNet's BN-ReLU-conv).

    Returns:
        The layers in order, ``None`` entries left out.
    """
    padding = same_padding(kernel_size, dilation)
    conv_type = Conv[Conv.CONVTRANS if is_transposed else Conv.CONV, spatial_dims]
    extra = {"output_padding": stride_minus_kernel_padding(1, stride)} if is_transposed else {}
    conv = conv_type(
        in_channels, out_channels, kernel_size, stride=stride, padding=padding, dilation=dilation, bias=bias, **extra
    )
    norm_channels = in_channels if preactivation else out_channels
    adn = [
        get_norm_layer(norm, spatial_dims=spatial_dims, channels=norm_channels) if norm is not None else None,
        get_act_layer(act) if act is not None else None,
    ]
    layers = [*adn, conv] if preactivation else [conv, *adn]
    return [layer for layer in layers if layer is not None]
