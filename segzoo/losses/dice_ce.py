"""MONAI's Dice + CE with class weights given as a list, so that a YAML recipe can set them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.losses import DiceCELoss


class ClassWeightedDiceCELoss(DiceCELoss):
    """``monai.losses.DiceCELoss`` whose ``weight`` is a list of floats, one per output channel.

    MONAI types ``weight`` as a tensor, which a config file cannot spell; everything else is MONAI's (the weights
    scale the cross-entropy of each class and, as in MONAI, the per-class Dice terms).
    """

    def __init__(self, weight: Sequence[float] | None = None, **kwargs: Any) -> None:
        if weight is not None:
            values = [float(w) for w in weight]
            if any(w < 0 for w in values):
                raise ValueError(f"ClassWeightedDiceCELoss: class weights must be >= 0, got {values}")
            kwargs["weight"] = torch.tensor(values, dtype=torch.float32)
        super().__init__(**kwargs)
