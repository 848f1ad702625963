"""Reusable building blocks of segzoo nets (pure ``torch.nn``)."""

from segzoo.nets.blocks.conv import conv_norm_act
from segzoo.nets.blocks.rotation import DualRotationBlock, PartialConv, rotate

__all__ = ["DualRotationBlock", "PartialConv", "conv_norm_act", "rotate"]
