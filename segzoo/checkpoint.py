"""The one place that reads and writes segzoo checkpoints and pretrained folders, and turns a whole-case net output
into the label map a user sees (restore to the original grid -> post-process -> ``uint8``).

Loading is never executing (see ``docs/inference.md``, "Loading checkpoints safely"):

- a Lightning checkpoint is read with ``torch.load(weights_only=True)``: tensors and plain data only. What segzoo stores
  beside the weights is plain JSON-able data under ``checkpoint["segzoo_format"]``::

      {"version": 1, "net": {"class_path", "init_args", "registry_name"},
       "inferer": {"roi_size", "class_path", "init_args"} | None, "postprocess": {"class_path", "init_args"} | None,
       "preprocessor": {"type": ..., **settings} | None}

- a pretrained folder holds ``config.json`` (the net), ``model.safetensors`` (the weights), and optionally
  ``preprocessor.json`` and ``inference.json`` (``{"inferer", "postprocess"}``);
- every class is looked up in an allow-list of classes segzoo's own code already defined: nets among the classes of
  registered nets (``segzoo.nets._registry.net_classes``), inferers in :data:`INFERERS`, post-processing in
  :data:`POSTPROCESSES`, preprocessing by ``"type"`` in :data:`PREPROCESSORS`. Nothing is imported from a string
  read from a file; anything else is refused with one :class:`CheckpointError` line naming the file and the class.

A checkpoint that only full unpickling can read loads with ``trust=True`` (``--trust-checkpoint``), after a warning.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
import inspect
import json
import os
import pickle
import re
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from segzoo.data.io import DataError
from segzoo.utils import atomic_path, atomic_write_text

FORMAT_KEY = "segzoo_format"
FORMAT_VERSION = 1
PRETRAINED_FILES = ("config.json", "model.safetensors", "preprocessor.json", "inference.json")
HF_PREFIX = "hf-hub:"  # a pretrained folder on the Hugging Face Hub (segzoo.hub)

# Allow-lists. A value is a class, or the "module.Class" of a class in segzoo's own code (imported lazily, so that
# reading a checkpoint imports no more than it needs); keys are the class paths a file may name (canonical
# ``module.QualName`` and the public re-export). The strings here are constants of this file, never read from a file.
PREPROCESSORS: dict[str, type | str] = {
    "ct": "segzoo.data.preprocessor.CTPreprocessor",
    "planned": "segzoo.data.preprocessor.Preprocessor",  # any dataset: per-channel normalisation from the plan
    "planned2d": "segzoo.data.slice2d.VolumeSlicePreprocessor",  # any dataset, 2D nets: slices of the coarsest axis
    "slice2d": "segzoo.data.slice2d.SlicePreprocessor",  # 2D nets: BraTS / CHAOS slice stacks (segzoo infer)
}
INFERERS: dict[str, type | str] = {
    "segzoo.inference.sliding_window.SlidingWindowTTAInferer": "segzoo.inference.sliding_window.SlidingWindowTTAInferer",
    "segzoo.inference.SlidingWindowTTAInferer": "segzoo.inference.sliding_window.SlidingWindowTTAInferer",
    "monai.inferers.inferer.SliceInferer": "monai.inferers.inferer.SliceInferer",
    "monai.inferers.SliceInferer": "monai.inferers.inferer.SliceInferer",
    "monai.inferers.inferer.SlidingWindowInferer": "monai.inferers.inferer.SlidingWindowInferer",
    "monai.inferers.SlidingWindowInferer": "monai.inferers.inferer.SlidingWindowInferer",
    "monai.inferers.inferer.SimpleInferer": "monai.inferers.inferer.SimpleInferer",
    "monai.inferers.SimpleInferer": "monai.inferers.inferer.SimpleInferer",
}
POSTPROCESSES: dict[str, type | str] = {
    "segzoo.inference.postprocess.KiTSPostprocess": "segzoo.inference.postprocess.KiTSPostprocess",
    "segzoo.inference.KiTSPostprocess": "segzoo.inference.postprocess.KiTSPostprocess",
}
# Net constructor arguments renamed after checkpoints were written with them (one spelling per concept across the
# nets, MONAI's first): per class path, old name -> today's name. A stored config that holds an old-only name is read
# with the whole map applied at once (MS-Dual's old int `features` is today's `attention_features`, its old
# `encoder_features` today's `features`). Constants of this file, never read from a file.
RENAMED_NET_ARGS: dict[str, dict[str, str]] = {
    "segzoo.nets.drnet.DRNet": {"kernel_sizes": "kernel_size", "deep_dpfm_depth": "dpfm_depth"},
    "segzoo.nets.baselines.unet.UNet2D": {"kernel_sizes": "kernel_size"},
    "segzoo.nets.baselines.denseaspp.DenseASPP": {"block_config": "layers"},
    "segzoo.nets.baselines.msdual.MSDual": {
        "encoder_features": "features",
        "encoder_layers": "layers",
        "features": "attention_features",
    },
}
# Net constructor arguments added after checkpoints were written, with the value that rebuilds the net those
# checkpoints hold: a stored config (every argument, defaults applied: SegNet.init_config) that lacks the name was
# written before it existed. Constants of this file, never read from a file.
ADDED_NET_ARGS: dict[str, dict[str, Any]] = {
    # issue 25: norm + act on the direction maps before the residual; older DR-Nets had linear maps
    "segzoo.nets.drnet.DRNet": {"map_norm_act": False},
}
# run-time placement of an inferer, not a property of the trained model: never stored
_INFERER_RUNTIME_ARGS = ("sw_device", "device", "progress", "memory_budget_gb")


class CheckpointError(DataError):
    """A checkpoint or pretrained folder that segzoo refuses or cannot read; the message is one line naming the file."""


class UntrustedCheckpointWarning(UserWarning):
    """A checkpoint is being unpickled because the caller passed ``trust=True`` (``--trust-checkpoint``)."""


def _class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _one_line(text: object, limit: int = 300) -> str:
    """``text`` as one line, shortened to ``limit`` characters (state-dict reports list hundreds of keys)."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def register_preprocessor(type_name: str, cls: type | str) -> None:
    """Allow preprocessing ``{"type": type_name, ...}`` to be rebuilt with ``cls.from_dict(settings)``.

    ``cls`` needs ``to_dict()`` (plain JSON data), a classmethod ``from_dict(dict)``, ``preprocess(image, spacing)``
    and ``restore(scores, original_shape)``.
    """
    PREPROCESSORS[type_name] = cls


def register_inferer(cls: type) -> None:
    """Allow checkpoints to name inferer ``cls`` (rebuilt with ``cls(**init_args)`` from JSON data)."""
    INFERERS[_class_path(cls)] = cls


def register_postprocess(cls: type) -> None:
    """Allow checkpoints to name post-processing ``cls`` (rebuilt with ``cls(**init_args)`` from JSON data)."""
    POSTPROCESSES[_class_path(cls)] = cls


def _allowed_class(class_path: object, allowed: dict[str, type | str]) -> type | None:
    """The class ``class_path`` names if it is in ``allowed`` (keys, or the classes they stand for), else ``None``."""
    if not isinstance(class_path, str):
        return None
    ref = allowed.get(class_path)
    if ref is None:  # a re-export path of an allowed class, e.g. "segzoo.nets.MSSUNet", in an already imported module
        module, _, name = class_path.rpartition(".")
        # the module's own namespace only: no import, and no module-level __getattr__ (which may import) is called
        candidate = vars(sys.modules[module]).get(name) if module in sys.modules else None
        refs = {_class_path(r) if isinstance(r, type) else r for r in allowed.values()}
        if isinstance(candidate, type) and _class_path(candidate) in refs:
            return candidate
        return None
    return _resolve(ref)


def _resolve(ref: type | str) -> type:
    """The class an allow-list entry stands for; a string entry is a constant of segzoo's code, imported lazily."""
    if isinstance(ref, type):
        return ref
    module, _, name = ref.rpartition(".")
    return getattr(importlib.import_module(module), name)


# ----------------------------------------------------------------------------------------------------- JSON data
def to_json_data(value: Any, where: str = "value") -> Any:
    """``value`` as plain JSON data (tuples -> lists, paths/devices -> str, enums -> their value, numpy scalars ->
    Python numbers); raises ``TypeError`` naming ``where`` for anything else."""
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, Path | torch.device):
        return str(value)
    if isinstance(value, list | tuple):
        return [to_json_data(v, where) for v in value]
    if isinstance(value, dict):
        return {str(k): to_json_data(v, f"{where}.{k}") for k, v in value.items()}
    raise TypeError(f"{where} of type {type(value).__name__} is not plain data (numbers, strings, lists, dicts)")


def _init_parameters(cls: type) -> list[str]:
    """Named constructor parameters of ``cls``, following ``*args/**kwargs`` into the base classes."""
    names: list[str] = []
    for klass in cls.__mro__:
        if klass is object or "__init__" not in klass.__dict__:
            continue
        params = inspect.signature(klass.__init__).parameters.values()
        names += [p.name for p in params if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if not any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params):
            break
    return list(dict.fromkeys(names))


def current_init_args(cls: type | None, init_args: dict[str, Any]) -> dict[str, Any]:
    """``init_args`` of net class ``cls`` with the names of :data:`RENAMED_NET_ARGS` mapped to today's, when they
    hold an old-only name (a config written before the rename), and the old values of :data:`ADDED_NET_ARGS` where a
    full stored config predates them; otherwise ``init_args`` unchanged."""
    renames = RENAMED_NET_ARGS.get(_class_path(cls), {}) if cls is not None else {}
    old_only = set(renames) - set(_init_parameters(cls)) if renames else set()
    if old_only & set(init_args):
        init_args = {renames.get(k, k): v for k, v in init_args.items()}
    added = ADDED_NET_ARGS.get(_class_path(cls), {}) if cls is not None else {}
    if added and "in_channels" in init_args:  # a full stored config (defaults applied), not a few overrides
        init_args = {**{k: v for k, v in added.items() if k not in init_args}, **init_args}
    return init_args


def callable_config(obj: Any, strict: bool = True, skip: Sequence[str] = ()) -> dict[str, Any] | None:
    """``{"class_path", "init_args"}`` of ``obj`` as plain JSON data, to rebuild it with ``cls(**init_args)``.

    The constructor arguments are read back from same-named attributes (dataclass fields, ``SegNet.init_config``,
    or ``inspect.signature`` of ``__init__``), so a class gains new arguments without any change here.

    Args:
        obj: the object; ``None`` gives ``None``.
        strict: raise ``TypeError`` naming the argument when one is not kept as an attribute or is not plain data
            (post-processing: a lost switch would silently change the labels); ``False`` leaves such arguments out
            (inferers: MONAI keeps device objects and buffers that are run-time settings).
        skip: argument names never stored.
    """
    if obj is None:
        return None
    cls = type(obj)
    if dataclasses.is_dataclass(obj):
        args = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if f.init}
    elif hasattr(obj, "init_config"):
        args = dict(obj.init_config.get("init_args", {}))
    else:
        args = {}
        for name in _init_parameters(cls):
            if hasattr(obj, name):
                args[name] = getattr(obj, name)
            elif strict:
                raise TypeError(
                    f"{_class_path(cls)}: constructor argument '{name}' is not kept as attribute self.{name}, so a "
                    "checkpoint cannot record it"
                )
    init_args = {}
    for name, value in args.items():
        if name in skip:
            continue
        try:
            init_args[name] = to_json_data(value, f"{_class_path(cls)}.{name}")
        except TypeError:
            if strict:
                raise
    return {"class_path": _class_path(cls), "init_args": init_args}


# ------------------------------------------------------------------------------------------------ format (write)
def net_config(net: nn.Module) -> dict[str, Any] | None:
    """``{"class_path", "init_args", "registry_name"}`` of a ``SegNet`` (``None`` for a net that records none)."""
    config = getattr(net, "init_config", None)
    if config is None:
        return None
    return {**config, "registry_name": getattr(net, "registry_name", None)}


def inferer_config(inferer: Any) -> dict[str, Any] | None:
    """``{"roi_size", "class_path", "init_args"}`` of a whole-case inferer (its plain-data constructor arguments)."""
    if inferer is None:
        return None
    config = callable_config(inferer, strict=False, skip=_INFERER_RUNTIME_ARGS)
    roi = getattr(inferer, "roi_size", None)
    return {"roi_size": None if roi is None else [int(r) for r in roi], **config}


def preprocessor_config(preprocessor: Any) -> dict[str, Any] | None:
    """``{"type": ..., **preprocessor.to_dict()}``; the type is the :data:`PREPROCESSORS` entry of its class."""
    if preprocessor is None:
        return None
    settings = to_json_data(preprocessor.to_dict(), f"{type(preprocessor).__name__}.to_dict()")
    type_name = settings.get("type")
    if type_name is None:
        path = _class_path(type(preprocessor))
        names = [n for n, ref in PREPROCESSORS.items() if (_class_path(ref) if isinstance(ref, type) else ref) == path]
        if not names:
            raise TypeError(
                f"preprocessor {path} is not registered: add it with "
                "segzoo.checkpoint.register_preprocessor(type_name, cls) so checkpoints can rebuild it"
            )
        type_name = names[0]
    return {**settings, "type": type_name}


def checkpoint_format(
    net: nn.Module, inferer: Any = None, postprocess: Callable | None = None, preprocessor: Any = None
) -> dict[str, Any]:
    """The ``checkpoint["segzoo_format"]`` entry: everything but the weights that inference needs, as plain data."""
    return {
        "version": FORMAT_VERSION,
        "net": net_config(net),
        "inferer": inferer_config(inferer),
        "postprocess": callable_config(postprocess, strict=True),
        "preprocessor": preprocessor_config(preprocessor),
    }


def save_pretrained(net: nn.Module, directory: str | os.PathLike, fmt: dict[str, Any] | None = None) -> Path:
    """Write a pretrained folder: ``config.json`` + ``model.safetensors``, and from ``fmt`` (a ``segzoo_format``
    dict) ``preprocessor.json`` and ``inference.json`` when it has them. Only JSON and safetensors are written, each
    file atomically; a stale ``preprocessor.json`` / ``inference.json`` of an earlier export is removed."""
    from safetensors.torch import save_file

    config = net_config(net)
    if config is None:
        raise CheckpointError(f"{type(net).__name__} is not a segzoo SegNet; it records no config to save")
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise CheckpointError(f"{directory}: exists and is not a directory")
    fmt = fmt or {}
    extras = {
        "preprocessor.json": fmt.get("preprocessor"),
        "inference.json": {"inferer": fmt.get("inferer"), "postprocess": fmt.get("postprocess")}
        if fmt.get("inferer") or fmt.get("postprocess")
        else None,
    }
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    with atomic_path(directory / "model.safetensors") as tmp:
        save_file(state, str(tmp))
    atomic_write_text(directory / "config.json", json.dumps({**config, FORMAT_KEY: FORMAT_VERSION}, indent=2))
    for name, content in extras.items():
        if content is not None:
            atomic_write_text(directory / name, json.dumps(content, indent=2))
        elif (directory / name).is_file():  # a stale file from an earlier export would mislead `segzoo infer`
            (directory / name).unlink()
    return directory


# ------------------------------------------------------------------------------------------------- format (read)
def build_net(config: Any, where: str = "net config") -> nn.Module:
    """Rebuild a net from ``{"class_path", "init_args", "registry_name"}`` without importing anything it names.

    ``class_path`` must be the class of a registered net (or its re-export, e.g. ``segzoo.nets.MSSUNet``); with no
    ``class_path`` the registered name ``registry_name`` is built with ``create_net(name, **init_args)``.
    """
    import segzoo.nets  # noqa: F401  registers segzoo's nets
    from segzoo.nets._registry import create_net, list_nets, net_class, net_classes

    if not isinstance(config, dict):
        raise CheckpointError(f"{where}: the net config is not a JSON object")
    init_args = config.get("init_args", {})
    if not isinstance(init_args, dict) or not all(isinstance(k, str) for k in init_args):
        raise CheckpointError(f"{where}: 'init_args' of the net is not a JSON object")
    class_path, name = config.get("class_path"), config.get("registry_name")
    try:
        if class_path is not None:
            classes = net_classes()
            cls = _allowed_class(class_path, classes)
            if cls is None:
                raise CheckpointError(
                    f"{where}: refusing net class '{class_path}': not the class of a registered segzoo net "
                    f"(known: {', '.join(sorted(c.rpartition('.')[2] for c in classes))})"
                )
            net = cls(**current_init_args(cls, init_args))
        elif isinstance(name, str) and name in list_nets():
            net = create_net(name, **current_init_args(net_class(name), init_args))
        else:
            raise CheckpointError(f"{where}: names no net (expected a 'class_path' or a registered 'registry_name')")
    except CheckpointError:
        raise
    except Exception as e:  # the constructor's own check of JSON arguments it cannot use
        raise CheckpointError(
            f"{where}: cannot build net {class_path or name} from its init_args ({_one_line(e)})"
        ) from None
    if isinstance(name, str) and name in list_nets() and hasattr(net, "registry_name"):
        net.registry_name = name
    return net


def _build_allowed(config: Any, allowed: dict[str, type | str], kind: str, where: str) -> Any:
    if not isinstance(config, dict):
        raise CheckpointError(f"{where}: the {kind} config is not a JSON object")
    cls = _allowed_class(config.get("class_path"), allowed)
    if cls is None:
        raise CheckpointError(
            f"{where}: refusing {kind} class '{config.get('class_path')}': not in segzoo's allow-list "
            f"(segzoo.checkpoint.{'INFERERS' if kind == 'inferer' else 'POSTPROCESSES'})"
        )
    init_args = config.get("init_args") or {}
    if not isinstance(init_args, dict):
        raise CheckpointError(f"{where}: 'init_args' of the {kind} is not a JSON object")
    try:
        return cls(**init_args)
    except Exception as e:  # the constructor's own check of JSON arguments it cannot use
        raise CheckpointError(f"{where}: cannot build {kind} {config['class_path']} ({_one_line(e)})") from None


def build_postprocess(config: dict[str, Any] | None, where: str = "postprocess config") -> Callable | None:
    """Post-processing from ``{"class_path", "init_args"}`` (allow-list :data:`POSTPROCESSES`); ``None`` -> ``None``."""
    return None if config is None else _build_allowed(config, POSTPROCESSES, "post-processing", where)


def build_inferer(config: dict[str, Any] | None, where: str = "inferer config") -> Any:
    """Inferer from ``{"class_path", "init_args"}`` (allow-list :data:`INFERERS`); ``None`` or a record with only a
    ``roi_size`` (older checkpoints) -> ``None``."""
    if config is None or config.get("class_path") is None:
        return None
    return _build_allowed(config, INFERERS, "inferer", where)


def build_preprocessor(config: dict[str, Any] | None, where: str = "preprocessor config") -> Any:
    """Preprocessing from ``{"type": ..., **settings}`` (allow-list :data:`PREPROCESSORS`); ``None`` -> ``None``.

    Every key but ``"type"`` goes to ``cls.from_dict`` untouched. A dict without ``"type"`` (written before the
    types existed) is CT preprocessing.
    """
    if config is None:
        return None
    if not isinstance(config, dict):
        raise CheckpointError(f"{where}: the preprocessor config is not a JSON object")
    settings = dict(_typed_preprocessor(config))
    type_name = settings.pop("type")
    ref = PREPROCESSORS.get(type_name) if isinstance(type_name, str) else None
    if ref is None:
        raise CheckpointError(
            f"{where}: refusing preprocessor type {type_name!r}: not one of {sorted(PREPROCESSORS)} "
            "(segzoo.checkpoint.PREPROCESSORS)"
        )
    try:
        return _resolve(ref).from_dict(settings)
    except Exception as e:  # from_dict checks the settings
        raise CheckpointError(f"{where}: cannot build preprocessor {type_name!r} ({_one_line(e)})") from None


@dataclass
class LoadedModel:
    """A net restored from a checkpoint or pretrained folder, with the rest of its ``segzoo_format`` record.

    Attributes:
        net: the net, eval mode, on the CPU.
        format: ``{"version", "net", "inferer", "postprocess", "preprocessor"}`` as plain JSON data.
        source: the file or folder it came from.
    """

    net: nn.Module
    format: dict[str, Any]
    source: Path

    @property
    def roi_size(self) -> list[int] | None:
        """The sliding-window size the net was validated with, if recorded."""
        roi = (self.format.get("inferer") or {}).get("roi_size")
        return None if roi is None else [int(r) for r in roi]

    def preprocessor(self) -> Any:
        """The preprocessing (``preprocess`` / ``restore``), or ``None``."""
        return build_preprocessor(self.format.get("preprocessor"), str(self.source))

    def postprocess(self) -> Callable | None:
        """The post-processing callable on label maps, or ``None``."""
        return build_postprocess(self.format.get("postprocess"), str(self.source))

    def inferer(self) -> Any:
        """The whole-case inferer the net was validated with (allow-listed class), or ``None``."""
        return build_inferer(self.format.get("inferer"), str(self.source))


_GLOBAL = re.compile(r"GLOBAL\s+([\w.]+)")


def unpickling_refusal(path: object, error: BaseException, opt_in: str = "--trust-checkpoint (trust=True)") -> str:
    """One line saying why ``torch.load(weights_only=True)`` refused ``path`` (``error``: its ``UnpicklingError``)."""
    text = str(error)
    if "Weights only load failed" not in text:
        return f"{path}: cannot read checkpoint ({_one_line(text)})"
    culprit = _GLOBAL.search(text)
    if culprit:
        return (
            f"{path}: refusing to unpickle '{culprit.group(1)}': the checkpoint holds objects other than tensors and "
            f"plain data, and unpickling them can run code from the file; load it with {opt_in} only if you trust "
            "its source"
        )
    return (
        f"{path}: cannot read checkpoint as tensors and plain data ({_one_line(text.split('error:')[-1])}): not a "
        f"PyTorch checkpoint, or one that only unpickling can read ({opt_in}, only for a file from a trusted source)"
    )


def _torch_load(path: Path, trust: bool) -> Any:
    """``torch.load`` with ``weights_only=True``; full unpickling only with ``trust`` and after a warning."""
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols of files it then refuses anyway
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        culprit = _GLOBAL.search(str(e))
        if not trust or "Weights only load failed" not in str(e):
            raise CheckpointError(unpickling_refusal(path, e)) from None
    except Exception as e:  # truncated zip, empty file, not a checkpoint at all
        raise CheckpointError(f"{path}: cannot read checkpoint ({type(e).__name__}: {_one_line(e)})") from None
    what = f"'{culprit.group(1)}'" if culprit else "objects that are not tensors or plain data"
    warnings.warn(
        f"{path}: unpickling {what} because the checkpoint was loaded with trust=True / --trust-checkpoint; "
        "this runs any code the file holds",
        UntrustedCheckpointWarning,
        stacklevel=3,
    )
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise CheckpointError(f"{path}: cannot read checkpoint ({type(e).__name__}: {_one_line(e)})") from None


def _check_version(version: Any, where: str) -> None:
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise CheckpointError(
            f"{where}: unknown segzoo_format version {version!r} (this segzoo reads 1-{FORMAT_VERSION})"
        )
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{where}: written by a newer segzoo (segzoo_format version {version}; this segzoo reads up to "
            f"{FORMAT_VERSION}); upgrade segzoo to load it"
        )


def _typed_preprocessor(config: Any) -> Any:
    """A preprocessing record written before ``"type"`` existed was CT preprocessing."""
    return {"type": "ct", **config} if isinstance(config, dict) and "type" not in config else config


def _legacy_format(ckpt: dict[str, Any]) -> dict[str, Any]:
    """``segzoo_format`` of a checkpoint written before it existed (``segzoo_net`` / ``segzoo_inferer`` /
    ``segzoo_postprocess`` keys, the preprocessing in the datamodule's state ``<DataModule>["preprocessor"]``)."""
    preprocessor = None
    for value in ckpt.values():
        if isinstance(value, dict) and isinstance(value.get("preprocessor"), dict):
            preprocessor = _typed_preprocessor(value["preprocessor"])
    return {
        "version": 1,
        "net": ckpt["segzoo_net"],
        "inferer": ckpt.get("segzoo_inferer") or None,
        "postprocess": ckpt.get("segzoo_postprocess"),
        "preprocessor": preprocessor,
    }


def _load_weights(net: nn.Module, state: dict[str, torch.Tensor], where: str, what: str) -> None:
    try:
        net.load_state_dict(state)
    except RuntimeError as e:  # missing / unexpected keys or shape mismatches: weights of another net
        raise CheckpointError(f"{where}: {what} ({_one_line(e)})") from None


def load_checkpoint(path: str | os.PathLike, trust: bool = False) -> LoadedModel:
    """Load a segzoo checkpoint (``.ckpt`` of ``segzoo fit``) or a pretrained folder, without running its code.

    Args:
        path: a Lightning checkpoint file, a folder written by ``save_pretrained`` /
            ``segzoo export --format pretrained``, or ``hf-hub:ORG/NAME[@REVISION]``: such a folder on the Hugging
            Face Hub, fetched into (or, with ``HF_HUB_OFFLINE=1``, read from) the local hub cache.
        trust: unpickle a checkpoint that ``weights_only`` loading refuses (it then may run code from the file; a
            :class:`UntrustedCheckpointWarning` is issued). Net, inferer and post-processing classes are checked
            against the allow-lists either way.

    Raises:
        CheckpointError: one line naming the file and the reason (unreadable, refused object or class, no segzoo
            record, a newer format, weights that do not fit the net).
    """
    if str(path).startswith(HF_PREFIX):
        return load_pretrained(_hub_folder(str(path)))
    path = Path(path)
    if path.is_dir():
        return load_pretrained(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file or pretrained directory")
    ckpt = _torch_load(path, trust)
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: not a segzoo checkpoint (holds a {type(ckpt).__name__}, not a dict)")
    if FORMAT_KEY in ckpt:
        fmt = ckpt[FORMAT_KEY]
        if not isinstance(fmt, dict):
            raise CheckpointError(f"{path}: '{FORMAT_KEY}' is not a dict")
        _check_version(fmt.get("version"), str(path))
    elif "segzoo_net" in ckpt:
        fmt = _legacy_format(ckpt)
    else:
        raise CheckpointError(
            f"{path}: not a segzoo checkpoint (no '{FORMAT_KEY}' entry); expected a checkpoint written by `segzoo fit`"
        )
    if fmt.get("net") is None:
        raise CheckpointError(f"{path}: records no net config (the trained net was not a segzoo SegNet)")
    net = build_net(fmt["net"], str(path))
    state = ckpt.get("state_dict")
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: has no 'state_dict' of weights")
    state = {k[len("net.") :]: v for k, v in state.items() if isinstance(k, str) and k.startswith("net.")}
    what = (
        f"the weights do not fit the net {fmt['net'].get('class_path')} recorded in the checkpoint; expected a "
        "checkpoint written by `segzoo fit` for that net"
    )
    _load_weights(net, state, str(path), what)
    return LoadedModel(net=net.eval(), format=fmt, source=path)


def _hub_folder(source: str) -> Path:
    """The local snapshot folder of ``hf-hub:ORG/NAME[@REVISION]`` (:func:`segzoo.hub.pretrained_folder`)."""
    from segzoo.hub import pretrained_folder

    try:
        return pretrained_folder(source)
    except (FileNotFoundError, ImportError) as e:  # not reachable nor cached; huggingface_hub missing (its extra named)
        raise CheckpointError(_one_line(e, 500)) from None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({_one_line(e)})") from None


def load_pretrained(directory: str | os.PathLike) -> LoadedModel:
    """Load a pretrained folder (``config.json`` + ``model.safetensors`` [+ ``preprocessor.json``,
    ``inference.json``]); JSON and safetensors only, classes by allow-list. Raises :class:`CheckpointError`."""
    from safetensors.torch import load_file

    directory = Path(directory)
    cfg_path, weights = directory / "config.json", directory / "model.safetensors"
    for p in (cfg_path, weights):
        if not p.is_file():
            raise CheckpointError(
                f"{p} not found: expected a folder written by save_pretrained() or `segzoo export --format pretrained`"
            )
    config = _read_json(cfg_path)
    if not isinstance(config, dict):
        raise CheckpointError(f"{cfg_path}: not a JSON object")
    config = dict(config)
    _check_version(config.pop(FORMAT_KEY, 1), str(cfg_path))
    net = build_net(config, str(cfg_path))
    try:
        state = load_file(str(weights))
    except Exception as e:  # safetensors raises its own error types for truncated files
        raise CheckpointError(f"{weights}: cannot be read ({_one_line(e)}); the file is corrupt or truncated") from None
    what = (
        f"not a loadable save_pretrained directory: the weights in model.safetensors do not fit the net "
        f"{config.get('class_path')} of config.json"
    )
    _load_weights(net, state, str(directory), what)
    preprocessor = None
    if (directory / "preprocessor.json").is_file():
        preprocessor = _typed_preprocessor(_read_json(directory / "preprocessor.json"))
    inference = _read_json(directory / "inference.json") if (directory / "inference.json").is_file() else {}
    if not isinstance(inference, dict):
        raise CheckpointError(f"{directory / 'inference.json'}: not a JSON object")
    inferer = inference.get("inferer")
    if inferer is None and inference.get("roi_size") is not None:  # written before "inferer" existed
        inferer = {"roi_size": inference["roi_size"]}
    fmt = {
        "version": FORMAT_VERSION,
        "net": net_config(net) or config,
        "inferer": inferer,
        "postprocess": inference.get("postprocess"),
        "preprocessor": preprocessor,
    }
    return LoadedModel(net=net.eval(), format=fmt, source=directory)


# ---------------------------------------------------------------------------------------- output -> label map
def labels_on_original_grid(
    output: torch.Tensor | np.ndarray,
    original_shape: Sequence[int],
    preprocessor: Any | None = None,
    postprocess: Callable | None = None,
) -> np.ndarray:
    """``uint8`` label map of shape ``original_shape`` from one case's whole-case output ``(K, *spatial)``.

    With a ``preprocessor`` (``restore(scores, shape)``) the class scores are resampled back to the original grid
    before the argmax; without one the output is already on that grid. ``postprocess`` (a label-map callable) runs
    last, on the original grid, as in ``segzoo infer``, ``segzoo predict`` and test-time scoring.
    """
    if preprocessor is not None:
        labels = np.asarray(preprocessor.restore(output, tuple(int(s) for s in original_shape)))
    else:
        out = torch.as_tensor(output)
        labels = out.argmax(0).cpu().numpy()
    if postprocess is not None:
        labels = np.asarray(postprocess(labels))
    return labels.astype(np.uint8)
