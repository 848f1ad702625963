"""segzoo: a model zoo for medical image segmentation on PyTorch, Lightning and MONAI.

The public functions are imported on first use (as PEP 562 module attributes), so ``import segzoo`` and
``segzoo --version`` do not import torch, MONAI or Lightning.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_LAZY = {
    "create_net": "segzoo.nets",
    "from_pretrained": "segzoo.nets",
    "push_to_hub": "segzoo.nets",
    "save_pretrained": "segzoo.nets",
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
    "save_pretrained",
]

if TYPE_CHECKING:
    from segzoo.nets import create_net, from_pretrained, list_nets, push_to_hub, register_net, save_pretrained
    from segzoo.recipes import list_recipes


_SUBPACKAGES = {"checkpoint", "data", "export", "inference", "losses", "metrics", "nets", "recipes", "tasks"}


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
