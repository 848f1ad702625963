"""Whole-case prediction from a checkpoint alone: NIfTI in, NIfTI label map out with the input's shape and affine.

Used by ``segzoo infer``. A Lightning checkpoint written by :class:`segzoo.tasks.SegmentationTask` carries the net's
constructor config (``segzoo_net``), the sliding-window size (``segzoo_inferer``), the post-processing
(``segzoo_postprocess``) and the datamodule's preprocessing (``<DataModule>["preprocessor"]``), so no config is needed.
A ``save_pretrained`` directory (``config.json`` + ``model.safetensors``, optionally ``preprocessor.json``) works too.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from segzoo.checkpoint import labels_on_original_grid
from segzoo.data.io import DataError, load_nifti, save_nifti
from segzoo.nets.base import build_net, from_pretrained

NIFTI_SUFFIXES = (".nii.gz", ".nii")


def callable_config(obj: Any) -> dict[str, Any] | None:
    """``{"class_path", "init_args"}`` of an object whose constructor arguments are kept as same-named attributes
    (dataclasses, ``SegNet`` subclasses, most plain classes), to rebuild it later with :func:`build_callable`."""
    if obj is None:
        return None
    cls = type(obj)
    if dataclasses.is_dataclass(obj):
        args = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if f.init}
    elif hasattr(obj, "init_config"):
        args = obj.init_config.get("init_args", {})
    else:
        params = inspect.signature(cls.__init__).parameters
        args = {n: getattr(obj, n) for n in params if n != "self" and hasattr(obj, n)}
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": args}


def build_callable(config: dict[str, Any]) -> Any:
    module, _, name = config["class_path"].rpartition(".")
    return getattr(importlib.import_module(module), name)(**config.get("init_args", {}))


def case_name(path: Path) -> str:
    """``case_00012`` for ``.../case_00012/imaging.nii.gz``, else the file name without ``.nii(.gz)``."""
    if path.name.startswith("imaging.nii"):
        return path.parent.name
    for suffix in NIFTI_SUFFIXES:
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)]
    return path.stem


def find_inputs(input_path: str | os.PathLike) -> list[Path]:
    """NIfTI images to predict: one file, a folder of files, or a folder of KiTS-layout case folders."""
    root = Path(input_path)
    if root.is_file():
        if not root.name.endswith(NIFTI_SUFFIXES):
            raise DataError(f"{root}: expected a .nii or .nii.gz file")
        return [root]
    if not root.is_dir():
        raise DataError(f"{root}: no such file or folder")
    found = [p for p in sorted(root.iterdir()) if p.is_file() and p.name.endswith(NIFTI_SUFFIXES)]
    for case in sorted(p for p in root.iterdir() if p.is_dir()):
        images = [case / f"imaging{s}" for s in NIFTI_SUFFIXES if (case / f"imaging{s}").is_file()]
        found.extend(images[:1])
    if not found:
        raise DataError(f"{root}: no .nii/.nii.gz files and no case folders with imaging.nii.gz found")
    names = [case_name(p) for p in found]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise DataError(f"{root}: several inputs map to the same output name(s) {sorted(dupes)}")
    return found


@dataclass
class Predictor:
    """Net + preprocessing + whole-case inferer + post-processing, ready to predict NIfTI files."""

    net: nn.Module
    inferer: Callable[[torch.Tensor, nn.Module], torch.Tensor]
    preprocessor: Any | None = None
    postprocess: Callable | None = None
    device: torch.device = torch.device("cpu")

    def predict_array(self, image: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
        """Label map ``uint8`` with exactly ``image.shape`` for one single-channel volume."""
        if self.preprocessor is not None:
            x = np.asarray(self.preprocessor.preprocess(image, spacing), dtype=np.float32)
        else:
            x = np.asarray(image, dtype=np.float32)[None]
        xt = torch.from_numpy(x)[None]  # the inferer moves it to the net's device (once, when the output fits there)
        with torch.inference_mode():
            out = self.inferer(xt, self.net)[0]
        return labels_on_original_grid(out, image.shape, self.preprocessor, self.postprocess)

    def predict_file(self, image_path: Path, output_path: Path) -> Path:
        from segzoo.data.kits19 import spacing_from_affine

        image, affine = load_nifti(image_path, dtype=np.float32)
        if image.ndim != 3:
            raise DataError(f"{image_path}: expected a 3D image, got shape {image.shape}")
        labels = self.predict_array(image, spacing_from_affine(affine))
        return save_nifti(labels, affine, output_path)


def _one_line(error: BaseException, limit: int = 300) -> str:
    """``error`` as one line, shortened to ``limit`` characters (state-dict reports list hundreds of keys)."""
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def load_predictor(
    source: str | os.PathLike,
    device: str = "cpu",
    tta: bool | str = True,
    overlap: float = 0.5,
    sw_batch_size: int = 2,
    postprocess: bool = True,
    roi_size: Sequence[int] | None = None,
    amp: bool | None = None,
    max_batch: int | str | None = "auto",
    memory_budget_gb: float | None = None,
    crop: str = "none",
    coarse_to_fine: bool = False,
    backend: str = "torch",
) -> Predictor:
    """Build a :class:`Predictor` from a Lightning checkpoint or a ``save_pretrained`` directory.

    The net runs on ``device``; the stitched output stays there when it fits (``memory_budget_gb``, default half
    the free accelerator memory) and is streamed to the CPU otherwise. ``amp``: bf16 autocast (``None`` = on for
    CUDA, off on a CPU). ``max_batch``: most windows x flips per forward pass (bounds activation memory; ``"auto"``:
    all flips at once on an accelerator, one per pass on a CPU). ``tta``: ``"all"`` / True, ``"inplane"``, ``"none"`` /
    False (:func:`~segzoo.inference.sliding_window.tta_mirror_axes`); ``crop``: ``"none"``, ``"exact"``, ``"regrid"``
    and ``coarse_to_fine`` (see :class:`~segzoo.inference.sliding_window.SlidingWindowTTAInferer`); ``backend``:
    ``"torch"``, ``"onnxruntime"`` or ``"openvino"`` (the exported net, on the CPU; :mod:`segzoo.inference.backends`).
    """
    from segzoo.inference.backends import BACKENDS, backend_net
    from segzoo.inference.sliding_window import SlidingWindowTTAInferer, crop_arguments, tta_mirror_axes

    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend != "torch" and torch.device(device).type != "cpu":
        raise ValueError(f"backend {backend!r} runs on the CPU; use --device cpu or --backend torch")

    source = Path(source)
    dev = torch.device(device)
    preproc_cfg, post_cfg, roi = None, None, None
    if source.is_dir():
        try:
            net = from_pretrained(source)
        except (FileNotFoundError, ValueError, RuntimeError, TypeError) as e:
            raise DataError(f"{source}: not a loadable save_pretrained directory ({_one_line(e)})") from None
        if (source / "preprocessor.json").is_file():
            preproc_cfg = json.loads((source / "preprocessor.json").read_text())
        if (source / "inference.json").is_file():
            extra = json.loads((source / "inference.json").read_text())
            roi, post_cfg = extra.get("roi_size"), extra.get("postprocess")
    elif source.is_file():
        try:
            ckpt = torch.load(source, map_location="cpu", weights_only=False)
        except Exception as e:
            raise DataError(f"{source}: cannot read checkpoint ({type(e).__name__}: {e})") from None
        if not isinstance(ckpt, dict) or "segzoo_net" not in ckpt:
            raise DataError(f"{source}: not a segzoo checkpoint (no 'segzoo_net' entry); train with `segzoo fit`")
        try:
            net = build_net(ckpt["segzoo_net"])
        except (ValueError, TypeError) as e:
            raise DataError(f"{source}: cannot rebuild the net from its 'segzoo_net' entry ({_one_line(e)})") from None
        state = {k[len("net.") :]: v for k, v in ckpt.get("state_dict", {}).items() if k.startswith("net.")}
        try:
            net.load_state_dict(state)
        except RuntimeError as e:  # missing / unexpected keys or shape mismatches: weights of another net
            raise DataError(
                f"{source}: the weights do not fit the net {ckpt['segzoo_net'].get('class_path')} recorded in the "
                f"checkpoint ({_one_line(e)}); expected a checkpoint written by `segzoo fit` for that net"
            ) from None
        for value in ckpt.values():
            if isinstance(value, dict) and "preprocessor" in value:
                preproc_cfg = value["preprocessor"]
        roi = ckpt.get("segzoo_inferer", {}).get("roi_size")
        post_cfg = ckpt.get("segzoo_postprocess")
    else:
        raise DataError(f"{source}: no such checkpoint file or pretrained directory")
    roi = list(roi_size) if roi_size is not None else roi
    if roi is None:
        raise DataError(f"{source}: holds no sliding-window size; pass --roi-size")
    preprocessor = None
    if preproc_cfg is not None:
        from segzoo.data.preprocessing import CTPreprocessor

        preprocessor = CTPreprocessor.from_dict(preproc_cfg)
    spatial = len(roi)
    inferer = SlidingWindowTTAInferer(
        roi_size=roi,
        sw_batch_size=sw_batch_size,
        overlap=overlap,
        mirror_axes=tta_mirror_axes(tta, spatial),
        sw_device=str(dev),
        device="auto",
        amp=(dev.type == "cuda" if amp is None else amp) and backend == "torch",
        max_batch=max_batch,
        memory_budget_gb=memory_budget_gb,
        coarse_to_fine=coarse_to_fine,
        **crop_arguments(crop),
    )
    post = build_callable(post_cfg) if (postprocess and post_cfg) else None
    net = net.to(dev).eval()
    if backend != "torch":
        args = getattr(net, "init_config", {}).get("init_args", {})
        shape = (1, int(args.get("in_channels", 1)), *roi)
        net = backend_net(net, backend, shape, out_channels=args.get("out_channels"))
    return Predictor(net=net, inferer=inferer, preprocessor=preprocessor, postprocess=post, device=dev)
