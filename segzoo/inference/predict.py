"""Whole-case prediction from a checkpoint alone: NIfTI in, NIfTI label map out with the input's shape and affine.

Used by ``segzoo infer``. A Lightning checkpoint written by :class:`segzoo.tasks.SegmentationTask` carries, as plain
data under ``segzoo_format``, the net's constructor config, the sliding-window size, the post-processing and the
datamodule's preprocessing, so no config is needed; a pretrained folder (``config.json`` + ``model.safetensors``,
optionally ``preprocessor.json`` / ``inference.json``) works too. Both are read by :mod:`segzoo.checkpoint`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from segzoo.checkpoint import LoadedModel
from segzoo.data.geometry import Reorientation, spacing_from_affine
from segzoo.data.io import DataError, is_nifti_name, save_nifti, strip_nifti_suffix
from segzoo.inference.labels import labels_on_original_grid


def case_name(path: Path) -> str:
    """``case_00012`` for ``.../case_00012/imaging.nii.gz``, else the file name without ``.nii(.gz)`` (any case)."""
    path = Path(path)
    stem = strip_nifti_suffix(path.name)
    if stem != path.name and stem.lower() == "imaging":
        return path.parent.name
    return stem if stem != path.name else path.stem


def find_inputs(input_path: str | os.PathLike) -> list[Path]:
    """NIfTI images to predict: one file, a folder of files, or a folder of KiTS-layout case folders.

    ``.nii`` and ``.nii.gz`` are matched in any letter case (``CT.NII.GZ``); files with other suffixes are not
    images to predict and are left alone.
    """
    root = Path(input_path)
    if root.is_file():
        if not is_nifti_name(root):
            raise DataError(f"{root}: expected a .nii or .nii.gz file")
        return [root]
    if not root.is_dir():
        raise DataError(f"{root}: no such file or folder")
    _refuse_2d_layouts(root)
    if any(p.is_file() and p.suffix.lower() == ".dcm" for p in root.iterdir()):
        raise DataError(
            f"{root}: a DICOM series, not NIfTI files; read it with segzoo.data.dicom_series (segzoo infer does)"
        )
    found = [p for p in sorted(root.iterdir()) if p.is_file() and is_nifti_name(p)]
    for case in sorted(p for p in root.iterdir() if p.is_dir()):
        images = sorted(
            p
            for p in case.iterdir()
            if p.is_file() and is_nifti_name(p) and strip_nifti_suffix(p.name).lower() == "imaging"
        )
        found.extend(images[:1])
    if not found:
        raise DataError(f"{root}: no .nii/.nii.gz files and no case folders with imaging.nii.gz found")
    names = [case_name(p) for p in found]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise DataError(f"{root}: several inputs map to the same output name(s) {sorted(dupes)}")
    return found


def find_series_input(input_path: str | os.PathLike) -> Path | None:
    """``input_path`` when it is a folder of DICOM files (a series, or a study to pick a series from), else ``None``
    (also for a CHAOS tree: :func:`find_cases` reads it case by case)."""
    from segzoo.data.dicom_series import is_dicom_folder
    from segzoo.data.sources.chaos import is_chaos

    root = Path(input_path)
    if not is_dicom_folder(root) or is_chaos(root) or is_chaos(root / "Test_Sets"):
        return None
    return root


def _refuse_2d_layouts(root: Path) -> None:
    """One clear line when :func:`find_inputs` (NIfTI files one by one) is given a BraTS or CHAOS layout, instead of
    predicting each BraTS modality as a separate volume or finding nothing; :func:`find_cases` reads those."""
    from segzoo.data.brats import brats_file

    hint = "; not NIfTI volumes to predict one by one: segzoo infer reads it as a dataset (find_cases)"
    if brats_file(root, "flair") is not None:
        raise DataError(f"{root}: a BraTS case folder{hint}")
    if not any(p.is_file() and is_nifti_name(p) for p in root.iterdir()):
        subs = [p for p in root.iterdir() if p.is_dir()]
        if any(brats_file(p, "flair") is not None for p in subs):
            raise DataError(f"{root}: a folder of BraTS case folders{hint}")
        if any((p / "MR").is_dir() or p.name in ("Train_Sets", "Test_Sets") for p in subs):
            raise DataError(f"{root}: a CHAOS tree{hint}")


@dataclass
class Predictor:
    """Net + preprocessing + whole-case inferer + post-processing, ready to predict NIfTI files.

    :meth:`predict_file` brings the image to the training orientation recorded in the preprocessing (an exact axis
    permutation/flip, never a resampling), predicts, maps the labels back with the inverse and writes them with the
    input's header, so the same voxels stored RAS, LPS, slices first or last give the same label map.
    """

    net: nn.Module
    inferer: Callable[[torch.Tensor, nn.Module], torch.Tensor]
    preprocessor: Any | None = None
    postprocess: Callable | None = None
    device: torch.device = torch.device("cpu")

    def predict_array(self, image: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
        """Label map ``uint8`` of the spatial shape of ``image``: one volume ``(*spatial)`` or ``(C, *spatial)``.

        ``image`` must already be in the training orientation (see :meth:`reorientation`); ``spacing`` is in mm
        per array axis.
        """
        image = np.asarray(image)
        xt = self.prepare(image, spacing)
        with torch.inference_mode():
            out = self.inferer(xt, self.net)
        if isinstance(out, list | tuple):  # deep supervision in eval: full resolution first
            out = out[0]
        return labels_on_original_grid(out[0], image.shape[-3:], self.preprocessor, self.postprocess)

    def prepare(self, image: np.ndarray, spacing: Sequence[float]) -> torch.Tensor:
        """The net's input ``(1, C, *preprocessed spatial)`` float32 on the CPU: ``image`` preprocessed (an ensemble
        does this once for all its members)."""
        if self.preprocessor is not None:
            x = np.asarray(self.preprocessor.preprocess(image, spacing), dtype=np.float32)
        else:
            x = np.asarray(image, dtype=np.float32)
            x = x[None] if x.ndim == 3 else x
        return torch.from_numpy(x)[None]  # the inferer moves it to the net's device (once, when the output fits there)

    def reorientation(self, affine: np.ndarray, shape: Sequence[int], name: object = "image") -> Reorientation:
        """Permutation/flip from a stored array to the training orientation (identity without a recorded one)."""
        if self.preprocessor is not None and hasattr(self.preprocessor, "reorientation"):
            return self.preprocessor.reorientation(affine, shape, name=name)
        return Reorientation.to_codes(affine, shape, None, name=name)

    def predict_volume(self, image: np.ndarray, affine: np.ndarray, name: object = "image") -> np.ndarray:
        """Label map ``uint8`` of the spatial shape of ``image`` (``(*spatial)`` or ``(C, *spatial)``) stored in any
        orientation (``affine``: its 4x4)."""
        first = image.ndim - 3
        r = self.reorientation(affine, image.shape[first:], name=name)
        labels = self.predict_array(r.apply(image, first_axis=first), r.apply_spacing(spacing_from_affine(affine)))
        return r.undo(labels)

    def predict_labels(self, case: Any) -> tuple[np.ndarray, np.ndarray]:
        """``(label map uint8, affine)`` of one :class:`~segzoo.data.sources.ImageCase` (channel files, a 4D file, a
        DICOM series, a BraTS or CHAOS case): on the grid of the array its ``load_image`` gives."""
        image, affine = case.load_image()
        channels = _expected_channels(self.net)
        if channels is not None and image.shape[0] != channels:
            raise DataError(
                f"{case.image}: case '{case.case_id}' has {image.shape[0]} channels; the model takes {channels}"
            )
        return self.predict_volume(image if image.shape[0] > 1 else image[0], affine, name=case.image), affine

    def predict_case(self, case: Any, output_path: Path) -> Path:
        """Predict one case and write ``output_path`` (atomically) as the case writes its labels
        (:meth:`~segzoo.data.sources.ImageCase.prediction_output`: NIfTI inputs on the grid and with the header of
        their first channel file)."""
        out = case.prediction_output(*self.predict_labels(case))
        return save_nifti(out.labels, None if out.header is not None else out.affine, output_path, header=out.header)

    def predict_file(self, image_path: Path, output_path: Path) -> Path:
        """Predict one NIfTI file and write ``output_path`` (atomically) with the input's shape and header: the
        one-channel case of :meth:`predict_case`."""
        from segzoo.data.sources import ImageCase

        image_path = Path(image_path)
        return self.predict_case(ImageCase(case_name(image_path), (image_path,)), output_path)


def write_labels(labels: np.ndarray, source: Path, output_path: Path, affine: np.ndarray | None = None) -> Path:
    """Write a ``uint8`` label map atomically on the grid of ``source`` (the input's first channel file), with its
    NIfTI header (qform, sform and codes kept: :func:`segzoo.data.io.save_nifti`); ``affine`` serves a 4D input, whose
    header does not describe a label map. ``segzoo predict`` (:class:`segzoo.tasks.NiftiPredictionWriter`) writes
    through it."""
    from segzoo.data.io import label_map_header

    header = label_map_header(Path(source))
    if header is None and affine is None:
        from segzoo.data.io import load_nifti

        affine = load_nifti(source)[1]
    return save_nifti(labels, affine if header is None else None, output_path, header=header)


def _expected_channels(net: nn.Module) -> int | None:
    value = getattr(net, "init_config", {}).get("init_args", {}).get("in_channels")
    return int(value) if value is not None else None


def spatial_dims(net: nn.Module) -> int | None:
    """2 or 3 for a segzoo net (its ``spatial_dims``, or its stored constructor config's), else ``None``."""
    dims = getattr(net, "spatial_dims", None)
    if dims is None:
        dims = (getattr(net, "init_config", None) or {}).get("init_args", {}).get("spatial_dims")
    return None if dims is None else int(dims)


def find_cases(
    input_path: str | os.PathLike,
    in_channels: int = 1,
    preprocessor: Any | None = None,
    problems: list[str] | None = None,
) -> list[Any]:
    """The cases to predict, as :class:`~segzoo.data.sources.ImageCase` objects.

    - a MONAI datalist ``.json``: its ``test`` entries (or ``training``, when it has no test list);
    - a folder with a dataset.json (nnU-Net raw / Decathlon): its test cases (``imagesTs``, the ``test`` list);
    - a BraTS case folder or a folder of them (also 2018's ``HGG/``, ``LGG/``): every case, ``<case>_seg.nii.gz``;
    - a CHAOS ``Train_Sets`` / ``Test_Sets`` tree: every case's series of the sequence the model was trained on;
    - a folder of nnU-Net channel files ``{case}_{XXXX}.nii.gz``: grouped by case (a case lacking a channel fails
      alone, naming the missing file); with one channel, ``{case}_0000.nii.gz`` predicts to ``{case}.nii.gz`` as
      nnU-Net writes it;
    - otherwise :func:`find_inputs` (NIfTI files, KiTS19 case folders); a multi-channel model reads each file as a
      4D image with the channels on its last axis (the Decathlon's).

    A model trained on BraTS or CHAOS slices (``preprocessor`` of type ``"slice2d"``) predicts its dataset's layout
    only (a CHAOS one also a bare DICOM series folder, read as CHAOS series are); other inputs are one ``DataError``.
    ``problems``: where the layout's reader finds cases it cannot predict (a BraTS case lacking a modality), one line
    each is appended and the other cases are returned; without a list, the first such line is raised.
    """
    from segzoo.data.sources import ImageCase, group_channel_files, open_source

    root = Path(input_path)
    layout = _layout_cases(root, preprocessor)
    if layout is not None:
        cases, found_problems = layout
        if found_problems and problems is None:
            raise DataError(found_problems[0])
        if problems is not None:
            problems.extend(found_problems)
        wrong = [c for c in cases if c.num_channels != in_channels]
        if wrong:
            raise DataError(f"{wrong[0]}: {wrong[0].num_channels} channel(s); the model takes {in_channels}")
        return cases
    if root.is_file() and root.suffix.lower() == ".json" or (root.is_dir() and (root / "dataset.json").is_file()):
        source = open_source(root)
        cases = source.test or (source.training if root.is_file() else [])
        if not cases:
            raise DataError(f"{root}: no test cases (imagesTs / 'test') to predict")
        if source.in_channels != in_channels:
            raise DataError(f"{root}: {source.in_channels} channels; the model takes {in_channels}")
        return cases
    if root.is_dir():
        groups: dict[str, dict[int, Path]] = {}
        others: list[Path] = []  # NIfTI files not named {case}_{XXXX}: never dropped silently
        for ending in (".nii.gz", ".nii"):
            found, odd = group_channel_files(root, ending)
            others += odd
            for case, files in found.items():
                groups.setdefault(case, {}).update(files)
        if groups and (in_channels > 1 or (not others and all(set(f) == {0} for f in groups.values()))):
            ending = {c: files[min(files)].name[len(f"{c}_0000") :] for c, files in groups.items()}
            cases = [
                ImageCase(
                    case,
                    tuple(files.get(i, root / f"{case}_{i:04d}{ending[case]}") for i in range(in_channels)),
                    num_channels=in_channels,
                )
                for case, files in sorted(groups.items())
            ]
            # other files: 4D images with the channels on their last axis (refused one by one if they are not)
            cases += [ImageCase(case_name(p), (p,), four_d=True, num_channels=in_channels) for p in sorted(others)]
            return cases
    paths = find_inputs(root)
    return [ImageCase(case_name(p), (p,), four_d=in_channels > 1, num_channels=in_channels) for p in paths]


def slice_dataset(preprocessor: Any | None) -> str | None:
    """``"brats"`` / ``"chaos"`` for a model trained on that dataset's slices (its ``slice2d`` preprocessing)."""
    return getattr(preprocessor, "dataset", None) if getattr(preprocessor, "type", None) == "slice2d" else None


def _layout_cases(root: Path, preprocessor: Any | None) -> tuple[list[Any], list[str]] | None:
    """``(cases, problems)`` when ``root`` is a BraTS or CHAOS layout (or must be one for the model), else ``None``."""
    from segzoo.data.brats import brats_file
    from segzoo.data.sources.brats import brats_cases, is_brats
    from segzoo.data.sources.chaos import chaos_series_cases, is_chaos

    dataset = slice_dataset(preprocessor)
    if not root.exists():
        raise DataError(f"{root}: no such file or folder")
    if dataset is not None and root.is_file():
        what = "a NIfTI volume" if is_nifti_name(root) else "a file"
        expected = (
            "a BraTS case folder (<case>/<case>_{t1,t1ce,t2,flair}.nii.gz) or a folder of them"
            if dataset == "brats"
            else "a CHAOS DICOM series folder (*.dcm) or a CHAOS Train_Sets/Test_Sets tree"
        )
        raise DataError(
            f"{root}: {what}; this checkpoint is a 2D net trained on {dataset.upper()}, it predicts {expected}"
        )
    if root.is_file() or (root / "dataset.json").is_file():
        return None
    if dataset == "chaos" or (dataset is None and (is_chaos(root) or is_chaos(root / "Test_Sets"))):
        cases = chaos_series_cases(root, getattr(preprocessor, "sequence", None))
        if not cases and dataset == "chaos":
            raise DataError(
                f"{root}: no DICOM series (*.dcm) and no CHAOS Train_Sets/Test_Sets/MR/<id>/{{T1DUAL,T2SPIR}} cases "
                "found; this checkpoint is a 2D net trained on CHAOS"
            )
        return (cases, []) if cases else None
    if dataset == "brats" or (dataset is None and (brats_file(root, "flair") is not None or is_brats(root))):
        if brats_file(root, "flair") is None and not is_brats(root):
            nifti = any(map(is_nifti_name, root.iterdir()))
            raise DataError(
                f"{root}: no BraTS case folder (<case>/<case>_{{t1,t1ce,t2,flair}}.nii.gz) found; this checkpoint is "
                "a 2D net trained on BraTS" + (" - for NIfTI volumes use a 3D checkpoint" if nifti else "")
            )
        return brats_cases(root)
    return None


# the settings of a stored sliding-window inferer that describe how the model's windows are blended (its own
# SlidingWindowTTAInferer, or MONAI's SlidingWindowInferer); device, memory and mirroring are chosen at run time
_WINDOW_ARGS = ("sw_batch_size", "overlap", "mode", "sigma_scale", "padding_mode")
_WINDOW_DEFAULTS = {"sw_batch_size": 2, "overlap": 0.5}


def stored_window(loaded: LoadedModel) -> dict[str, Any]:
    """The window settings stored with a model (``sw_batch_size``, ``overlap``, ``mode``, ``sigma_scale``,
    ``padding_mode`` of its recorded sliding-window inferer), with segzoo infer's defaults (2 windows per pass,
    overlap 0.5) where the record has none; a bad stored value raises one ``DataError`` naming the file."""
    record = loaded.format.get("inferer") or {}
    args = record.get("init_args") or {} if "SlidingWindow" in str(record.get("class_path")) else {}
    window = {**_WINDOW_DEFAULTS, **{k: args[k] for k in _WINDOW_ARGS if args.get(k) is not None}}
    ok = (
        isinstance(window["sw_batch_size"], int)
        and window["sw_batch_size"] >= 1
        and isinstance(window["overlap"], int | float)
        and 0 <= window["overlap"] < 1
        and window.get("mode", "gaussian") in ("gaussian", "constant")
    )
    if not ok:
        raise DataError(f"{loaded.source}: the stored sliding-window settings are not usable: {window}")
    return window


def load_predictor(
    source: str | os.PathLike | LoadedModel,
    device: str = "cpu",
    tta: bool | str = True,
    overlap: float | None = None,
    sw_batch_size: int | None = None,
    postprocess: bool = True,
    roi_size: Sequence[int] | None = None,
    amp: bool | None = None,
    max_batch: int | str | None = "auto",
    memory_budget_gb: float | None = None,
    trust: bool = False,
    crop: str = "none",
    coarse_to_fine: bool = False,
    backend: str = "torch",
) -> Predictor:
    """Build a :class:`Predictor` from a ``segzoo fit`` checkpoint or a pretrained folder
    (:func:`segzoo.checkpoint.load_checkpoint`: nothing from the file runs unless ``trust``).

    The net runs on ``device``; the stitched output stays there when it fits (``memory_budget_gb``, default half
    the free accelerator memory) and is streamed to the CPU otherwise. ``amp``: bf16 autocast (``None``: on
    for CUDA, off on a CPU). ``max_batch``: most
    windows x flips per forward pass (bounds activation memory; ``"auto"``: all flips at once on an accelerator, one
    per pass on a CPU). ``tta``: ``"all"`` / True, ``"inplane"``, ``"none"`` / False
    (:func:`~segzoo.inference.sliding_window.tta_mirror_axes`); ``crop``: ``"none"``, ``"exact"``, ``"regrid"`` and
    ``coarse_to_fine`` (see :class:`~segzoo.inference.sliding_window.SlidingWindowTTAInferer`; with
    ``postprocess``, the coarse pass keeps only what the post-processing keeps); ``backend``: ``"torch"``,
    ``"onnxruntime"`` or ``"openvino"`` (the exported net, on the CPU; :mod:`segzoo.inference.backends`).
    ``trust``: unpickle a checkpoint that weights-only loading refuses (runs any code it holds; warns).

    The window is the one stored with the model (:func:`stored_window`: size, overlap, blending mode and sigma,
    padding, windows per pass); ``roi_size``, ``overlap`` and ``sw_batch_size`` override it only when given.
    Mirroring is a deployment choice (``tta``): recipes validate without it to save time.

    Raises:
        segzoo.checkpoint.CheckpointError: (a ``DataError``) one line naming the file and the reason.
    """
    from segzoo.checkpoint import load_checkpoint
    from segzoo.inference.backends import BACKENDS, backend_net
    from segzoo.inference.sliding_window import SlidingWindowTTAInferer, crop_arguments, tta_mirror_axes

    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend != "torch" and torch.device(device).type != "cpu":
        raise ValueError(f"backend {backend!r} runs on the CPU; use --device cpu or --backend torch")

    loaded = source if isinstance(source, LoadedModel) else load_checkpoint(source, trust=trust)
    dev = torch.device(device)
    post = loaded.postprocess() if postprocess else None
    pre = loaded.preprocessor()
    if spatial_dims(loaded.net) == 2:  # a 2D net on volumes: its preprocessing cuts the slices
        from monai.inferers import SliceInferer

        if pre is None:
            raise DataError(
                f"{loaded.source}: a 2D net without its data preprocessing (checkpoint written before segzoo stored "
                "it); fit or resume it with the current segzoo to predict volumes slice by slice"
            )
        if backend != "torch":
            raise ValueError(f"backend {backend!r}: 2D nets on volumes run with the torch backend")
        size = list(pre.image_size)
        inferer = SliceInferer(roi_size=size, sw_batch_size=max(sw_batch_size or 16, 1), spatial_dim=0, progress=False)
        net2d = loaded.net.to(dev).eval()
        if getattr(pre, "regions", None):
            from segzoo.nets.regions import RegionScores

            net2d = RegionScores(net2d, pre.regions_class_order, pre.num_labels).eval()
        return Predictor(net2d, inferer, pre, post, dev)
    roi = list(roi_size) if roi_size is not None else loaded.roi_size
    if roi is None:
        raise DataError(f"{loaded.source}: holds no sliding-window size; pass --roi-size")
    window = stored_window(loaded)
    if overlap is not None:
        window["overlap"] = overlap
    if sw_batch_size is not None:
        window["sw_batch_size"] = sw_batch_size
    inferer = SlidingWindowTTAInferer(
        roi_size=roi,
        **window,
        mirror_axes=tta_mirror_axes(tta, len(roi)),
        sw_device=str(dev),
        device="auto",
        amp=(dev.type == "cuda" if amp is None else amp) and backend == "torch",
        max_batch=max_batch,
        memory_budget_gb=memory_budget_gb,
        coarse_to_fine=coarse_to_fine,
        coarse_select=post,  # the fine pass runs only where the post-processed answer can hold foreground
        **crop_arguments(crop),
    )
    net = loaded.net.to(dev).eval()
    if getattr(pre, "regions", None):  # a region net: class scores whose argmax is the label map
        from segzoo.nets.regions import RegionScores

        net = RegionScores(net, pre.regions_class_order, pre.num_labels).eval()
    if backend != "torch":
        args = getattr(net, "init_config", {}).get("init_args", {})
        shape = (1, int(args.get("in_channels", 1)), *roi)
        net = backend_net(net, backend, shape, out_channels=args.get("out_channels"))
    return Predictor(
        net=net,
        inferer=inferer,
        preprocessor=pre,
        postprocess=post,
        device=dev,
    )
