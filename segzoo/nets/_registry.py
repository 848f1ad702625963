"""Net registry in the style of timm: named variants are small functions that only fill in arguments.

A variant is registered with :func:`register_net`; :func:`segzoo.nets.create_net` builds it with keyword overrides using
MONAI's argument names (``spatial_dims``, ``in_channels``, ``out_channels``, ``features`` ...).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable

from torch import nn

_NETS: dict[str, Callable[..., nn.Module]] = {}
_NET_DEFAULT_INPUT: dict[str, tuple[int, ...]] = {}


def register_net(fn: Callable[..., nn.Module] | None = None, *, input_shape: tuple[int, ...] | None = None) -> Callable:
    """Register a net factory under its function name.

    Args:
        fn: factory returning an ``nn.Module``; its ``__name__`` is the registry name.
        input_shape: the ``(C, *spatial)`` shape of a small input the net accepts, used by the registry tests
            and ``segzoo nets``; defaults to ``(in_channels, 32, 32)``.
    """

    def _register(f: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        name = f.__name__
        if name in _NETS:
            raise ValueError(f"net '{name}' is already registered")
        _NETS[name] = f
        if input_shape is not None:
            _NET_DEFAULT_INPUT[name] = tuple(input_shape)
        return f

    return _register(fn) if fn is not None else _register


def list_nets(pattern: str | None = None) -> list[str]:
    """Sorted registry names, optionally filtered by a shell-style ``pattern`` (``"drnet*"``)."""
    names = sorted(_NETS)
    return [n for n in names if pattern is None or fnmatch.fnmatch(n, pattern)]


def build_registered(name: str, **kwargs) -> nn.Module:
    """Build the registered net ``name``; ``kwargs`` override the variant's defaults (the public spelling, with
    ``pretrained=``, is :func:`segzoo.nets.create_net`)."""
    if name not in _NETS:
        close = fnmatch.filter(_NETS, f"*{name.split('_')[0]}*")
        hint = f"; similar: {', '.join(sorted(close))}" if close else ""
        raise KeyError(f"unknown net '{name}'{hint}. Registered nets: segzoo.list_nets()")
    net = _NETS[name](**kwargs)
    if hasattr(net, "registry_name"):
        net.registry_name = name
    return net


def net_example_shape(name: str) -> tuple[int, ...]:
    """A small ``(C, *spatial)`` input shape the registered net accepts (for tests and parameter listings)."""
    return _NET_DEFAULT_INPUT.get(name, ())


def net_class(name: str) -> type[nn.Module] | None:
    """The class the registered factory ``name`` builds (its return annotation), or ``None`` if it names none."""
    import typing

    try:
        cls = typing.get_type_hints(_NETS[name]).get("return")
    except Exception:  # an annotation that does not resolve names no class
        return None
    return cls if isinstance(cls, type) and issubclass(cls, nn.Module) else None


def net_classes() -> dict[str, type[nn.Module]]:
    """``{"module.QualName": class}`` of the classes the registered factories build (their return annotations).

    The allow-list :func:`segzoo.nets.pretrained.build_net` resolves a saved ``class_path`` against: a file can only name a
    class that registered code already defined, nothing is imported from the file's string. A factory without a
    return annotation naming a class contributes nothing (annotate it, as ``def drnet(**kw) -> DRNet``).
    """
    classes = (net_class(name) for name in _NETS)
    return {f"{cls.__module__}.{cls.__qualname__}": cls for cls in classes if cls is not None}
