"""Pretrained nets the way timm and smp users expect: a local folder or ``hf-hub:ORG/NAME``.

A pretrained folder holds ``config.json`` (registry name, class path, constructor arguments) and
``model.safetensors``, and, when it comes from a trained checkpoint, ``preprocessor.json`` (normalisation, spacing,
training orientation) and ``inference.json`` (window, post-processing): :data:`segzoo.checkpoint.PRETRAINED_FILES`,
as :func:`segzoo.checkpoint.save_pretrained` writes them. Loading always goes through
:func:`segzoo.checkpoint.load_checkpoint`: weights are safetensors (no unpickling), classes come from allow-lists
and nothing from the folder runs. On the Hugging Face Hub the same files (plus a generated ``README.md`` model card)
form a model repository, so ``segzoo infer --ckpt hf-hub:ORG/NAME`` predicts as with the checkpoint; with
``HF_HUB_OFFLINE=1`` a repository already in the local hub cache loads without the network.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from torch import nn

from segzoo.checkpoint import HF_PREFIX, PRETRAINED_FILES, LoadedModel


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


def from_pretrained(source: str | os.PathLike, map_location: str = "cpu", revision: str | None = None) -> nn.Module:
    """Rebuild a pretrained net from a folder, a ``segzoo fit`` checkpoint or ``hf-hub:ORG/NAME`` (see
    :func:`pretrained_folder`), through the safe loader :func:`segzoo.nets.base.from_pretrained`."""
    from segzoo.nets.base import from_pretrained as load_folder

    return load_folder(pretrained_folder(source, revision=revision), map_location=map_location)


def create_net(name: str, pretrained: str | os.PathLike | None = None, **kwargs: Any) -> nn.Module:
    """Build the registered net ``name`` (``kwargs`` override the variant's defaults), optionally with weights.

    Args:
        name: registry name (``segzoo.list_nets()``).
        pretrained: a folder or ``hf-hub:ORG/NAME`` holding a net saved by ``save_pretrained``/``push_to_hub``;
            its weights must fit the net built here (same architecture), else a ``ValueError`` names both.
        **kwargs: constructor overrides, e.g. ``in_channels=4``.
    """
    from segzoo.nets import create_net as build

    net = build(name, **kwargs)
    if pretrained is not None:
        source = from_pretrained(pretrained)
        try:
            net.load_state_dict(source.state_dict())
        except RuntimeError as e:
            msg = " ".join(str(e).split())[:400]
            raise ValueError(f"pretrained '{pretrained}' does not fit net '{name}' {kwargs or ''}: {msg}") from None
    return net


def model_card(
    net: nn.Module, repo_id: str | None = None, description: str | None = None, files: tuple[str, ...] | None = None
) -> str:
    """A Markdown model card (Hub ``README.md``) for ``net``: metadata header, how to load, constructor arguments.

    ``files``: the pretrained files beside it (default ``config.json`` and ``model.safetensors``); with
    ``preprocessor.json`` the card shows ``segzoo infer --ckpt``.
    """
    import json

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
        lines += [
            "## Predict",
            "",
            "```bash",
            f"segzoo infer --ckpt {source} --input IMAGES --output PRED",
            "```",
            "",
        ]
    lines += [
        "## Constructor arguments",
        "",
        "```json",
        json.dumps(config, indent=2),
        "```",
        "",
    ]
    return "\n".join(lines)


def _net_and_format(model: nn.Module | LoadedModel | str | os.PathLike) -> tuple[nn.Module, dict[str, Any] | None]:
    """The net and its ``segzoo_format`` record (preprocessing, inferer, post-processing) of ``model``: a net alone
    (no record), a :class:`~segzoo.checkpoint.LoadedModel`, or a checkpoint file / pretrained folder read through
    the safe loader."""
    if isinstance(model, nn.Module):
        return model, None
    if not isinstance(model, LoadedModel):
        from segzoo.checkpoint import load_checkpoint

        model = load_checkpoint(model)
    return model.net, model.format


def save_pretrained(
    model: nn.Module | LoadedModel | str | os.PathLike,
    folder: str | os.PathLike,
    repo_id: str | None = None,
    description: str | None = None,
) -> Path:
    """Write a pretrained folder and its ``README.md`` model card into ``folder``.

    Args:
        model: a segzoo net (``config.json`` + ``model.safetensors``), or a ``segzoo fit`` checkpoint, a pretrained
            folder or a :class:`~segzoo.checkpoint.LoadedModel`, whose preprocessing, window and post-processing are
            written too (``preprocessor.json``, ``inference.json``: everything ``segzoo infer`` needs).
        folder: the folder to write.
        repo_id: the Hub repository named in the card.
        description: the card's first paragraph.
    """
    from segzoo.checkpoint import save_pretrained as save_folder
    from segzoo.utils import atomic_write_text

    net, fmt = _net_and_format(model)
    folder = Path(save_folder(net, folder, fmt))
    files = tuple(f for f in PRETRAINED_FILES if (folder / f).is_file())
    atomic_write_text(folder / "README.md", model_card(net, repo_id, description=description, files=files))
    return folder


def push_to_hub(
    model: nn.Module | LoadedModel | str | os.PathLike,
    repo_id: str,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str = "Upload segzoo model",
    description: str | None = None,
    api: Any = None,
) -> str:
    """Upload a model to the Hugging Face Hub repository ``repo_id`` (created if missing).

    Args:
        model: a segzoo net (``SegNet``: it records its constructor arguments), or a ``segzoo fit`` checkpoint,
            pretrained folder or :class:`~segzoo.checkpoint.LoadedModel`: then its preprocessing, window and
            post-processing are uploaded too, so ``segzoo infer --ckpt hf-hub:ORG/NAME`` predicts as the checkpoint.
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
