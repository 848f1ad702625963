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
        self._importance_maps: dict[tuple[str, torch.dtype], torch.Tensor] = {}

    def importance_map(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The window weight map ``roi_size`` (computed once per device and dtype, then cached)."""
        key = (str(torch.device(device)), dtype)
        if key not in self._importance_maps:
            self._importance_maps[key] = compute_importance_map(
                self.roi_size, mode=self.mode, sigma_scale=self.sigma_scale, device=device, dtype=dtype
            )
        return self._importance_maps[key]

    def _predictor(self, network: Callable[..., Any], *args: Any, **kwargs: Any) -> Callable[[torch.Tensor], Any]:
        """Window predictor: sum over flips of (flip back . activation . net . flip); the caller divides once."""
        dims = [tuple(a + 2 for a in f) for f in self.flips]
        softmax = self.output != "logits"

        def predict(windows: torch.Tensor) -> torch.Tensor:
            n = windows.shape[0]
            batch = torch.cat([windows.flip(d) if d else windows for d in dims]) if len(dims) > 1 else windows
            out = network(batch, *args, **kwargs)
            if isinstance(out, list | tuple):
                out = out[0]
            out = out.float()
            if softmax:
                out = torch.softmax(out, dim=1)
            acc = out[:n].clone() if len(dims) > 1 else out
            for i, d in enumerate(dims[1:], start=1):
                acc += out[i * n : (i + 1) * n].flip(d)
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
                device=self.device,
                progress=self.progress,
                roi_weight_map=self.importance_map(sw_device),
            )
            if len(self.flips) > 1:
                out /= len(self.flips)
            if self.output == "labels":
                return out.argmax(dim=1, keepdim=True)
            return out
