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
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from monai.data.utils import compute_importance_map
from monai.inferers import Inferer, sliding_window_inference

from segzoo.inference.crop import (
    Box,
    body_box,
    fit_box,
    foreground_boxes,
    full_box,
    intersects,
    merge_boxes,
    per_axis,
    region_mask,
)

OUTPUTS = ("probabilities", "logits", "labels")
MODES = ("gaussian", "constant")
PADDING_MODES = ("constant", "reflect", "replicate", "circular")
CROP_GRIDS = ("case", "crop")
#: logit of the non-background classes outside the predicted boxes with ``output="logits"`` (softmax: exactly 0)
OUTSIDE_LOGIT = -1.0e4
AMP_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


TTA_MODES = ("all", "inplane", "none")
CROP_MODES = ("none", "exact", "regrid")


def tta_mirror_axes(tta: bool | str, spatial_dims: int) -> tuple[int, ...] | None:
    """``mirror_axes`` of a TTA choice: ``"all"`` (or True) every spatial axis (8 flips in 3D), ``"inplane"`` the last
    two spatial axes (4 flips; the slice axis of KiTS19 arrays is the first), ``"none"`` (or False) no mirroring."""
    choice = {True: "all", False: "none"}.get(tta, tta) if isinstance(tta, bool) else tta
    if choice not in TTA_MODES:
        raise ValueError(f"tta must be one of {TTA_MODES} (or a bool), got {tta!r}")
    if choice == "none":
        return None
    axes = tuple(range(spatial_dims))
    return axes if choice == "all" else axes[-2:]


def crop_arguments(crop: str) -> dict[str, Any]:
    """Inferer arguments of a crop choice: ``"none"``, ``"exact"`` (the whole case's windows that touch the body
    box; the same result inside it) or ``"regrid"`` (windows re-placed over the body box)."""
    if crop not in CROP_MODES:
        raise ValueError(f"crop must be one of {CROP_MODES}, got {crop!r}")
    return {"crop": crop != "none", "crop_grid": "crop" if crop == "regrid" else "case"}


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
        crop: predict only the body: the box of the largest component above ``crop_threshold``, grown by
            ``crop_margin`` (:func:`segzoo.inference.crop.body_box`); voxels outside the box get background
            (probability 1 for class 0; logits 0 for class 0 and ``OUTSIDE_LOGIT`` for the others).
        crop_grid: ``"case"`` (default): windows are those of the whole case; the ones that miss the box (or, with
            ``coarse_to_fine``, every box) are never run, so every voxel inside gets exactly the whole-case result.
            ``"crop"``: windows are re-placed over the box (each box, overlapping boxes merged; nnU-Net's
            crop-then-predict): fewer windows, results inside differ slightly from the whole-case grid's.
        crop_threshold: intensity a body voxel exceeds on the preprocessed case; ``None``: the case's minimum (the
            clip floor that air and fat share after the KiTS19 preprocessing).
        crop_margin: voxels added around the body's bounding box, an int or one per spatial axis.
        coarse_to_fine: first a cheap pass (the same net, no mirroring, windows with ``coarse_overlap``) over the
            body box finds the foreground; then the full pass runs only the whole-case windows that touch a box
            around a foreground component grown by ``coarse_margin``; outside those boxes, background. Inside the
            boxes the result equals the full pass exactly; it differs only where the coarse pass missed
            foreground by more than the margin. When the coarse pass finds no foreground, the full pass runs as
            without it. Off by default (see ``docs/inference.md`` for the measured tolerance).
        coarse_overlap: window overlap of the coarse pass (default 0: each voxel predicted once).
        coarse_margin: voxels around each coarse foreground component; default a quarter of ``roi_size``.
        coarse_select: applied to the coarse pass's label map (a ``(*spatial)`` integer numpy array) before the boxes
            are taken, to keep only the foreground the final answer can hold; ``segzoo infer`` passes the
            checkpoint's validated post-processing, so components it would delete (small false positives far from
            the kidneys) do not make the fine pass run there. ``None``: every coarse foreground component.

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
        crop: bool = False,
        crop_grid: str = "case",
        crop_threshold: float | None = None,
        crop_margin: int | Sequence[int] = 4,
        coarse_to_fine: bool = False,
        coarse_overlap: float = 0.0,
        coarse_margin: int | Sequence[int] | None = None,
        coarse_select: Callable[[np.ndarray], np.ndarray] | None = None,
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
        if crop_grid not in CROP_GRIDS:
            raise ValueError(f"crop_grid must be one of {CROP_GRIDS}, got {crop_grid!r}")
        if not 0.0 <= coarse_overlap < 1.0:
            raise ValueError(f"coarse_overlap must be in [0, 1), got {coarse_overlap}")
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
        self.crop = bool(crop)
        self.crop_grid = crop_grid
        self.crop_threshold = None if crop_threshold is None else float(crop_threshold)
        self.crop_margin = per_axis(crop_margin, len(roi), "crop_margin")
        self.coarse_to_fine = bool(coarse_to_fine)
        self.coarse_overlap = float(coarse_overlap)
        self.coarse_margin = (
            tuple(r // 4 for r in roi) if coarse_margin is None else per_axis(coarse_margin, len(roi), "coarse_margin")
        )
        self.coarse_select = coarse_select
        #: what the last call did, one dict per case of the batch: ``windows_run`` / ``windows_total`` (the full
        #: pass's grid), ``boxes`` predicted (case coordinates), ``body_box``, ``coarse_windows``, ``coarse_seconds``
        self.last_stats: list[dict[str, Any]] = []
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

    def _predictor(
        self, network: Callable[..., Any], *args: Any, flips: Sequence[tuple[int, ...]] | None = None, **kwargs: Any
    ) -> Callable[[torch.Tensor], Any]:
        """Window predictor: sum over flips of (flip back . activation . net . flip); the caller divides once."""
        dims = [tuple(a + 2 for a in f) for f in (self.flips if flips is None else flips)]
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
            device = torch.device(device) if device is not None else x.device
            self.last_stats = []
            if not (self.crop or self.coarse_to_fine):
                out = self._sliding(x, network, args, kwargs, sw_device, device)
                self.last_stats.append({"boxes": [full_box(x.shape[2:])], **self._window_stats})
            else:
                out = torch.cat(
                    [
                        self._predict_regions(x[b : b + 1], network, args, kwargs, sw_device, device)
                        for b in range(x.shape[0])
                    ]
                )
            if self.output == "labels":
                return out.argmax(dim=1, keepdim=True)
            return out

    def _sliding(
        self,
        x: torch.Tensor,
        network: Callable[..., Any],
        args: tuple,
        kwargs: dict,
        sw_device: torch.device,
        device: torch.device,
        regions: Sequence[Box] | None = None,
        flips: Sequence[tuple[int, ...]] | None = None,
        overlap: float | None = None,
    ) -> torch.Tensor:
        """MONAI's sliding window over ``x`` with the TTA predictor, averaged over the flips.

        ``regions``: run only the windows of ``x``'s grid that touch one of these boxes (coordinates of ``x``); the
        others contribute zeros (only voxels outside every box are covered by them, and the caller overwrites
        those).
        """
        flips = self.flips if flips is None else flips
        predict = self._predictor(network, *args, flips=flips, **kwargs)
        stats = {"windows_run": 0, "windows_total": 0}
        pad = [max(r - n, 0) // 2 for r, n in zip(self.roi_size, x.shape[2:])]  # MONAI pads small cases centred
        # output channels, for windows that do not run: from the net's recorded arguments, else from the first
        # window through the net (an extra window, once, when the first window batch misses every box)
        known = _num_classes(network, default=None)
        classes: list[int] = [] if known is None else [known]

        def predictor(windows: torch.Tensor, coords: Sequence[Sequence[slice]]) -> torch.Tensor:
            n = windows.shape[0]
            stats["windows_total"] += n
            keep = list(range(n))
            if regions is not None:
                keep = [
                    i
                    for i, c in enumerate(coords)
                    if any(intersects([slice(w.start - p, w.stop - p) for w, p in zip(c[2:], pad)], r) for r in regions)
                ]
            stats["windows_run"] += len(keep)
            if len(keep) == n:
                out = predict(windows)
            elif not keep and classes:
                return windows.new_zeros((n, classes[0], *windows.shape[2:]))
            else:  # the subset (or, before the class count is known, one window) through the net
                part = predict(windows[keep] if keep else windows[:1])
                out = part.new_zeros((n, *part.shape[1:]))
                if keep:
                    out[keep] = part
            if not classes:
                classes.append(out.shape[1])
            return out

        out = sliding_window_inference(
            x,
            roi_size=self.roi_size,
            sw_batch_size=self.sw_batch_size,
            predictor=predictor,
            overlap=self.overlap if overlap is None else overlap,
            mode=self.mode,
            sigma_scale=self.sigma_scale,
            padding_mode=self.padding_mode,
            sw_device=sw_device,
            device=device,
            progress=self.progress,
            roi_weight_map=self.importance_map(sw_device),
            with_coord=True,
        )
        if len(flips) > 1:
            out /= len(flips)
        self._window_stats = stats
        return out

    def _predict_regions(
        self,
        x: torch.Tensor,
        network: Callable[..., Any],
        args: tuple,
        kwargs: dict,
        sw_device: torch.device,
        device: torch.device,
    ) -> torch.Tensor:
        """One case ``(1, C, *spatial)`` with the body crop and/or coarse-to-fine: ``(1, K, *spatial)``."""
        shape = tuple(x.shape[2:])
        body = body_box(x[0], self.crop_threshold, self.crop_margin) if self.crop else full_box(shape)
        stats: dict[str, Any] = {"body_box": body}
        regions = [body]
        if self.coarse_to_fine:
            start = time.perf_counter()
            coarse = self._coarse_regions(x, body, network, args, kwargs, sw_device)
            stats["coarse_windows"] = self._window_stats["windows_run"]
            stats["coarse_seconds"] = time.perf_counter() - start
            if coarse:
                regions = [r for r in (_intersect(c, body) for c in coarse) if r is not None] or regions
        if self.crop_grid == "crop":
            # a grid of its own over each box (boxes that share a voxel merged first), grown to the window size
            # where the case allows; only the box itself is pasted, so grown boxes may overlap each other
            regions = merge_boxes(regions)
            out, counts = None, {"windows_run": 0, "windows_total": 0}
            for region in regions:
                fitted = fit_box(region, self.roi_size, shape)
                sub = self._sliding(x[(slice(None), slice(None), *fitted)], network, args, kwargs, sw_device, device)
                if out is None:
                    out = self._background(sub.shape[1], shape, device)
                inner = tuple(slice(r.start - f.start, r.stop - f.start) for r, f in zip(region, fitted))
                out[(slice(None), slice(None), *region)] = sub[(slice(None), slice(None), *inner)]
                del sub
                counts = {k: v + self._window_stats[k] for k, v in counts.items()}
            self._window_stats = counts
        else:
            out = self._sliding(x, network, args, kwargs, sw_device, device, regions=regions)
        stats.update(self._window_stats)
        stats["boxes"] = regions
        outside = ~region_mask(regions, shape, device=out.device)
        fill = self._background(out.shape[1], (), torch.device("cpu"))[0].tolist()
        for k, value in enumerate(fill):
            out[0, k][outside] = value
        self.last_stats.append(stats)
        return out

    def _coarse_regions(
        self,
        x: torch.Tensor,
        body: Box,
        network: Callable[..., Any],
        args: tuple,
        kwargs: dict,
        sw_device: torch.device,
    ) -> list[Box]:
        """Boxes around the foreground components of a cheap pass (no mirroring, ``coarse_overlap``) over the body."""
        shape = tuple(x.shape[2:])
        fitted = fit_box(body, self.roi_size, shape)
        sub = x[(slice(None), slice(None), *fitted)]
        probs = self._sliding(sub, network, args, kwargs, sw_device, sw_device, flips=[()], overlap=self.coarse_overlap)
        labels = probs[0].argmax(dim=0)
        del probs
        if self.coarse_select is not None:
            labels = self.coarse_select(labels.cpu().numpy().astype(np.uint8))
        return foreground_boxes(labels, self.coarse_margin, offset=[s.start for s in fitted], shape=shape)

    def _background(self, classes: int, shape: Sequence[int], device: torch.device) -> torch.Tensor:
        """``(1, classes, *shape)`` of what a voxel outside the predicted boxes gets: background."""
        if self.output == "logits":
            out = torch.full((1, classes, *shape), OUTSIDE_LOGIT, device=device)
            out[:, 0] = 0.0
        else:
            out = torch.zeros((1, classes, *shape), device=device)
            out[:, 0] = 1.0
        return out


def _intersect(a: Box, b: Box) -> Box | None:
    box = tuple(slice(max(s.start, t.start), min(s.stop, t.stop)) for s, t in zip(a, b))
    return box if all(s.start < s.stop for s in box) else None


def _flip(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    return x.flip(dims) if dims else x


def _num_classes(network: Any, default: int | None = 4) -> int | None:
    """Output channels of ``network`` for memory planning: ``out_channels`` of a segzoo net's recorded arguments or
    the net's ``out_channels`` attribute (MONAI nets); ``default`` when neither is there."""
    config = getattr(network, "init_config", None)
    value = config.get("init_args", {}).get("out_channels") if isinstance(config, dict) else None
    value = value if value is not None else getattr(network, "out_channels", None)
    return int(value) if isinstance(value, int) and value > 0 else default
