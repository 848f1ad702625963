"""Inference backends: the same net run by PyTorch eager, ONNX Runtime or OpenVINO inside the sliding window.

The ONNX backends run the graph :func:`segzoo.export.export_onnx` writes (the net in eval mode, one logits output,
dynamic batch and spatial axes). A backend net is a callable ``(N, C, *spatial) float32 tensor -> (N, K, *spatial)``
logits tensor, so :class:`segzoo.inference.sliding_window.SlidingWindowTTAInferer` uses it like the PyTorch net.
bf16 is not a backend here: it is the inferer's ``amp`` switch (PyTorch autocast; oneDNN runs bf16 convolutions
on CPUs with AVX512-BF16 or AMX). ONNX Runtime and OpenVINO run on the CPU (their default execution
provider / device); measured against PyTorch in ``docs/benchmarks.md``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

BACKENDS = ("torch", "onnxruntime", "openvino")


class OnnxRuntimeNet:
    """An ONNX model run by ONNX Runtime's CPU execution provider, called like a net.

    Args:
        model: path of a ``.onnx`` file with input ``image`` and output ``logits`` (what ``segzoo export`` writes).
        out_channels: number of classes (lets the inferer plan without running a window).
        threads: intra-op threads (default: ``torch.get_num_threads()``, the same as the PyTorch backend).
    """

    def __init__(self, model: str | os.PathLike, out_channels: int | None = None, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads or torch.get_num_threads())
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.out_channels = out_channels

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        return torch.from_numpy(self.session.run(None, {self.input_name: array})[0])


class OpenVINONet:
    """An ONNX model compiled by OpenVINO for the CPU, called like a net.

    Args:
        model: path of a ``.onnx`` file (input ``image``, output ``logits``).
        out_channels: number of classes.
        threads: inference threads (default: ``torch.get_num_threads()``).
        precision: OpenVINO's ``INFERENCE_PRECISION_HINT``: ``"f32"`` (default, the same arithmetic as PyTorch fp32)
            or ``"bf16"`` (where the CPU has bf16 units; OpenVINO's own default there).
    """

    def __init__(
        self,
        model: str | os.PathLike,
        out_channels: int | None = None,
        threads: int | None = None,
        precision: str = "f32",
    ) -> None:
        import openvino as ov

        core = ov.Core()
        config = {
            "INFERENCE_NUM_THREADS": int(threads or torch.get_num_threads()),
            "INFERENCE_PRECISION_HINT": precision,
            "PERFORMANCE_HINT": "LATENCY",
        }
        self.compiled = core.compile_model(core.read_model(str(model)), "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.out_channels = out_channels

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        result = self.request.infer({0: array})
        return torch.from_numpy(np.array(result[self.compiled.output(0)]))


def backend_net(
    net: nn.Module,
    backend: str,
    example_shape: Sequence[int],
    out_channels: int | None = None,
    workdir: str | os.PathLike | None = None,
    **options: Any,
) -> Any:
    """``net`` as a callable of ``backend``: the net itself for ``"torch"``, else exported to ONNX and loaded.

    Args:
        net: the PyTorch net (eval mode is set for the export).
        backend: one of ``BACKENDS``.
        example_shape: ``(B, C, *spatial)`` input used to trace the export (the sliding window size); the graph has
            dynamic batch and spatial axes.
        out_channels: number of classes, passed on to the backend net.
        workdir: where the temporary folder for the ``.onnx`` file is made (default: the system's); the runtime
            reads the file when it loads, and the folder is removed right after.
        options: extra arguments of the backend net class (``threads``, ``precision``).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        return net
    from segzoo.export import export_onnx

    cls = OnnxRuntimeNet if backend == "onnxruntime" else OpenVINONet
    with tempfile.TemporaryDirectory(dir=workdir, prefix="segzoo-onnx-") as tmp:
        path = export_onnx(net.eval(), Path(tmp) / "net.onnx", shape=tuple(example_shape))
        return cls(path, out_channels=out_channels, **options)
