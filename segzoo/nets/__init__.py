"""segzoo.nets: pure ``torch.nn`` segmentation nets, their registry and their pretrained format (no Lightning, no
data)."""

from segzoo.nets._registry import list_nets, net_example_shape, register_net
from segzoo.nets.base import SegNet
from segzoo.nets.baselines import CENet, DenseASPP, MSDual, UNet2D
from segzoo.nets.drnet import DRNet
from segzoo.nets.mss_unet import MSSUNet
from segzoo.nets.pretrained import build_net, create_net, from_pretrained, push_to_hub, save_pretrained

# modules below register their variants on import
from segzoo.nets import mss_unet as _mss_unet  # noqa: F401,E402  isort: skip
from segzoo.nets import drnet as _drnet  # noqa: F401,E402  isort: skip
from segzoo.nets import baselines as _baselines  # noqa: F401,E402  isort: skip

__all__ = [
    "CENet",
    "DRNet",
    "DenseASPP",
    "MSDual",
    "UNet2D",
    "MSSUNet",
    "SegNet",
    "build_net",
    "create_net",
    "from_pretrained",
    "list_nets",
    "net_example_shape",
    "push_to_hub",
    "register_net",
    "save_pretrained",
]
