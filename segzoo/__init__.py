"""segzoo: a model zoo for medical image segmentation on PyTorch, Lightning and MONAI.

The public functions are imported on first use (as PEP 562 module attributes), so ``import segzoo`` and
``segzoo --version`` do not import torch, MONAI or Lightning.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_LAZY = {
    "create_net": "segzoo.hub",
    "from_pretrained": "segzoo.hub",
    "push_to_hub": "segzoo.hub",
    "list_nets": "segzoo.nets",
    "register_net": "segzoo.nets",
    "list_recipes": "segzoo.recipes",
}

__all__ = [
    "__version__",
    "create_net",
    "from_pretrained",
    "list_nets",
    "list_recipes",
    "push_to_hub",
    "register_net",
]

if TYPE_CHECKING:
    from segzoo.hub import create_net, from_pretrained, push_to_hub
    from segzoo.nets import list_nets, register_net
    from segzoo.recipes import list_recipes


_SUBPACKAGES = {"checkpoint", "data", "export", "hub", "inference", "losses", "metrics", "nets", "recipes", "tasks"}


def __getattr__(name: str):
    if name in _SUBPACKAGES:  # `import segzoo; segzoo.nets.DRNet` keeps working
        return importlib.import_module(f"segzoo.{name}")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'segzoo' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY, *_SUBPACKAGES})
