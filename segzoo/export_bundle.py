"""Export a segzoo checkpoint as a MONAI bundle (``segzoo export --format monai-bundle``) for MONAI's own tools:
``python -m monai.bundle run``, MONAI Label and MONAI Deploy.

The bundle follows the MONAI model zoo's layout and config ids (``bundle_root``, ``dataset_dir``, ``output_dir``,
``network_def``, ``network``, ``preprocessing``, ``inferer``, ``postprocessing``, ``evaluator``)::

    DIR/configs/metadata.json   versions, input channels, output labels (MONAI's bundle specification)
    DIR/configs/inference.json  segzoo's preprocessing as MONAI transforms, SlidingWindowInferer, Invertd, SaveImaged
    DIR/models/model.pt         the net's state dict
    DIR/models/model.ts         the net traced with TorchScript (metadata and inference.json as extra files)
    DIR/docs/README.md          how to run it

``network_def`` names the segzoo net class by ``_target_``, so running the bundle needs segzoo installed (the net and
the two transforms of :mod:`segzoo.inference.monai_bundle` that MONAI lacks); MONAI's ``ConfigParser`` imports and
runs what the config names, which is MONAI's business on the user's side. segzoo writes bundles and never reads one:
the checkpoint is read by :func:`segzoo.checkpoint.load_checkpoint` (nothing from it runs), and every value written
into ``inference.json`` is plain data checked not to be a ConfigParser expression or reference.

The bundle predicts what ``segzoo infer --tta none`` predicts (the same orientation, normalisation, resampling,
sliding window with softmax per window, probabilities mapped back to the input grid, argmax, post-processing); see
``docs/export.md`` for what differs (no mirroring TTA, MONAI's NIfTI header).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segzoo.data.io import DataError

#: the schema the model zoo's newest bundles name (MONAI's verify_metadata downloads it from this URL)
SCHEMA_URL = "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"
IMAGE_KEY = "image"
# ConfigParser reads a string starting with these as an expression, a reference or a macro, and splits ids at "#"
_CONFIG_SIGILS = ("$", "@", "%")
_CONFIG_KEYS = ("_target_", "_disabled_", "_requires_", "_desc_", "_mode_")
_RESIZE_MODES = {1: "trilinear", 0: "nearest-exact"}  # segzoo's image_order -> F.interpolate mode


def _plain(value: Any, where: str) -> Any:
    """``value`` (plain JSON data) checked to read as itself in MONAI's ConfigParser."""
    if isinstance(value, str):
        if value.startswith(_CONFIG_SIGILS):
            raise DataError(f"{where}: the string {value!r} would be run as a MONAI config expression or reference")
        return value
    if isinstance(value, list | tuple):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        for k in value:
            if "#" in str(k) or str(k) in _CONFIG_KEYS:
                raise DataError(f"{where}: the key {k!r} has a meaning in MONAI configs")
        return {str(k): _plain(v, f"{where}.{k}") for k, v in value.items()}
    return value


# ---------------------------------------------------------------------------------------------- preprocessing
def _channel_normalisation(scheme: str, stats: dict[str, float] | None, key: str) -> list[dict[str, Any]]:
    """MONAI transforms equal to segzoo's normalisation of one channel (``Preprocessor.normalize``)."""
    if scheme == "ct":
        lo, hi = float(stats["percentile_00_5"]), float(stats["percentile_99_5"])
        return [  # an exact clip (values equal to a bound keep it), then z-score with the foreground statistics
            {"_target_": "ThresholdIntensityd", "keys": key, "threshold": lo, "above": True, "cval": lo},
            {"_target_": "ThresholdIntensityd", "keys": key, "threshold": hi, "above": False, "cval": hi},
            {
                "_target_": "NormalizeIntensityd",
                "keys": key,
                "subtrahend": float(stats["mean"]),
                "divisor": max(float(stats["std"]), 1e-8),
            },
        ]
    if scheme == "zscore":  # the case's own mean and (population) std over all voxels
        return [{"_target_": "NormalizeIntensityd", "keys": key}]
    if scheme == "rescale_0_1":
        return [{"_target_": "ScaleIntensityd", "keys": key, "minv": 0.0, "maxv": 1.0}]
    if scheme == "none":
        return []
    raise DataError(f"normalisation {scheme!r} has no MONAI equivalent in the bundle writer")


def _normalisation(pre: Any) -> list[dict[str, Any]]:
    """Per-channel normalisation of a ``CTPreprocessor`` or ``Preprocessor`` as MONAI transforms on ``image``.

    Several channels are split (``SplitDimd``), normalised one by one and joined again (``ConcatItemsd``). It runs
    before ``Orientationd``: every scheme is per voxel or uses whole-case statistics, which a permutation/flip keeps,
    and so ``image`` still has no recorded transform for ``Invertd`` when the channels are joined.
    """
    from segzoo.data.preprocessor import CTPreprocessor

    if isinstance(pre, CTPreprocessor):
        schemes = [
            (
                "ct",
                {"percentile_00_5": pre.clip_low, "percentile_99_5": pre.clip_high, "mean": pre.mean, "std": pre.std},
            )
        ]
    else:
        schemes = list(zip(pre.normalization, pre.channel_stats, strict=True))
    if len(schemes) == 1:
        return _channel_normalisation(*schemes[0], IMAGE_KEY)
    keys = [f"{IMAGE_KEY}_{c}" for c in range(len(schemes))]
    out: list[dict[str, Any]] = [
        {
            "_target_": "SplitDimd",
            "keys": IMAGE_KEY,
            "dim": 0,
            "keepdim": True,
            "output_postfixes": [str(c) for c in range(len(schemes))],
        }
    ]
    for key, (scheme, stats) in zip(keys, schemes):
        out += _channel_normalisation(scheme, stats, key)
    out += [
        {"_target_": "ConcatItemsd", "keys": keys, "name": IMAGE_KEY, "dim": 0},
        {"_target_": "DeleteItemsd", "keys": keys},
    ]
    return out


def preprocessing_transforms(pre: Any, in_channels: int) -> list[dict[str, Any]]:
    """segzoo's preprocessing ``pre`` (``CTPreprocessor``, ``Preprocessor`` or ``None``) as MONAI transform configs.

    Load (nibabel, like segzoo), channels first, normalise, reorient to the training axis codes (an exact
    permutation/flip, as segzoo), resize to the training spacing (:class:`~segzoo.inference.monai_bundle.ResizeToSpacingd`).
    """
    from segzoo.data.preprocessor import CTPreprocessor, Preprocessor

    load = [
        {"_target_": "LoadImaged", "keys": IMAGE_KEY, "reader": "NibabelReader", "image_only": True},
        {"_target_": "EnsureChannelFirstd", "keys": IMAGE_KEY},
    ]
    if pre is None:
        return load
    if not isinstance(pre, CTPreprocessor | Preprocessor):
        raise DataError(
            f"preprocessing {type(pre).__name__} has no MONAI bundle form (3D CTPreprocessor and Preprocessor only)"
        )
    if getattr(pre, "regions", None):  # sigmoid region outputs: softmax + argmax would not give the labels
        raise DataError("a region-based model (nnU-Net regions) has no MONAI bundle form yet; softmax + argmax only")
    channels = 1 if isinstance(pre, CTPreprocessor) else pre.in_channels
    if channels != in_channels:
        raise DataError(f"the preprocessing normalises {channels} channels; the net takes {in_channels}")
    if pre.image_order not in _RESIZE_MODES:
        raise DataError(
            f"image_order={pre.image_order} (cubic resampling, scipy) has no MONAI transform equal to it; the bundle "
            "writer supports image_order 1 (linear) and 0 (nearest)"
        )
    out = [*load, *_normalisation(pre)]  # LoadImaged gives float32, as segzoo reads images
    if pre.orientation is not None:
        # nibabel's convention (axis codes name where each axis points, RAS+), as segzoo's reorientation
        labels = [["L", "R"], ["P", "A"], ["I", "S"]]
        out.append(
            {"_target_": "Orientationd", "keys": IMAGE_KEY, "axcodes": "".join(pre.orientation), "labels": labels}
        )
    out.append(
        {
            "_target_": "segzoo.inference.monai_bundle.ResizeToSpacingd",
            "keys": IMAGE_KEY,
            "pixdim": list(pre.target_spacing),
            "mode": _RESIZE_MODES[pre.image_order],
        }
    )
    return out


# ------------------------------------------------------------------------------------------------------ configs
def _inferer_config(fmt: dict[str, Any], roi: Sequence[int]) -> dict[str, Any]:
    """MONAI's ``SlidingWindowInferer`` with the stored inferer's window placement and blending (no mirroring)."""
    args = (fmt.get("inferer") or {}).get("init_args") or {}
    return {
        "_target_": "SlidingWindowInferer",
        "roi_size": [int(r) for r in roi],
        "sw_batch_size": int(args.get("sw_batch_size", 2)),
        "overlap": float(args.get("overlap", 0.5)),
        "mode": str(args.get("mode", "gaussian")),
        "sigma_scale": float(args.get("sigma_scale", 0.125)),
        "padding_mode": str(args.get("padding_mode", "constant")),
        "cval": 0.0,
    }


def _datalist(in_channels: int) -> str:
    """The datalist expression: NIfTI files in ``dataset_dir``; several channels: nnU-Net's ``CASE_XXXX.nii.gz``
    channel files, grouped by case (MONAI's ``LoadImaged`` stacks a list of files as channels)."""
    if in_channels == 1:
        return (
            "$[{'image': f} for f in sorted(glob.glob(os.path.join(@dataset_dir, '*.nii.gz')) "
            "+ glob.glob(os.path.join(@dataset_dir, '*.nii')))]"
        )
    return (
        "$[{'image': [f[: -len('0000.nii.gz')] + '%04d.nii.gz' % c for c in range("
        f"{in_channels})]}} for f in sorted(glob.glob(os.path.join(@dataset_dir, '*_0000.nii.gz')))]"
    )


def inference_config(loaded: Any, roi: Sequence[int]) -> dict[str, Any]:
    """``configs/inference.json`` of a loaded checkpoint (:class:`segzoo.checkpoint.LoadedModel`)."""
    from segzoo.checkpoint import callable_config

    net_cfg = loaded.net.init_config
    in_channels = int(net_cfg["init_args"].get("in_channels", 1))
    pre = loaded.preprocessor()
    post = loaded.postprocess()
    postprocessing: list[dict[str, Any]] = [
        {
            "_target_": "Invertd",
            "keys": "pred",
            "transform": "@preprocessing",
            "orig_keys": IMAGE_KEY,
            "nearest_interp": False,  # probabilities are resampled linearly back to the input grid, as segzoo does
            "to_tensor": True,
        },
        {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
    ]
    if post is not None:
        cfg = callable_config(post, strict=True)
        postprocessing.append(
            {
                "_target_": "segzoo.inference.monai_bundle.LabelMapPostprocessd",
                "keys": "pred",
                "postprocess": {"_target_": cfg["class_path"], **_plain(cfg["init_args"], "post-processing")},
            }
        )
    postprocessing.append(
        {
            "_target_": "SaveImaged",
            "keys": "pred",
            "output_dir": "@output_dir",
            "output_postfix": "@output_postfix",
            "output_ext": "@output_ext",
            "output_dtype": "$numpy.uint8",
            "resample": False,
            "separate_folder": False,
            "print_log": False,
        }
    )
    return {
        "imports": ["$import glob", "$import os"],
        "bundle_root": ".",
        "output_dir": "$@bundle_root + '/eval'",
        "output_postfix": "seg",
        "output_ext": ".nii.gz",
        "dataset_dir": "$@bundle_root + '/data'",
        "datalist": _datalist(in_channels),
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": {"_target_": net_cfg["class_path"], **_plain(net_cfg["init_args"], "net config")},
        # segzoo averages softmax probabilities over the windows, not logits: the softmax runs per window
        "network": "$torch.nn.Sequential(@network_def, torch.nn.Softmax(dim=1)).to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": preprocessing_transforms(pre, in_channels)},
        "dataset": {"_target_": "Dataset", "data": "@datalist", "transform": "@preprocessing"},
        "dataloader": {
            "_target_": "DataLoader",
            "dataset": "@dataset",
            "batch_size": 1,
            "shuffle": False,
            "num_workers": 0,
        },
        "inferer": _inferer_config(loaded.format, roi),
        "postprocessing": {"_target_": "Compose", "transforms": postprocessing},
        "handlers": [{"_target_": "StatsHandler", "iteration_log": False}],
        "evaluator": {
            "_target_": "SupervisedEvaluator",
            "device": "@device",
            "val_data_loader": "@dataloader",
            "network": "@network",
            "inferer": "@inferer",
            "postprocessing": "@postprocessing",
            "val_handlers": "@handlers",
            "amp": False,  # segzoo infer runs float32 on a CPU; bf16 autocast would change labels at the margins
        },
        "load_pretrain": True,
        "checkpointloader": {
            "_target_": "CheckpointLoader",
            "load_path": "$@bundle_root + '/models/model.pt'",
            "load_dict": {"model": "@network_def"},
            "map_location": "@device",
        },
        "initialize": ["$@checkpointloader(@evaluator) if @load_pretrain else None"],
        "run": ["$@evaluator.run()"],
    }


def _channel_names(pre: Any, in_channels: int, names: Sequence[str] | None) -> list[str]:
    if names is not None:
        if len(names) != in_channels:
            raise DataError(f"--channel-names: {len(names)} names for the net's {in_channels} input channels")
        return list(names)
    schemes = getattr(pre, "normalization", ["ct"] if pre is not None and hasattr(pre, "clip_low") else [])
    return [("CT" if s == "ct" else f"channel {c}") for c, s in enumerate(schemes)] or [
        f"channel {c}" for c in range(in_channels)
    ]


def metadata(
    loaded: Any,
    roi: Sequence[int],
    label_names: Sequence[str] | None = None,
    channel_names: Sequence[str] | None = None,
    version: str = "0.1.0",
) -> dict[str, Any]:
    """``configs/metadata.json``: MONAI's mandatory keys (versions, task, authors, ``network_data_format``)."""
    import monai
    import nibabel

    import segzoo

    args = loaded.net.init_config["init_args"]
    in_channels, out_channels = int(args.get("in_channels", 1)), int(args["out_channels"])
    pre = loaded.preprocessor()
    channels = _channel_names(pre, in_channels, channel_names)
    if label_names is None:
        from segzoo.inference.outputs import default_label_names

        post = (loaded.format.get("postprocess") or {}).get("class_path", "")
        known = {}
        if post.rsplit(".", 1)[-1] == "KiTSPostprocess":
            from segzoo.data.kits19 import KITS19_LABELS

            known = dict(KITS19_LABELS)
        label_names = default_label_names(range(1, out_channels), known)
    elif len(label_names) != out_channels - 1:
        raise DataError(f"--label-names: {len(label_names)} names for the {out_channels - 1} labels of the net")
    labels = ["background", *label_names]
    ct = all(c == "CT" for c in channels)
    name = Path(str(loaded.source)).stem or "segzoo"
    spacing = getattr(pre, "target_spacing", None)
    return {
        "schema": SCHEMA_URL,
        "version": version,
        "changelog": {version: f"exported by segzoo {segzoo.__version__} from {Path(str(loaded.source)).name}"},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        # MONAI 1.6 reads the older "optional_packages_version" as this key (and warns)
        "required_packages_version": {
            "segzoo": segzoo.__version__,
            "nibabel": nibabel.__version__,
            "pytorch-ignite": _version("pytorch-ignite"),
            "fire": _version("fire"),
        },
        "supported_apps": {},
        "name": f"segzoo {loaded.net.init_config['class_path'].rsplit('.', 1)[-1]} ({name})",
        "task": f"{len(label_names)}-label segmentation of {'CT' if ct else ', '.join(channels)} volumes",
        "description": (
            f"A segzoo {loaded.net.init_config['class_path']} exported with its preprocessing (orientation "
            f"{''.join(pre.orientation) if getattr(pre, 'orientation', None) else 'as stored'}, spacing "
            f"{list(spacing) if spacing else 'as stored'} mm, per-channel normalisation), sliding-window inference "
            "and post-processing; `monai.bundle run` predicts what `segzoo infer --tta none` predicts."
        ),
        "authors": "segzoo",
        "copyright": "the authors of the trained model",
        "data_source": "see the training run of the exported checkpoint",
        "data_type": "nibabel",
        "image_classes": f"{in_channels} channel(s): {', '.join(channels)}",
        "label_classes": ", ".join(f"{i} is {n}" for i, n in enumerate(labels)),
        "pred_classes": f"{out_channels} channels of class scores; the label is the index of the largest",
        "eval_metrics": {},
        "intended_use": "Research; not for diagnostic use",
        "references": [],
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "hounsfield" if ct else "magnitude",
                    "modality": "CT" if ct else "n/a",
                    "num_channels": in_channels,
                    "spatial_shape": [int(r) for r in roi],
                    "dtype": "float32",
                    "value_range": [],
                    "is_patch_data": True,
                    "channel_def": {str(c): n for c, n in enumerate(channels)},
                }
            },
            "outputs": {
                "pred": {
                    "type": "image",
                    "format": "labels",
                    "modality": "CT" if ct else "n/a",
                    "num_channels": out_channels,
                    "spatial_shape": [int(r) for r in roi],
                    "dtype": "float32",
                    "value_range": [],
                    "is_patch_data": True,
                    "channel_def": {str(c): n for c, n in enumerate(labels)},
                }
            },
        },
    }


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return ""


def _readme(meta: dict[str, Any], in_channels: int) -> str:
    inputs = (
        "a folder of NIfTI images (`*.nii.gz`, `*.nii`)"
        if in_channels == 1
        else f"a folder of nnU-Net channel files (`CASE_0000.nii.gz` ... `CASE_{in_channels - 1:04d}.nii.gz`)"
    )
    return "\n".join(
        [
            f"# {meta['name']}",
            "",
            meta["description"],
            "",
            f"Labels: {meta['label_classes']}.",
            "",
            "## Run",
            "",
            f"Needs `pip install segzoo pytorch-ignite fire` (the net is a segzoo class). Input: {inputs}.",
            "",
            "```bash",
            "python -m monai.bundle run --config_file configs/inference.json --bundle_root . \\",
            "    --dataset_dir IMAGES --output_dir PRED",
            "```",
            "",
            "Each image gives `PRED/<name>_seg.nii.gz` (uint8 labels on the image's own grid). `models/model.pt` is the",
            "net's state dict, `models/model.ts` the net traced with TorchScript (logits for a window; sliding window,",
            "pre- and post-processing are in `configs/inference.json`).",
            "",
        ]
    )


def _trace(net: torch.nn.Module, shape: Sequence[int]) -> torch.jit.ScriptModule:
    import warnings

    from segzoo.export import SingleOutput

    model = SingleOutput(net).eval()
    with torch.no_grad(), warnings.catch_warnings():
        # SegNet's input-size check becomes a constant of the trace: the traced net skips it, nothing else changes
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        return torch.jit.trace(model, torch.randn(*shape), check_trace=False)


def export_bundle(
    ckpt: str | os.PathLike,
    out: str | os.PathLike,
    label_names: Sequence[str] | None = None,
    channel_names: Sequence[str] | None = None,
    version: str = "0.1.0",
    trust: bool = False,
) -> Path:
    """Write the MONAI bundle of checkpoint (or pretrained folder) ``ckpt`` into the folder ``out``.

    The bundle is assembled in a temporary folder beside ``out`` and moved into place at the end; an ``out`` that
    exists must be empty or an earlier bundle (``configs/metadata.json``), which is replaced.

    Args:
        ckpt: a ``segzoo fit`` checkpoint or a pretrained folder (read by :func:`segzoo.checkpoint.load_checkpoint`).
        out: the bundle folder.
        label_names: names of the labels 1, 2, ... (default: the known names of the model, else ``label_<v>``).
        channel_names: names of the input channels (default ``CT`` for CT-normalised channels).
        version: the bundle's version in ``metadata.json``.
        trust: unpickle a checkpoint that weights-only loading refuses (runs code from the file; warns).

    Raises:
        DataError: one line naming the file or setting that cannot be exported; nothing is written.
    """
    from monai.data import save_net_with_metadata

    from segzoo.checkpoint import load_checkpoint
    from segzoo.utils import atomic_write_text

    loaded = load_checkpoint(ckpt, trust=trust)
    net = loaded.net
    config = getattr(net, "init_config", None)
    if config is None:
        raise DataError(f"{ckpt}: the net records no constructor config, so a bundle cannot rebuild it")
    if getattr(net, "spatial_dims", 3) != 3:
        raise DataError(
            f"{ckpt}: a 2D net; the MONAI bundle export covers 3D nets (see docs/export.md for 2D nets and MONAI's "
            "SliceInferer)"
        )
    roi = loaded.roi_size
    if roi is None:
        raise DataError(f"{ckpt}: holds no sliding-window size, which the bundle's inferer needs")
    in_channels = int(config["init_args"].get("in_channels", 1))
    try:
        inference = inference_config(loaded, roi)
        meta = metadata(loaded, roi, label_names, channel_names, version)
    except DataError as e:
        raise DataError(f"{ckpt}: {e}") from None

    out = Path(out)
    if out.exists() and (
        not out.is_dir() or (any(out.iterdir()) and not (out / "configs" / "metadata.json").is_file())
    ):
        raise DataError(f"{out}: exists and is neither empty nor a MONAI bundle; choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        (tmp / "configs").mkdir()
        (tmp / "models").mkdir()
        (tmp / "docs").mkdir()
        atomic_write_text(tmp / "configs" / "metadata.json", json.dumps(meta, indent=4) + "\n")
        atomic_write_text(tmp / "configs" / "inference.json", json.dumps(inference, indent=4) + "\n")
        atomic_write_text(tmp / "docs" / "README.md", _readme(meta, in_channels))
        state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
        torch.save(state, tmp / "models" / "model.pt")
        stream = io.BytesIO()
        save_net_with_metadata(
            _trace(net, (1, in_channels, *roi)),
            stream,
            meta_values=meta,
            more_extra_files={"inference.json": json.dumps(inference).encode()},
        )
        (tmp / "models" / "model.ts").write_bytes(stream.getvalue())
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
        tmp.rename(out)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
