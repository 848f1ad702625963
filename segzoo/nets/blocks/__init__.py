"""Reusable building blocks of segzoo nets (pure ``torch.nn``)."""

from segzoo.nets.blocks.rotation import DualRotationBlock, PartialConv, rotate

__all__ = ["DualRotationBlock", "PartialConv", "rotate"]
