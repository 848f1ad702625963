"""Base class for every segzoo net: records constructor arguments so a net can be rebuilt from a file.

Follows segmentation_models_pytorch's hub mixin: ``save_pretrained(dir)`` writes ``config.json`` (class path,
registry name, constructor arguments) and ``model.safetensors``; :func:`from_pretrained` rebuilds the net. Reading and
writing go through :mod:`segzoo.checkpoint` (JSON + safetensors, classes by allow-list, nothing from a file runs).
"""

from __future__ import annotations

import functools
import inspect
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    raise TypeError(f"constructor argument of type {type(value).__name__} cannot be saved in config.json")


class SegNet(nn.Module):
    """A segmentation net whose constructor arguments are recorded in ``self.init_config``.

    Subclasses only write an ordinary ``__init__``; the arguments of the outermost constructor call are kept.
    Attributes:
        deep_supervision: True when ``forward`` returns a list of logits in training mode.
        registry_name: the registry name the net was created under, if any.
    """

    deep_supervision: bool = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None:
            return
        signature = inspect.signature(init)

        @functools.wraps(init)
        def __init__(self, *args, **kw):
            if "_init_config" not in self.__dict__:
                bound = signature.bind(self, *args, **kw)
                bound.apply_defaults()
                arguments = dict(bound.arguments)
                arguments.pop("self")
                object.__setattr__(self, "_init_config", None)
                init(self, *args, **kw)
                object.__setattr__(
                    self,
                    "_init_config",
                    {
                        "class_path": f"{type(self).__module__}.{type(self).__qualname__}",
                        "init_args": arguments,
                    },
                )
            else:
                init(self, *args, **kw)

        cls.__init__ = __init__

    registry_name: str | None = None

    @property
    def init_config(self) -> dict[str, Any]:
        """``{"class_path": ..., "init_args": {...}}`` of this net, JSON-serialisable."""
        cfg = self.__dict__["_init_config"]
        return {"class_path": cfg["class_path"], "init_args": _jsonable(cfg["init_args"])}

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into ``directory`` (atomically per file; JSON and
        safetensors only, see :func:`segzoo.checkpoint.save_pretrained`)."""
        from segzoo.checkpoint import save_pretrained

        return save_pretrained(self, directory)


def build_net(config: dict[str, Any]) -> nn.Module:
    """Rebuild a net from ``{"class_path": ..., "init_args": {...}}`` (as in ``SegNet.init_config``).

    Only classes of registered nets are built (nothing named in ``config`` is imported); anything else raises
    :class:`segzoo.checkpoint.CheckpointError`. See :func:`segzoo.checkpoint.build_net`.
    """
    from segzoo.checkpoint import build_net as _build_net

    return _build_net(config)


def from_pretrained(
    directory: str | os.PathLike, map_location: str | torch.device = "cpu", trust: bool = False
) -> nn.Module:
    """Rebuild the net of a pretrained folder (``save_pretrained``, ``segzoo export --format pretrained``) or of a
    ``segzoo fit`` checkpoint file, in eval mode, without running code from it (:func:`segzoo.checkpoint.load_checkpoint`).

    Args:
        directory: the pretrained folder, or a ``.ckpt`` file.
        map_location: device to put the net on.
        trust: unpickle a checkpoint file that weights-only loading refuses (runs any code it holds; warns).

    Raises:
        segzoo.checkpoint.CheckpointError: one line naming the file and why it was refused or unreadable.
    """
    from segzoo.checkpoint import load_checkpoint

    return load_checkpoint(directory, trust=trust).net.to(map_location)
