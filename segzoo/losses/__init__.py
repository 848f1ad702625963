"""segzoo.losses: only what MONAI lacks (exponential logarithmic loss, label-map CE, deep-supervision wrapper).

Soft Dice + cross-entropy: use ``monai.losses.DiceCELoss(to_onehot_y=True, softmax=True)`` directly.
"""

from segzoo.losses.deep_supervision import DeepSupervisionLoss, downsample_labels
from segzoo.losses.dice_ce import ClassWeightedDiceCELoss
from segzoo.losses.explog import CELoss, ExpLogLoss
from segzoo.losses.regions import RegionLoss, region_targets

__all__ = [
    "CELoss",
    "ClassWeightedDiceCELoss",
    "DeepSupervisionLoss",
    "ExpLogLoss",
    "RegionLoss",
    "downsample_labels",
    "region_targets",
]
