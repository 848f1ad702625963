"""Pretrained nets, spelled once: the net-level file format, the hub, and ``from_pretrained`` / ``save_pretrained`` /
``create_net`` / ``push_to_hub``, the way timm and smp users expect them.

The format:

- a **pretrained folder** holds ``config.json`` (registry name, class path, constructor arguments) and
  ``model.safetensors``; one written from a trained model also holds ``preprocessor.json`` (normalisation, spacing,
  training orientation) and ``inference.json`` (``{"inferer", "postprocess"}``: window, post-processing), and a
  ``README.md`` model card (:data:`PRETRAINED_FILES`);
- a **run checkpoint** of ``segzoo fit`` (a Lightning ``.ckpt``) holds the weights under ``state_dict["net.*"]`` and
  the same records as plain JSON-able data under ``checkpoint["segzoo_format"]``::

      {"version": 1, "net": {"class_path", "init_args", "registry_name"},
       "inferer": {"roi_size", "class_path", "init_args"} | None, "postprocess": {"class_path", "init_args"} | None,
       "preprocessor": {"type": ..., **settings} | None}

- ``hf-hub:ORG/NAME[@REVISION]`` is a pretrained folder on the Hugging Face Hub, fetched into (or, with
  ``HF_HUB_OFFLINE=1``, read from) the local hub cache.

Loading is never executing (``docs/inference.md``, "Loading checkpoints safely"): JSON and safetensors, or
``torch.load(weights_only=True)`` (tensors and plain data); the net class must be the class of a registered net
(nothing named in a file is imported); a checkpoint that only full unpickling can read loads with ``trust=True``
after a warning. This module reads the other records (preprocessing, inferer, post-processing) as plain data only;
:mod:`segzoo.checkpoint` builds them from its allow-lists. It imports nothing of segzoo above ``segzoo.nets``.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import pickle
import re
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from segzoo.utils import DataError, atomic_path, atomic_write_text

FORMAT_KEY = "segzoo_format"
FORMAT_VERSION = 1
PRETRAINED_FILES = ("config.json", "model.safetensors", "preprocessor.json", "inference.json")
HF_PREFIX = "hf-hub:"  # a pretrained folder on the Hugging Face Hub

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


class CheckpointError(DataError):
    """A checkpoint or pretrained folder that segzoo refuses or cannot read; the message is one line naming the file."""


class UntrustedCheckpointWarning(UserWarning):
    """A checkpoint is being unpickled because the caller passed ``trust=True`` (``--trust-checkpoint``)."""


def class_path(cls: type) -> str:
    """``module.QualName`` of ``cls``."""
    return f"{cls.__module__}.{cls.__qualname__}"


def one_line(text: object, limit: int = 300) -> str:
    """``text`` as one line, shortened to ``limit`` characters (state-dict reports list hundreds of keys)."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def allowed_class(path: object, allowed: dict[str, type | str]) -> type | None:
    """The class ``path`` names if it is in ``allowed`` (keys, or the classes they stand for), else ``None``.

    A value of ``allowed`` is a class or the ``"module.Class"`` string of a class in segzoo's own code (imported
    lazily); keys are the class paths a file may name. A re-export path (``segzoo.nets.MSSUNet``) is accepted when the
    module is already imported and the name there is an allowed class: nothing is imported from a file's string.
    """
    if not isinstance(path, str):
        return None
    ref = allowed.get(path)
    if ref is None:
        module, _, name = path.rpartition(".")
        # the module's own namespace only: no import, and no module-level __getattr__ (which may import) is called
        candidate = vars(sys.modules[module]).get(name) if module in sys.modules else None
        refs = {class_path(r) if isinstance(r, type) else r for r in allowed.values()}
        if isinstance(candidate, type) and class_path(candidate) in refs:
            return candidate
        return None
    return resolve_class(ref)


def resolve_class(ref: type | str) -> type:
    """The class an allow-list entry stands for; a string entry is a constant of segzoo's code, imported lazily."""
    if isinstance(ref, type):
        return ref
    module, _, name = ref.rpartition(".")
    return getattr(importlib.import_module(module), name)


# ----------------------------------------------------------------------------------------------- net configs
def init_parameters(cls: type) -> list[str]:
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
    renames = RENAMED_NET_ARGS.get(class_path(cls), {}) if cls is not None else {}
    old_only = set(renames) - set(init_parameters(cls)) if renames else set()
    if old_only & set(init_args):
        init_args = {renames.get(k, k): v for k, v in init_args.items()}
    added = ADDED_NET_ARGS.get(class_path(cls), {}) if cls is not None else {}
    if added and "in_channels" in init_args:  # a full stored config (defaults applied), not a few overrides
        init_args = {**{k: v for k, v in added.items() if k not in init_args}, **init_args}
    return init_args


def net_config(net: nn.Module) -> dict[str, Any] | None:
    """``{"class_path", "init_args", "registry_name"}`` of a ``SegNet`` (``None`` for a net that records none)."""
    config = getattr(net, "init_config", None)
    if config is None:
        return None
    return {**config, "registry_name": getattr(net, "registry_name", None)}


def build_net(config: Any, where: str = "net config") -> nn.Module:
    """Rebuild a net from ``{"class_path", "init_args", "registry_name"}`` without importing anything it names.

    ``class_path`` must be the class of a registered net (or its re-export, e.g. ``segzoo.nets.MSSUNet``); with no
    ``class_path`` the registered name ``registry_name`` is built with its factory and ``init_args``. Anything else
    raises :class:`CheckpointError` naming ``where``.
    """
    import segzoo.nets  # noqa: F401  registers segzoo's nets
    from segzoo.nets._registry import build_registered, list_nets, net_class, net_classes

    if not isinstance(config, dict):
        raise CheckpointError(f"{where}: the net config is not a JSON object")
    init_args = config.get("init_args", {})
    if not isinstance(init_args, dict) or not all(isinstance(k, str) for k in init_args):
        raise CheckpointError(f"{where}: 'init_args' of the net is not a JSON object")
    path, name = config.get("class_path"), config.get("registry_name")
    try:
        if path is not None:
            classes = net_classes()
            cls = allowed_class(path, classes)
            if cls is None:
                raise CheckpointError(
                    f"{where}: refusing net class '{path}': not the class of a registered segzoo net "
                    f"(known: {', '.join(sorted(c.rpartition('.')[2] for c in classes))})"
                )
            net = cls(**current_init_args(cls, init_args))
        elif isinstance(name, str) and name in list_nets():
            net = build_registered(name, **current_init_args(net_class(name), init_args))
        else:
            raise CheckpointError(f"{where}: names no net (expected a 'class_path' or a registered 'registry_name')")
    except CheckpointError:
        raise
    except Exception as e:  # the constructor's own check of JSON arguments it cannot use
        raise CheckpointError(f"{where}: cannot build net {path or name} from its init_args ({one_line(e)})") from None
    if isinstance(name, str) and name in list_nets() and hasattr(net, "registry_name"):
        net.registry_name = name
    return net


# ----------------------------------------------------------------------------------------------------- reading
_GLOBAL = re.compile(r"GLOBAL\s+([\w.]+)")


def unpickling_refusal(path: object, error: BaseException, opt_in: str = "--trust-checkpoint (trust=True)") -> str:
    """One line saying why ``torch.load(weights_only=True)`` refused ``path`` (``error``: its ``UnpicklingError``)."""
    text = str(error)
    if "Weights only load failed" not in text:
        return f"{path}: cannot read checkpoint ({one_line(text)})"
    culprit = _GLOBAL.search(text)
    if culprit:
        return (
            f"{path}: refusing to unpickle '{culprit.group(1)}': the checkpoint holds objects other than tensors and "
            f"plain data, and unpickling them can run code from the file; load it with {opt_in} only if you trust "
            "its source"
        )
    return (
        f"{path}: cannot read checkpoint as tensors and plain data ({one_line(text.split('error:')[-1])}): not a "
        f"PyTorch checkpoint, or one that only unpickling can read ({opt_in}, only for a file from a trusted source)"
    )


def safe_torch_load(path: Path, trust: bool = False) -> Any:
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
        raise CheckpointError(f"{path}: cannot read checkpoint ({type(e).__name__}: {one_line(e)})") from None
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
        raise CheckpointError(f"{path}: cannot read checkpoint ({type(e).__name__}: {one_line(e)})") from None


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


def typed_preprocessor(config: Any) -> Any:
    """A preprocessing record written before ``"type"`` existed was CT preprocessing."""
    return {"type": "ct", **config} if isinstance(config, dict) and "type" not in config else config


def _legacy_format(ckpt: dict[str, Any]) -> dict[str, Any]:
    """``segzoo_format`` of a checkpoint written before it existed (``segzoo_net`` / ``segzoo_inferer`` /
    ``segzoo_postprocess`` keys, the preprocessing in the datamodule's state ``<DataModule>["preprocessor"]``)."""
    preprocessor = None
    for value in ckpt.values():
        if isinstance(value, dict) and isinstance(value.get("preprocessor"), dict):
            preprocessor = typed_preprocessor(value["preprocessor"])
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
        raise CheckpointError(f"{where}: {what} ({one_line(e)})") from None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({one_line(e)})") from None


def _read_run_checkpoint(path: Path, trust: bool) -> tuple[nn.Module, dict[str, Any]]:
    ckpt = safe_torch_load(path, trust)
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
    return net, fmt


def _read_folder(directory: Path) -> tuple[nn.Module, dict[str, Any]]:
    from safetensors.torch import load_file

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
        raise CheckpointError(f"{weights}: cannot be read ({one_line(e)}); the file is corrupt or truncated") from None
    what = (
        f"not a loadable save_pretrained directory: the weights in model.safetensors do not fit the net "
        f"{config.get('class_path')} of config.json"
    )
    _load_weights(net, state, str(directory), what)
    preprocessor = None
    if (directory / "preprocessor.json").is_file():
        preprocessor = typed_preprocessor(_read_json(directory / "preprocessor.json"))
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
    return net, fmt


def read_model(
    source: str | os.PathLike, trust: bool = False, revision: str | None = None
) -> tuple[nn.Module, dict[str, Any], Path]:
    """The net (eval mode, CPU), its ``segzoo_format`` record as plain data, and the local file or folder, of a run
    checkpoint, a pretrained folder or ``hf-hub:ORG/NAME[@REVISION]``; nothing from the file runs unless ``trust``.

    Raises:
        CheckpointError: one line naming the file and the reason (unreadable, refused object or class, no segzoo
            record, a newer format, weights that do not fit the net, a hub model neither reachable nor cached).
    """
    if str(source).startswith(HF_PREFIX):
        try:
            path = pretrained_folder(source, revision=revision)
        except FileNotFoundError as e:  # neither reachable nor cached (a missing huggingface_hub names its extra)
            raise CheckpointError(one_line(e, 500)) from None
    else:
        path = Path(source).expanduser()
    if path.is_dir():
        net, fmt = _read_folder(path)
    elif path.is_file():
        net, fmt = _read_run_checkpoint(path, trust)
    else:
        raise CheckpointError(
            f"{path}: no such checkpoint file or pretrained directory (a hub model is spelled {HF_PREFIX}ORG/NAME)"
        )
    return net.eval(), fmt, path


# --------------------------------------------------------------------------------------------------------- hub
def _hub():
    from segzoo.extras import require

    return require("huggingface_hub", "loading or pushing hf-hub: nets")


def pretrained_folder(source: str | os.PathLike, revision: str | None = None) -> Path:
    """The local path of ``source``: a folder (or a ``segzoo fit`` checkpoint file) as given, or
    ``hf-hub:ORG/NAME[@REVISION]`` fetched into the hub cache.

    Raises:
        FileNotFoundError: a local folder that does not exist, or a hub repository that is neither reachable nor
            in the cache (offline).
    """
    source = str(source)
    if not source.startswith(HF_PREFIX):
        folder = Path(source).expanduser()
        if not folder.exists():
            raise FileNotFoundError(f"pretrained '{source}': no such folder or checkpoint (or use hf-hub:ORG/NAME)")
        return folder
    repo_id = source[len(HF_PREFIX) :]
    if "@" in repo_id:
        repo_id, revision = repo_id.split("@", 1)
    hub = _hub()
    try:
        path = hub.snapshot_download(repo_id, revision=revision, allow_patterns=[*PRETRAINED_FILES, "README.md"])
    except Exception as e:  # offline and not cached, unknown repository, no network
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
        why = "not in the local hub cache (HF_HUB_OFFLINE is set)" if offline else type(e).__name__
        raise FileNotFoundError(f"pretrained '{source}': {why}: {' '.join(str(e).split())[:300]}") from None
    return Path(path)


# ----------------------------------------------------------------------------------------------- the public API
def from_pretrained(
    name_or_path: str | os.PathLike,
    *,
    map_location: str | torch.device = "cpu",
    revision: str | None = None,
    trust: bool = False,
) -> nn.Module:
    """The net of a pretrained folder, a ``segzoo fit`` checkpoint file or ``hf-hub:ORG/NAME[@REVISION]``, in eval
    mode, without running code from it.

    Args:
        name_or_path: the folder (``save_pretrained``, ``segzoo export --format pretrained``), a ``.ckpt`` file, or a
            hub model (offline from the local hub cache with ``HF_HUB_OFFLINE=1``).
        map_location: device to put the net on.
        revision: hub revision (also ``hf-hub:ORG/NAME@REVISION``).
        trust: unpickle a checkpoint file that weights-only loading refuses (runs any code it holds; warns).

    Raises:
        CheckpointError: one line naming the file and why it was refused or unreadable.
    """
    net, _, _ = read_model(name_or_path, trust=trust, revision=revision)
    return net.to(map_location)


def create_net(name: str, pretrained: str | os.PathLike | None = None, **kwargs: Any) -> nn.Module:
    """Build the registered net ``name`` (``kwargs`` override the variant's defaults), optionally with weights.

    Args:
        name: registry name (``segzoo.list_nets()``).
        pretrained: a folder, checkpoint or ``hf-hub:ORG/NAME`` holding weights of the same architecture; weights
            that do not fit the net built here raise a ``ValueError`` naming both.
        **kwargs: constructor overrides, e.g. ``in_channels=4``.
    """
    from segzoo.nets._registry import build_registered

    net = build_registered(name, **kwargs)
    if pretrained is not None:
        source = from_pretrained(pretrained)
        try:
            net.load_state_dict(source.state_dict())
        except RuntimeError as e:
            raise ValueError(
                f"pretrained '{pretrained}' does not fit net '{name}' {kwargs or ''}: {one_line(e, 400)}"
            ) from None
    return net


def model_card(
    net: nn.Module, repo_id: str | None = None, description: str | None = None, files: tuple[str, ...] | None = None
) -> str:
    """A Markdown model card (Hub ``README.md``) for ``net``: metadata header, how to load, constructor arguments.

    ``files``: the pretrained files beside it (default ``config.json`` and ``model.safetensors``); with
    ``preprocessor.json`` the card shows ``segzoo infer --ckpt``.
    """
    import segzoo

    files = tuple(files or PRETRAINED_FILES[:2])
    config = getattr(net, "init_config", {"class_path": type(net).__name__, "init_args": {}})
    name = getattr(net, "registry_name", None)
    params = sum(p.numel() for p in net.parameters())
    load = f'segzoo.from_pretrained("hf-hub:{repo_id}")' if repo_id else 'segzoo.from_pretrained("FOLDER")'
    lines = [
        "---",
        "library_name: segzoo",
        "tags: [segzoo, medical-imaging, segmentation, pytorch]",
        "license: apache-2.0",
        "---",
        f"# {repo_id or name or type(net).__name__}",
        "",
        description or f"A segzoo {config['class_path'].rsplit('.', 1)[-1]} segmentation net.",
        "",
        f"- segzoo registry name: `{name}`" if name else f"- class: `{config['class_path']}`",
        f"- parameters: {params:,}",
        f"- written by segzoo {segzoo.__version__}; files: {', '.join(f'`{f}`' for f in files)} (no code is run to load)",
        "",
        "## Load",
        "",
        "```python",
        "import segzoo",
        "",
        f"net = {load}",
        "```",
        "",
    ]
    if "preprocessor.json" in files:  # a whole model: preprocessing, window and post-processing travel with it
        source = f"hf-hub:{repo_id}" if repo_id else "FOLDER"
        lines += ["## Predict", "", "```bash", f"segzoo infer --ckpt {source} --input IMAGES --output PRED", "```", ""]
    lines += ["## Constructor arguments", "", "```json", json.dumps(config, indent=2), "```", ""]
    return "\n".join(lines)


def _net_and_format(model: Any, trust: bool) -> tuple[nn.Module, dict[str, Any]]:
    """The net and its ``segzoo_format`` record of ``model``: a net alone (no record), a loaded model (anything with
    ``.net`` and ``.format``, as :class:`segzoo.checkpoint.LoadedModel`), or a checkpoint / folder / hub name."""
    if isinstance(model, nn.Module):
        return model, {}
    if isinstance(getattr(model, "net", None), nn.Module) and isinstance(getattr(model, "format", None), dict):
        return model.net, model.format
    net, fmt, _ = read_model(model, trust=trust)
    return net, fmt


def save_pretrained(
    model: Any,
    folder: str | os.PathLike,
    *,
    repo_id: str | None = None,
    description: str | None = None,
    trust: bool = False,
) -> Path:
    """Write a pretrained folder: ``config.json`` + ``model.safetensors``, a ``README.md`` model card, and, for a
    trained model, ``preprocessor.json`` and ``inference.json`` (everything ``segzoo infer`` needs).

    Only JSON, Markdown and safetensors are written, each file atomically; a stale ``preprocessor.json`` /
    ``inference.json`` of an earlier export is removed.

    Args:
        model: a segzoo net (``SegNet``), or a ``segzoo fit`` checkpoint, pretrained folder, ``hf-hub:`` name or
            :class:`segzoo.checkpoint.LoadedModel`, whose preprocessing, window and post-processing are written too.
        folder: the folder to write.
        repo_id: the Hub repository named in the card.
        description: the card's first paragraph.
        trust: for a checkpoint file that weights-only loading refuses (see :func:`from_pretrained`).
    """
    from safetensors.torch import save_file

    net, fmt = _net_and_format(model, trust)
    config = net_config(net)
    if config is None:
        raise CheckpointError(f"{type(net).__name__} is not a segzoo SegNet; it records no config to save")
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise CheckpointError(f"{folder}: exists and is not a directory")
    extras = {
        "preprocessor.json": fmt.get("preprocessor"),
        "inference.json": {"inferer": fmt.get("inferer"), "postprocess": fmt.get("postprocess")}
        if fmt.get("inferer") or fmt.get("postprocess")
        else None,
    }
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    with atomic_path(folder / "model.safetensors") as tmp:
        save_file(state, str(tmp))
    atomic_write_text(folder / "config.json", json.dumps({**config, FORMAT_KEY: FORMAT_VERSION}, indent=2))
    for name, content in extras.items():
        if content is not None:
            atomic_write_text(folder / name, json.dumps(content, indent=2))
        elif (folder / name).is_file():  # a stale file from an earlier export would mislead `segzoo infer`
            (folder / name).unlink()
    files = tuple(f for f in PRETRAINED_FILES if (folder / f).is_file())
    atomic_write_text(folder / "README.md", model_card(net, repo_id, description=description, files=files))
    return folder


def push_to_hub(
    model: Any,
    repo_id: str,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str = "Upload segzoo model",
    description: str | None = None,
    api: Any = None,
) -> str:
    """Upload a model to the Hugging Face Hub repository ``repo_id`` (created if missing).

    Args:
        model: what :func:`save_pretrained` takes: a segzoo net, or a ``segzoo fit`` checkpoint, pretrained folder or
            loaded model, whose preprocessing, window and post-processing are uploaded too, so
            ``segzoo infer --ckpt hf-hub:ORG/NAME`` predicts as the checkpoint.
        repo_id: ``ORG/NAME``.
        private: create the repository private.
        token: Hub token; default the one ``huggingface-cli login`` stored.
        commit_message: the commit message.
        description: the model card's first paragraph.
        api: a ``huggingface_hub.HfApi`` (default a new one).

    Returns:
        The URL of the commit.
    """
    hub = _hub()
    api = api if api is not None else hub.HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    with tempfile.TemporaryDirectory(prefix="segzoo-push-") as tmp:
        save_pretrained(model, tmp, repo_id=repo_id, description=description)
        info = api.upload_folder(repo_id=repo_id, folder_path=tmp, commit_message=commit_message, repo_type="model")
    return str(getattr(info, "commit_url", info))
