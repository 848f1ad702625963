"""segzoo: a model zoo for medical image segmentation on PyTorch, Lightning and MONAI.

The public names load ``segzoo.nets`` (and with it torch) on first use, so ``import segzoo.utils`` and
``segzoo.__version__`` stay light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["__version__", "create_net", "from_pretrained", "list_nets", "register_net"]

if TYPE_CHECKING:
    from segzoo.nets import create_net, from_pretrained, list_nets, register_net


def __getattr__(name: str) -> Any:
    if name in ("create_net", "from_pretrained", "list_nets", "register_net"):
        import segzoo.nets

        value = getattr(segzoo.nets, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'segzoo' has no attribute {name!r}")
