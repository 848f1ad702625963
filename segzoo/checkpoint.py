"""Run checkpoints as models: a ``segzoo fit`` checkpoint or pretrained folder read through the net-level format
(:mod:`segzoo.nets.pretrained`: JSON, safetensors or weights-only ``torch.load``, the net class from the registry),
plus the records only a trained model has, rebuilt from allow-lists: preprocessing, the whole-case inferer and the
post-processing (:class:`LoadedModel`). Writing: :func:`checkpoint_format` is the ``checkpoint["segzoo_format"]``
entry that ``segzoo fit`` stores beside the weights.

Every class is looked up in an allow-list of classes segzoo's own code already defined: inferers in
:data:`INFERERS`, post-processing in :data:`POSTPROCESSES`, preprocessing by ``"type"`` in :data:`PREPROCESSORS`
(nets: :func:`segzoo.nets.pretrained.build_net`). Nothing is imported from a string read from a file; anything else
is refused with one :class:`CheckpointError` line naming the file and the class (``docs/inference.md``, "Loading
checkpoints safely"). A checkpoint that only full unpickling can read loads with ``trust=True``
(``--trust-checkpoint``), after a warning. Imports go one way: this module imports ``segzoo.nets``, never back.
"""

from __future__ import annotations

import dataclasses
import enum
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from segzoo.nets.pretrained import (
    FORMAT_KEY,
    FORMAT_VERSION,
    CheckpointError,
    UntrustedCheckpointWarning,
    allowed_class,
    class_path,
    init_parameters,
    net_config,
    one_line,
    read_model,
    resolve_class,
    typed_preprocessor,
    unpickling_refusal,
)

__all__ = [
    "FORMAT_KEY",
    "FORMAT_VERSION",
    "INFERERS",
    "POSTPROCESSES",
    "PREPROCESSORS",
    "CheckpointError",
    "LoadedModel",
    "UntrustedCheckpointWarning",
    "build_inferer",
    "build_postprocess",
    "build_preprocessor",
    "callable_config",
    "checkpoint_format",
    "inferer_config",
    "load_checkpoint",
    "preprocessor_config",
    "register_inferer",
    "register_postprocess",
    "register_preprocessor",
    "to_json_data",
    "unpickling_refusal",
]

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
# run-time placement of an inferer, not a property of the trained model: never stored
_INFERER_RUNTIME_ARGS = ("sw_device", "device", "progress", "memory_budget_gb")


def register_preprocessor(type_name: str, cls: type | str) -> None:
    """Allow preprocessing ``{"type": type_name, ...}`` to be rebuilt with ``cls.from_dict(settings)``.

    ``cls`` needs ``to_dict()`` (plain JSON data), a classmethod ``from_dict(dict)``, ``preprocess(image, spacing)``
    and ``restore(scores, original_shape)``.
    """
    PREPROCESSORS[type_name] = cls


def register_inferer(cls: type) -> None:
    """Allow checkpoints to name inferer ``cls`` (rebuilt with ``cls(**init_args)`` from JSON data)."""
    INFERERS[class_path(cls)] = cls


def register_postprocess(cls: type) -> None:
    """Allow checkpoints to name post-processing ``cls`` (rebuilt with ``cls(**init_args)`` from JSON data)."""
    POSTPROCESSES[class_path(cls)] = cls


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
        for name in init_parameters(cls):
            if hasattr(obj, name):
                args[name] = getattr(obj, name)
            elif strict:
                raise TypeError(
                    f"{class_path(cls)}: constructor argument '{name}' is not kept as attribute self.{name}, so a "
                    "checkpoint cannot record it"
                )
    init_args = {}
    for name, value in args.items():
        if name in skip:
            continue
        try:
            init_args[name] = to_json_data(value, f"{class_path(cls)}.{name}")
        except TypeError:
            if strict:
                raise
    return {"class_path": class_path(cls), "init_args": init_args}


# ------------------------------------------------------------------------------------------------ format (write)
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
        path = class_path(type(preprocessor))
        names = [n for n, ref in PREPROCESSORS.items() if (class_path(ref) if isinstance(ref, type) else ref) == path]
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


# ------------------------------------------------------------------------------------------------- format (read)
def _build_allowed(config: Any, allowed: dict[str, type | str], kind: str, where: str) -> Any:
    if not isinstance(config, dict):
        raise CheckpointError(f"{where}: the {kind} config is not a JSON object")
    cls = allowed_class(config.get("class_path"), allowed)
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
        raise CheckpointError(f"{where}: cannot build {kind} {config['class_path']} ({one_line(e)})") from None


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
    settings = dict(typed_preprocessor(config))
    type_name = settings.pop("type")
    ref = PREPROCESSORS.get(type_name) if isinstance(type_name, str) else None
    if ref is None:
        raise CheckpointError(
            f"{where}: refusing preprocessor type {type_name!r}: not one of {sorted(PREPROCESSORS)} "
            "(segzoo.checkpoint.PREPROCESSORS)"
        )
    try:
        return resolve_class(ref).from_dict(settings)
    except Exception as e:  # from_dict checks the settings
        raise CheckpointError(f"{where}: cannot build preprocessor {type_name!r} ({one_line(e)})") from None


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
    net, fmt, source = read_model(path, trust=trust)
    return LoadedModel(net=net, format=fmt, source=source)
