"""Pretrained nets from a folder or ``hf-hub:ORG/NAME``: push_to_hub's files, offline loading from the hub cache."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import segzoo
from segzoo.extras import MissingExtraError
from segzoo.hub import model_card, push_to_hub

TINY = {"features": [4, 8, 16, 32, 64]}
REPO = Path(__file__).resolve().parents[1]


class RecordingHubApi:
    """Stands in for ``huggingface_hub.HfApi``: the uploaded folder is copied to ``remote`` (no network here)."""

    def __init__(self, remote: Path) -> None:
        self.remote, self.calls = remote, []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))

    def upload_folder(self, repo_id, folder_path, **kwargs):
        self.calls.append(("upload_folder", repo_id, kwargs))
        shutil.copytree(folder_path, self.remote, dirs_exist_ok=True)
        return type("CommitInfo", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/0"})()


def put_in_hub_cache(folder: Path, hub_cache: Path, repo_id: str, commit: str = "a" * 40) -> None:
    """Lay ``folder`` out as huggingface_hub's cache does: blobs by hash, snapshot links, ``refs/main``."""
    repo = hub_cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for f in folder.iterdir():
        digest = hashlib.sha256(f.read_bytes()).hexdigest()
        shutil.copyfile(f, repo / "blobs" / digest)
        (snapshot / f.name).symlink_to(Path("..", "..", "blobs", digest))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


@pytest.fixture
def tiny_net():
    torch.manual_seed(0)
    return segzoo.create_net("unet2d", **TINY)


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_push_to_hub_uploads_weights_config_and_card(tiny_net, tmp_path):
    pytest.importorskip("huggingface_hub")
    api = RecordingHubApi(tmp_path / "remote")
    url = push_to_hub(tiny_net, "segzoo-test/tiny-unet", api=api, description="A test net.")
    assert url.endswith("/commit/0")
    assert [c[0] for c in api.calls] == ["create_repo", "upload_folder"]
    assert sorted(p.name for p in (tmp_path / "remote").iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((tmp_path / "remote" / "config.json").read_text())
    assert config["registry_name"] == "unet2d" and config["init_args"]["features"] == TINY["features"]
    card = (tmp_path / "remote" / "README.md").read_text()
    assert (
        card.startswith("---\nlibrary_name: segzoo")
        and 'segzoo.from_pretrained("hf-hub:segzoo-test/tiny-unet")' in card
    )
    assert "A test net." in card and f"{sum(p.numel() for p in tiny_net.parameters()):,}" in card
    # what was pushed loads back, from a plain folder
    assert _same_weights(segzoo.from_pretrained(tmp_path / "remote"), tiny_net)


def test_create_net_with_pretrained_folder(tiny_net, tmp_path):
    tiny_net.save_pretrained(tmp_path / "p")
    net = segzoo.create_net("unet2d", pretrained=tmp_path / "p", **TINY)
    assert _same_weights(net, tiny_net)
    with pytest.raises(ValueError, match="does not fit net 'unet2d'"):
        segzoo.create_net("unet2d", pretrained=tmp_path / "p", features=[8, 16, 32, 64, 128])
    with pytest.raises(FileNotFoundError, match="no such folder"):
        segzoo.from_pretrained(tmp_path / "missing")
    assert "segzoo.from_pretrained" in model_card(tiny_net)


def test_hub_without_its_extra_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # as if not installed
    with pytest.raises(MissingExtraError, match=r"\[hub\] extra"):
        segzoo.from_pretrained("hf-hub:segzoo-test/tiny-unet")


@pytest.mark.slow
def test_offline_load_from_the_hub_cache(tiny_net, tmp_path):
    """HF_HUB_OFFLINE=1 and a cache laid out like huggingface_hub's: it recognises the repo, segzoo loads it."""
    pytest.importorskip("huggingface_hub")
    api = RecordingHubApi(tmp_path / "pushed")
    push_to_hub(tiny_net, "segzoo-test/tiny-unet", api=api)
    hf_home = tmp_path / "hf"
    put_in_hub_cache(tmp_path / "pushed", hf_home / "hub", "segzoo-test/tiny-unet")
    script = textwrap.dedent(
        f"""
        import huggingface_hub, torch, segzoo
        repos = huggingface_hub.scan_cache_dir().repos
        assert [r.repo_id for r in repos] == ["segzoo-test/tiny-unet"], repos
        ref = segzoo.from_pretrained({str(tmp_path / "pushed")!r})
        for net in (segzoo.from_pretrained("hf-hub:segzoo-test/tiny-unet"),
                    segzoo.create_net("unet2d", pretrained="hf-hub:segzoo-test/tiny-unet", features={TINY["features"]})):
            assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), ref.state_dict().values()))
        try:
            segzoo.from_pretrained("hf-hub:segzoo-test/not-cached")
        except FileNotFoundError as e:
            print("MISSING:", e)
        """
    )
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    env.pop("HF_HUB_CACHE", None)
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "MISSING: pretrained 'hf-hub:segzoo-test/not-cached': not in the local hub cache" in result.stdout
