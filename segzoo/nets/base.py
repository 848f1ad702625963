"""Base class for every segzoo net: records constructor arguments so a net can be rebuilt from a file.

Follows segmentation_models_pytorch's hub mixin: ``net.save_pretrained(folder)`` writes ``config.json`` (class
path, registry name, constructor arguments) and ``model.safetensors``; ``segzoo.from_pretrained`` rebuilds the net.
Both are :mod:`segzoo.nets.pretrained` (JSON + safetensors, classes by allow-list, nothing from a file runs).
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Sequence
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


def _as_tuple(value: int | Sequence[int], n: int) -> tuple[int, ...]:
    return (int(value),) * n if isinstance(value, int) else tuple(int(v) for v in value)


def _check_spatial_dims(cls: type[SegNet], spatial_dims: Any) -> None:
    supported = cls.supported_spatial_dims
    if spatial_dims is not None and spatial_dims not in supported:
        dims = " or ".join(str(d) for d in supported)
        raise ValueError(
            f"{cls.__name__} is {'/'.join(map(str, supported))}D: spatial_dims must be {dims}, got {spatial_dims}"
        )


def _check_input_hook(net: SegNet, args: tuple[Any, ...]) -> None:
    if args and torch.is_tensor(args[0]):
        net.check_input_shape(args[0])


def _check_output_hook(net: SegNet, args: tuple[Any, ...], output: Any) -> None:
    net.check_output(output, args[0] if args and torch.is_tensor(args[0]) else None)


class SegNet(nn.Module):
    """A segmentation net whose constructor arguments are recorded in ``self.init_config``.

    Subclasses only write an ordinary ``__init__`` and ``forward``; the arguments of the outermost constructor call are
    kept. The base class owns two contracts, checked around every call (forward hooks, so ``forward`` itself stays
    the net's own):

    - input (:meth:`check_input_shape`): ``(B, C, *spatial)`` with ``spatial_dims`` spatial axes, each divisible by
      the net's :attr:`divisor` (the total downsampling of that axis); one clear error instead of a shape mismatch
      deep inside a decoder (smp's ``check_input_shape``);
    - output (:meth:`check_output`): with ``deep_supervision`` in training mode a list of logits, full resolution
      first, each at its own (coarser) scale; otherwise one tensor ``(B, out_channels, *spatial)``, so sliding-window
      inference works unchanged.

    Attributes:
        spatial_dims: number of spatial axes the net takes (2 or 3).
        supported_spatial_dims: the values the constructor's ``spatial_dims`` may take (a 2D-only net: ``(2,)``);
            checked before the net's own ``__init__`` runs.
        divisor: per-axis factor every spatial input size must be divisible by (an int: the same for every axis);
            a net declares it (a class attribute or a property).
        deep_supervision: True when ``forward`` returns a list of logits in training mode.
        registry_name: the registry name the net was created under, if any.
    """

    spatial_dims: int = 2
    supported_spatial_dims: tuple[int, ...] = (2, 3)
    divisor: int | tuple[int, ...] = 1
    deep_supervision: bool = False

    def __init__(self) -> None:
        super().__init__()
        self.register_forward_pre_hook(_check_input_hook)
        self.register_forward_hook(_check_output_hook)

    def check_input_shape(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` unless ``x`` is ``(B, C, *spatial)`` with every spatial size divisible by the divisor."""
        n = int(self.spatial_dims)
        div = _as_tuple(self.divisor, n)
        axes = "".join(f", {a}" for a in ("D", "H", "W")[3 - n :])
        if x.ndim != n + 2 or any(int(s) % d for s, d in zip(x.shape[2:], div)):
            what = f"{div[0]}" if len(set(div)) == 1 else f"{div} per axis"
            raise ValueError(
                f"{type(self).__name__} expects (B, C{axes}) with every spatial size divisible by {what}, "
                f"got {tuple(x.shape)}"
            )

    def check_output(self, output: Any, x: torch.Tensor | None = None) -> None:
        """Raise ``RuntimeError`` when ``output`` breaks the deep-supervision output contract (see the class)."""
        if self.deep_supervision and self.training:
            ok = isinstance(output, list) and len(output) >= 1 and all(torch.is_tensor(o) for o in output)
            sizes = [o.shape[2:].numel() for o in output] if ok else []
            if not ok or sizes != sorted(sizes, reverse=True) or (x is not None and output[0].shape[2:] != x.shape[2:]):
                raise RuntimeError(
                    f"{type(self).__name__}: with deep_supervision in training mode forward must return a list of "
                    "logits, full resolution first, then coarser scales"
                )
        elif not torch.is_tensor(output):
            raise RuntimeError(f"{type(self).__name__}: forward must return one tensor, got {type(output).__name__}")

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
                _check_spatial_dims(type(self), arguments.get("spatial_dims"))
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

    def save_pretrained(self, folder: str | os.PathLike, **kwargs: Any) -> Path:
        """:func:`segzoo.nets.save_pretrained` of this net (``config.json``, ``model.safetensors``, model card)."""
        from segzoo.nets.pretrained import save_pretrained

        return save_pretrained(self, folder, **kwargs)
