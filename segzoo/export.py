"""Export a trained net for deployment: ONNX, TorchScript, or a ``save_pretrained`` directory.

Used by ``segzoo export``. The source is a Lightning checkpoint written by :class:`segzoo.tasks.SegmentationTask`
or a pretrained directory, read by :func:`segzoo.checkpoint.load_checkpoint` (nothing from the file runs). The exported
graph is the net in eval mode with a single tensor output: logits ``(B, K, *spatial)`` for an input
``(B, C, *spatial)``; sliding-window inference, test-time augmentation and post-processing stay outside the graph
(``segzoo infer`` does them; a ``pretrained`` export keeps their settings in ``inference.json``).

Choices (not from the papers): ONNX goes through the TorchScript-based exporter (``dynamo=False``), which exports
the nets here in seconds with dynamic batch and spatial axes; ``torch.rot90`` (DR-Net's rotation blocks) has no
ONNX symbolic there, so one made of ``Slice`` (flip) and ``Transpose`` is registered. ``exporter="dynamo"`` uses
``torch.export`` instead (slower, minutes for DR-Net on a laptop). TorchScript uses ``torch.jit.trace``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from segzoo.data.io import DataError
from segzoo.utils import atomic_path

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


def default_shape(net: nn.Module, roi_size: Sequence[int] | None = None) -> tuple[int, ...]:
    """Example input ``(1, C, *spatial)``: the registry's example shape, else the checkpoint's window size."""
    from segzoo.nets import net_example_shape

    name = getattr(net, "registry_name", None)
    shape = net_example_shape(name) if name else ()
    if shape:
        return (1, *shape)
    in_ch = getattr(net, "init_config", {}).get("init_args", {}).get("in_channels")
    if roi_size and in_ch:
        return (1, int(in_ch), *map(int, roi_size))
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


def export_net(
    ckpt: str | os.PathLike,
    format: str,
    out: str | os.PathLike,
    shape: Sequence[int] | None = None,
    dynamic: bool = True,
    opset: int = 17,
    exporter: str = "torchscript",
    trust: bool = False,
) -> Path:
    """Export the net of a checkpoint or pretrained directory ``ckpt`` as ``format`` (one of ``EXPORT_FORMATS``).

    ``ckpt`` is read by :func:`segzoo.checkpoint.load_checkpoint` (nothing from it runs unless ``trust``); a
    ``pretrained`` export writes JSON and safetensors only, with the preprocessing, inferer and post-processing
    records ``segzoo infer`` reads. Raises ``DataError`` (one line naming the file) before anything is written.
    """
    from segzoo.checkpoint import load_checkpoint
    from segzoo.nets.pretrained import save_pretrained

    if format not in EXPORT_FORMATS:
        raise ValueError(f"format must be one of {EXPORT_FORMATS}, got {format!r}")
    loaded = load_checkpoint(ckpt, trust=trust)
    net = loaded.net
    if format == "pretrained":
        return save_pretrained(loaded, out)
    shape = tuple(shape) if shape else default_shape(net, loaded.roi_size)
    if len(shape) < 3:
        raise DataError(f"--shape {' '.join(map(str, shape))}: expected B C *spatial (at least 3 numbers)")
    if format == "onnx":
        return export_onnx(net, out, shape, dynamic=dynamic, opset=opset, exporter=exporter)
    return export_torchscript(net, out, shape)
