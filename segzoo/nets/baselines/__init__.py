"""2D baseline nets of the DR-Net paper's comparison: U-Net, CE-Net, DenseASPP, MS-Dual (registered on import)."""

from segzoo.nets.baselines.cenet import CENet
from segzoo.nets.baselines.denseaspp import DenseASPP
from segzoo.nets.baselines.msdual import MSDual
from segzoo.nets.baselines.unet import UNet2D

__all__ = ["CENet", "DenseASPP", "MSDual", "UNet2D"]
