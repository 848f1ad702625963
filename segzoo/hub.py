"""Pretrained nets the way timm and smp users expect: a local folder or ``hf-hub:ORG/NAME``.

A pretrained net is a folder with ``config.json`` (registry name, class path, constructor arguments) and
``model.safetensors``, as :meth:`segzoo.nets.SegNet.save_pretrained` writes it. Loading always goes through
:func:`segzoo.nets.base.from_pretrained`: weights are safetensors (no unpickling) and nothing from the folder runs.
On the Hugging Face Hub the same two files (plus a generated ``README.md`` model card) form a model repository;
with ``HF_HUB_OFFLINE=1`` a repository already in the local hub cache loads without the network.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from torch import nn

HF_PREFIX = "hf-hub:"
PRETRAINED_FILES = ("config.json", "model.safetensors")


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


def model_card(net: nn.Module, repo_id: str | None = None, description: str | None = None) -> str:
    """A Markdown model card (Hub ``README.md``) for ``net``: metadata header, how to load, constructor arguments."""
    import json

    import segzoo

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
        f"- written by segzoo {segzoo.__version__}; files: `config.json`, `model.safetensors` (no code is run to load)",
        "",
        "## Load",
        "",
        "```python",
        "import segzoo",
        "",
        f"net = {load}",
        "```",
        "",
        "## Constructor arguments",
        "",
        "```json",
        json.dumps(config, indent=2),
        "```",
        "",
    ]
    return "\n".join(lines)


def save_pretrained(net: nn.Module, folder: str | os.PathLike, repo_id: str | None = None, **card: Any) -> Path:
    """Write ``config.json``, ``model.safetensors`` and ``README.md`` (the model card) into ``folder``."""
    from segzoo.utils import atomic_write_text

    folder = Path(net.save_pretrained(folder))
    atomic_write_text(folder / "README.md", model_card(net, repo_id, **card))
    return folder


def push_to_hub(
    net: nn.Module,
    repo_id: str,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str = "Upload segzoo net",
    description: str | None = None,
    api: Any = None,
) -> str:
    """Upload ``net`` to the Hugging Face Hub repository ``repo_id`` (created if missing).

    Args:
        net: a segzoo net (``SegNet``: it records its constructor arguments).
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
        save_pretrained(net, tmp, repo_id=repo_id, description=description)
        info = api.upload_folder(repo_id=repo_id, folder_path=tmp, commit_message=commit_message, repo_type="model")
    return str(getattr(info, "commit_url", info))
