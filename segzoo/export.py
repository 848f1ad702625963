"""Export a trained net for deployment: ONNX, TorchScript, or a ``save_pretrained`` directory.

Used by ``segzoo export``. The source is a Lightning checkpoint written by :class:`segzoo.tasks.SegmentationTask`
(``segzoo_net`` config + ``state_dict`` with a ``net.`` prefix) or a ``save_pretrained`` directory. The exported
graph is the net in eval mode with a single tensor output: logits ``(B, K, *spatial)`` for an input
``(B, C, *spatial)``; sliding-window inference, test-time augmentation and post-processing stay outside the graph
(``segzoo infer`` does them; a ``pretrained`` export keeps their settings in ``inference.json``).

Choices (not from the papers): ONNX goes through the TorchScript-based exporter (``dynamo=False``), which exports
the nets here in seconds with dynamic batch and spatial axes; ``torch.rot90`` (DR-Net's rotation blocks) has no
ONNX symbolic there, so one made of ``Slice`` (flip) and ``Transpose`` is registered. ``exporter="dynamo"`` uses
``torch.export`` instead (slower, minutes for DR-Net on a laptop). TorchScript uses ``torch.jit.trace``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from segzoo.data.io import DataError
from segzoo.nets.base import build_net, from_pretrained
from segzoo.utils import atomic_path, atomic_write_text

EXPORT_FORMATS = ("onnx", "torchscript", "pretrained")


class SingleOutput(nn.Module):
    """Wraps a net so ``forward`` returns one tensor: the full-resolution logits of a deep-supervision list."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        if isinstance(out, list | tuple):
            out = out[0]
        return out


def load_for_export(source: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the net of a checkpoint or ``save_pretrained`` directory, in eval mode, on the CPU.

    Returns:
        ``(net, extras)`` where ``extras`` holds ``"preprocessor"`` (the datamodule's preprocessing config or
        ``None``) and ``"inference"`` (``{"roi_size": ..., "postprocess": ...}`` or ``None``), the settings
        ``segzoo infer`` reads next to a pretrained directory.
    """
    source = Path(source)
    extras: dict[str, Any] = {"preprocessor": None, "inference": None}
    if source.is_dir():
        try:
            net = from_pretrained(source)
        except (FileNotFoundError, ValueError) as e:
            raise DataError(f"--ckpt {source}: {e}") from None
        for key, name in (("preprocessor", "preprocessor.json"), ("inference", "inference.json")):
            if (source / name).is_file():
                extras[key] = json.loads((source / name).read_text())
    elif source.is_file():
        try:
            ckpt = torch.load(source, map_location="cpu", weights_only=False)
        except Exception as e:
            raise DataError(f"--ckpt {source}: cannot read checkpoint ({type(e).__name__}: {e})") from None
        if not isinstance(ckpt, dict) or "segzoo_net" not in ckpt or "state_dict" not in ckpt:
            raise DataError(
                f"--ckpt {source}: not a segzoo checkpoint (expected 'segzoo_net' and 'state_dict' entries, "
                "as written by `segzoo fit`)"
            )
        net = build_net(ckpt["segzoo_net"])
        state = {k[len("net.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
        net.load_state_dict(state)
        for value in ckpt.values():
            if isinstance(value, dict) and "preprocessor" in value:
                extras["preprocessor"] = value["preprocessor"]
        roi = ckpt.get("segzoo_inferer", {}).get("roi_size")
        post = ckpt.get("segzoo_postprocess")
        if roi is not None or post is not None:
            extras["inference"] = {"roi_size": roi, "postprocess": post}
    else:
        raise DataError(f"--ckpt {source}: no such checkpoint file or save_pretrained directory")
    return net.eval(), extras


def default_shape(net: nn.Module, extras: dict[str, Any] | None = None) -> tuple[int, ...]:
    """Example input ``(1, C, *spatial)``: the registry's example shape, else the checkpoint's window size."""
    from segzoo.nets import net_example_shape

    name = getattr(net, "registry_name", None)
    shape = net_example_shape(name) if name else ()
    if shape:
        return (1, *shape)
    roi = ((extras or {}).get("inference") or {}).get("roi_size")
    in_ch = getattr(net, "init_config", {}).get("init_args", {}).get("in_channels")
    if roi and in_ch:
        return (1, int(in_ch), *map(int, roi))
    raise DataError("cannot tell the net's input shape; pass --shape B C *spatial (e.g. --shape 1 1 32 128 128)")


def _register_rot90_symbolic(opset: int) -> None:
    """ONNX symbolic for ``aten::rot90`` (constant ``k`` and ``dims``) in the TorchScript-based exporter."""
    from torch.onnx import symbolic_helper

    @symbolic_helper.parse_args("v", "i", "is")
    def rot90(g, self, k, dims):
        rank = symbolic_helper._get_tensor_rank(self)
        if rank is None:
            raise RuntimeError("rot90 export needs a tensor of known rank")
        a, b = (d % rank for d in dims)

        def flip(x, axis):
            const = lambda v: g.op("Constant", value_t=torch.tensor([v], dtype=torch.int64))  # noqa: E731
            return g.op("Slice", x, const(-1), const(-(2**63)), const(axis), const(-1))

        def transpose(x):
            perm = list(range(rank))
            perm[a], perm[b] = b, a
            return g.op("Transpose", x, perm_i=perm)

        k %= 4
        if k == 0:
            return g.op("Identity", self)
        if k == 1:  # same decomposition as ATen: flip the second axis, then swap
            return transpose(flip(self, b))
        if k == 2:
            return flip(flip(self, a), b)
        return transpose(flip(self, a))

    torch.onnx.register_custom_op_symbolic("aten::rot90", rot90, opset)


def export_onnx(
    net: nn.Module,
    out: str | os.PathLike,
    shape: Sequence[int],
    dynamic: bool = True,
    opset: int = 17,
    exporter: str = "torchscript",
) -> Path:
    """Write ``net`` (eval mode, single output) as an ONNX file, atomically.

    Args:
        net: the net; deep-supervision lists are reduced to their first (full-resolution) element.
        out: the ``.onnx`` file to write.
        shape: example input shape ``(B, C, *spatial)`` used for tracing.
        dynamic: make the batch and spatial axes of input ``image`` and output ``logits`` dynamic.
        opset: ONNX opset version.
        exporter: ``"torchscript"`` (``torch.onnx.export(dynamo=False)``) or ``"dynamo"`` (``torch.export``).
    """
    out = Path(out)
    model = SingleOutput(net).eval()
    x = torch.randn(*shape)
    with atomic_path(out) as tmp, torch.no_grad():
        if exporter == "torchscript":
            _register_rot90_symbolic(opset)
            axes = {0: "batch", **{i: f"dim{i - 2}" for i in range(2, len(shape))}}
            torch.onnx.export(
                model,
                (x,),
                str(tmp),
                dynamo=False,
                opset_version=opset,
                input_names=["image"],
                output_names=["logits"],
                dynamic_axes={"image": axes, "logits": axes} if dynamic else None,
            )
        elif exporter == "dynamo":
            dims = {i: torch.export.Dim.AUTO for i in range(len(shape)) if i != 1} if dynamic else None
            program = torch.export.export(model, (x,), dynamic_shapes={"x": dims} if dims else None)
            torch.onnx.export(
                program,
                (x,),
                str(tmp),
                opset_version=max(opset, 18),
                input_names=["image"],
                output_names=["logits"],
                external_data=False,
            )
        else:
            raise ValueError(f"exporter must be 'torchscript' or 'dynamo', got {exporter!r}")
    return out


def export_torchscript(net: nn.Module, out: str | os.PathLike, shape: Sequence[int]) -> Path:
    """Write ``net`` (eval mode, single output) traced with ``torch.jit.trace`` to ``out``, atomically."""
    out = Path(out)
    model = SingleOutput(net).eval()
    with torch.no_grad():
        traced = torch.jit.trace(model, torch.randn(*shape), check_trace=False)
    with atomic_path(out) as tmp:
        torch.jit.save(traced, str(tmp))
    return out


def export_pretrained(net: nn.Module, extras: dict[str, Any], out: str | os.PathLike) -> Path:
    """Write a ``save_pretrained`` directory plus ``preprocessor.json`` / ``inference.json`` for ``segzoo infer``."""
    if not hasattr(net, "save_pretrained"):
        raise DataError(f"{type(net).__name__} is not a segzoo SegNet; it cannot be saved as a pretrained directory")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out}: exists and is not a directory")
    net.save_pretrained(out)
    for key, name in (("preprocessor", "preprocessor.json"), ("inference", "inference.json")):
        if extras.get(key) is not None:
            atomic_write_text(out / name, json.dumps(extras[key], indent=2, default=float))
        elif (out / name).is_file():  # a stale file from an earlier export would mislead `segzoo infer`
            (out / name).unlink()
    return out


def export_net(
    ckpt: str | os.PathLike,
    format: str,
    out: str | os.PathLike,
    shape: Sequence[int] | None = None,
    dynamic: bool = True,
    opset: int = 17,
    exporter: str = "torchscript",
) -> Path:
    """Export the net of a checkpoint or pretrained directory ``ckpt`` as ``format`` (one of ``EXPORT_FORMATS``)."""
    if format not in EXPORT_FORMATS:
        raise ValueError(f"format must be one of {EXPORT_FORMATS}, got {format!r}")
    net, extras = load_for_export(ckpt)
    if format == "pretrained":
        return export_pretrained(net, extras, out)
    shape = tuple(shape) if shape else default_shape(net, extras)
    if len(shape) < 3:
        raise DataError(f"--shape {' '.join(map(str, shape))}: expected B C *spatial (at least 3 numbers)")
    if format == "onnx":
        return export_onnx(net, out, shape, dynamic=dynamic, opset=opset, exporter=exporter)
    return export_torchscript(net, out, shape)
