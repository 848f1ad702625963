"""Whole-case sliding-window inference with Gaussian blending and mirroring test-time augmentation (TTA).

Reference: W. Zhao et al., "Multi Scale Supervised 3D U-Net for Kidney and Tumor Segmentation", KiTS19 challenge,
2019 (arXiv:2004.08108): inference with overlapping windows and mirroring, as in nnU-Net (Isensee et al., Nature
Methods 2021).

The windows are placed, weighted and stitched by MONAI's :func:`monai.inferers.sliding_window_inference`; this
module only supplies the per-window predictor. Mirroring is done **per window** (nnU-Net style): every window is
flipped along each subset of ``mirror_axes``, all flips run through the net in one batch, each prediction is flipped
back and the flips are summed before the Gaussian-weighted accumulation. So window extraction, weighting and
stitching happen once instead of once per flip. The result equals averaging MONAI's sliding-window result over the
flips when each pass flips the windows (and also when each pass flips the whole volume, whenever the window grid
is mirror-symmetric; see ``docs/inference.md``).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.data.utils import compute_importance_map
from monai.inferers import Inferer, sliding_window_inference

OUTPUTS = ("probabilities", "logits", "labels")
MODES = ("gaussian", "constant")
PADDING_MODES = ("constant", "reflect", "replicate", "circular")
AMP_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def flip_combinations(mirror_axes: Sequence[int] | None) -> list[tuple[int, ...]]:
    """All subsets of ``mirror_axes`` (spatial axis indices), identity first: ``2**len(mirror_axes)`` entries.

    >>> flip_combinations((0, 2))
    [(), (0,), (2,), (0, 2)]
    """
    axes = tuple(mirror_axes or ())
    return [c for r in range(len(axes) + 1) for c in itertools.combinations(axes, r)]


class SlidingWindowTTAInferer(Inferer):
    """Sliding-window inference over a whole case with Gaussian blending and mirroring TTA.

    Args:
        roi_size: window size, one entry per spatial axis (the training patch size, e.g. ``(48, 192, 192)``).
        sw_batch_size: windows per forward pass. With TTA each forward sees ``sw_batch_size * 2**len(mirror_axes)``
            inputs (all flips of the windows at once); lower it if memory is tight.
        overlap: fraction of overlap between neighbouring windows along every axis, in ``[0, 1)``.
        mode: ``"gaussian"`` (nnU-Net style importance map, less weight at window borders) or ``"constant"``.
        sigma_scale: Gaussian sigma as a fraction of the window size (MONAI and nnU-Net: 0.125).
        mirror_axes: SPATIAL axes (0 = first spatial axis) to mirror; every subset is used, so 3 axes give 8
            predictions per window. ``None`` or ``()`` disables TTA.
        padding_mode: ``torch.nn.functional.pad`` mode used when the case is smaller than ``roi_size``.
        sw_device: device the windows and the net run on (default: the input's device).
        device: device of the stitched output (default: the input's device); ``"cpu"`` keeps GPU memory independent
            of the case size.
        progress: show a tqdm progress bar over window batches.
        output: ``"probabilities"`` (default): softmax per window and flip, then averaged; ``"logits"``: the raw
            logits averaged the same way (nnU-Net v2 averages logits); ``"labels"``: argmax of the averaged
            probabilities, shape ``(B, 1, *spatial)``, ``torch.long``.
        max_batch: most inputs (windows x flips) per forward pass; the flips of a window batch are split into
            chunks of at most this many (at least one flip per pass). ``None``: all ``sw_batch_size *
            2**len(mirror_axes)`` at once. ``"auto"`` (default): all at once on an accelerator (occupancy), one flip
            per pass on a CPU, where large forward batches were slower (measured: 1.0-1.65x the time of one flip per
            pass, from cache misses and glibc mapping every large activation afresh). Bounds the net's activation
            memory independently of the number of flips; the result is the same.
        amp: run the net under ``torch.autocast`` on the window device with ``amp_dtype`` (mixed precision); the
            net's output is cast to float32 once per forward pass and blending/accumulation stay float32.
        amp_dtype: ``"bfloat16"`` (default) or ``"float16"``.
        memory_budget_gb: with ``device="auto"``: the stitched output (``K`` float32 channels), MONAI's weight-count
            map and the input stay on the window device when together they need at most this many GiB, else the
            output goes to the CPU and windows are streamed to the window device. ``None``: half of the window
            device's free memory (CUDA), no limit on a CPU.

    ``device="auto"`` chooses the output device per case with ``memory_budget_gb`` (see :meth:`output_device`).

    Call:
        ``inferer(inputs, network)`` with ``inputs`` ``(B, C, *spatial)`` returns ``(B, K, *spatial)`` float32 (or
        ``(B, 1, *spatial)`` labels). When ``network`` returns a list or tuple (deep supervision in training mode),
        the first element (full resolution) is used. Runs under ``torch.inference_mode()``; the network's
        train/eval mode is left as it is.
    """

    def __init__(
        self,
        roi_size: Sequence[int],
        sw_batch_size: int = 2,
        overlap: float = 0.5,
        mode: str = "gaussian",
        sigma_scale: float = 0.125,
        mirror_axes: Sequence[int] | None = (0, 1, 2),
        padding_mode: str = "constant",
        sw_device: str | None = None,
        device: str | None = None,
        progress: bool = False,
        output: str = "probabilities",
        max_batch: int | str | None = "auto",
        amp: bool = False,
        amp_dtype: str = "bfloat16",
        memory_budget_gb: float | None = None,
    ) -> None:
        super().__init__()
        roi = tuple(int(r) for r in roi_size)
        if not roi or any(r < 1 for r in roi):
            raise ValueError(f"roi_size must be positive window sizes, one per spatial axis; got {tuple(roi_size)}")
        if sw_batch_size < 1:
            raise ValueError(f"sw_batch_size must be >= 1, got {sw_batch_size}")
        if not 0.0 <= overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {overlap}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if sigma_scale <= 0:
            raise ValueError(f"sigma_scale must be > 0, got {sigma_scale}")
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        if max_batch is not None and max_batch != "auto" and (isinstance(max_batch, str) or max_batch < 1):
            raise ValueError(f"max_batch must be >= 1, None or 'auto', got {max_batch!r}")
        if amp_dtype not in AMP_DTYPES:
            raise ValueError(f"amp_dtype must be one of {tuple(AMP_DTYPES)}, got {amp_dtype!r}")
        if memory_budget_gb is not None and not memory_budget_gb > 0:
            raise ValueError(f"memory_budget_gb must be > 0 or None, got {memory_budget_gb}")
        axes = tuple(int(a) for a in (mirror_axes or ()))
        if len(set(axes)) != len(axes) or any(a < 0 or a >= len(roi) for a in axes):
            raise ValueError(
                f"mirror_axes must be distinct spatial axes in [0, {len(roi) - 1}] (roi_size has {len(roi)} axes); "
                f"got {tuple(mirror_axes or ())}"
            )
        self.roi_size = roi
        self.sw_batch_size = int(sw_batch_size)
        self.overlap = float(overlap)
        self.mode = mode
        self.sigma_scale = float(sigma_scale)
        self.mirror_axes = axes
        self.flips = flip_combinations(axes)
        self.padding_mode = padding_mode
        self.sw_device = sw_device
        self.device = device
        self.progress = progress
        self.output = output
        self.max_batch = max_batch if max_batch in (None, "auto") else int(max_batch)
        self.amp = bool(amp)
        self.amp_dtype = amp_dtype
        self.memory_budget_gb = None if memory_budget_gb is None else float(memory_budget_gb)
        self._importance_maps: dict[tuple[str, torch.dtype], torch.Tensor] = {}

    def importance_map(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The window weight map ``roi_size`` (computed once per device and dtype, then cached)."""
        key = (str(torch.device(device)), dtype)
        if key not in self._importance_maps:
            self._importance_maps[key] = compute_importance_map(
                self.roi_size, mode=self.mode, sigma_scale=self.sigma_scale, device=device, dtype=dtype
            )
        return self._importance_maps[key]

    def output_device(
        self,
        inputs: torch.Tensor,
        num_classes: int,
        sw_device: torch.device,
        free_bytes: int | None = None,
    ) -> torch.device:
        """Where the stitched output of ``inputs`` goes when ``device="auto"``.

        The window device when the output (``num_classes`` float32 channels), MONAI's count map (one float32
        channel) and the input (float32) fit in ``memory_budget_gb`` (default: half of ``free_bytes``, which is read
        from ``torch.cuda.mem_get_info`` on CUDA), else the CPU. A CPU window device keeps everything on the CPU.
        """
        if sw_device.type == "cpu":
            return sw_device
        voxels = inputs[0, 0].numel() * inputs.shape[0]
        need = 4 * voxels * (num_classes + 1 + inputs.shape[1])
        if self.memory_budget_gb is not None:
            budget = self.memory_budget_gb * 2**30
        else:
            if free_bytes is None:
                free_bytes = torch.cuda.mem_get_info(sw_device)[0] if sw_device.type == "cuda" else 0
            budget = free_bytes / 2
        return sw_device if need <= budget else torch.device("cpu")

    def _predictor(self, network: Callable[..., Any], *args: Any, **kwargs: Any) -> Callable[[torch.Tensor], Any]:
        """Window predictor: sum over flips of (flip back . activation . net . flip); the caller divides once."""
        dims = [tuple(a + 2 for a in f) for f in self.flips]
        softmax = self.output != "logits"

        def forward(batch: torch.Tensor) -> torch.Tensor:
            with torch.autocast(batch.device.type, dtype=AMP_DTYPES[self.amp_dtype], enabled=self.amp):
                out = network(batch, *args, **kwargs)
            if isinstance(out, list | tuple):
                out = out[0]
            out = out.float()  # once per forward pass; blending and accumulation run in float32
            return torch.softmax(out, dim=1) if softmax else out

        def predict(windows: torch.Tensor) -> torch.Tensor:
            n = windows.shape[0]
            # flips per forward pass: all of them, or as many as max_batch inputs allow (at least one)
            max_batch = self.max_batch
            if max_batch == "auto":
                max_batch = n if windows.device.type == "cpu" else None
            per_pass = len(dims) if max_batch is None else max(1, max_batch // n)
            acc = None
            for start in range(0, len(dims), per_pass):
                chunk = dims[start : start + per_pass]
                out = forward(
                    torch.cat([_flip(windows, d) for d in chunk]) if len(chunk) > 1 else _flip(windows, chunk[0])
                )
                for i, d in enumerate(chunk):
                    part = _flip(out[i * n : (i + 1) * n], d)
                    if acc is None:  # an unflipped slice of a larger `out` is copied so the rest can be freed
                        acc = part.clone() if not d and len(chunk) > 1 else part
                    else:
                        acc += part
            return acc

        return predict

    def __call__(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> torch.Tensor:
        """Predict a whole case.

        Args:
            inputs: ``(B, C, *spatial)`` image batch; every case is processed independently.
            network: the segmentation net (or any callable returning ``(N, K, *roi_size)`` logits or a list of them).
            args: extra positional arguments for ``network``.
            kwargs: extra keyword arguments for ``network``.

        Returns:
            ``(B, K, *spatial)`` float32 mean probabilities (or logits), or ``(B, 1, *spatial)`` labels.
        """
        if not isinstance(inputs, torch.Tensor):
            raise TypeError(f"inputs must be a torch.Tensor (B, C, *spatial), got {type(inputs).__name__}")
        if inputs.ndim != len(self.roi_size) + 2:
            raise ValueError(
                f"inputs must have shape (B, C, *spatial) with {len(self.roi_size)} spatial axes to match "
                f"roi_size {self.roi_size}; got shape {tuple(inputs.shape)}"
            )
        with torch.inference_mode():
            x = inputs if inputs.dtype == torch.float32 else inputs.float()
            sw_device = torch.device(self.sw_device) if self.sw_device is not None else x.device
            device = self.device
            if device == "auto":
                device = self.output_device(x, _num_classes(network), sw_device)
                if device == sw_device and x.device != sw_device:
                    x = x.to(sw_device)  # the whole case moves once instead of window by window
            out = sliding_window_inference(
                x,
                roi_size=self.roi_size,
                sw_batch_size=self.sw_batch_size,
                predictor=self._predictor(network, *args, **kwargs),
                overlap=self.overlap,
                mode=self.mode,
                sigma_scale=self.sigma_scale,
                padding_mode=self.padding_mode,
                sw_device=sw_device,
                device=device,
                progress=self.progress,
                roi_weight_map=self.importance_map(sw_device),
            )
            if len(self.flips) > 1:
                out /= len(self.flips)
            if self.output == "labels":
                return out.argmax(dim=1, keepdim=True)
            return out


def _flip(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    return x.flip(dims) if dims else x


def _num_classes(network: Any, default: int = 4) -> int:
    """Output channels of ``network`` for memory planning: ``out_channels`` of a segzoo net's recorded arguments or
    the net's ``out_channels`` attribute (MONAI nets); ``default`` when neither is there."""
    config = getattr(network, "init_config", None)
    value = config.get("init_args", {}).get("out_channels") if isinstance(config, dict) else None
    value = value if value is not None else getattr(network, "out_channels", None)
    return int(value) if isinstance(value, int) and value > 0 else default
