"""segzoo: a model zoo for medical image segmentation on PyTorch, Lightning and MONAI."""

from segzoo.nets import create_net, from_pretrained, list_nets, register_net

__version__ = "0.1.0"

__all__ = ["__version__", "create_net", "from_pretrained", "list_nets", "register_net"]
