"""Inference: whole-case sliding window with mirroring TTA, and KiTS19 connected-component post-processing."""

from segzoo.inference.postprocess import KiTSPostprocess
from segzoo.inference.sliding_window import SlidingWindowTTAInferer, flip_combinations

__all__ = ["KiTSPostprocess", "SlidingWindowTTAInferer", "flip_combinations"]
