"""Pretrained nets from a folder or ``hf-hub:ORG/NAME``: push_to_hub's files, offline loading from the hub cache."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import segzoo
from segzoo.extras import MissingExtraError
from segzoo.nets.pretrained import CheckpointError, model_card, push_to_hub

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
    with pytest.raises(CheckpointError, match="missing: no such checkpoint file or pretrained directory"):
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
        except segzoo.nets.pretrained.CheckpointError as e:
            print("MISSING:", e)
        """
    )
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    env.pop("HF_HUB_CACHE", None)
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "MISSING: pretrained 'hf-hub:segzoo-test/not-cached': not in the local hub cache" in result.stdout


# ------------------------------------------------------------------------------ hub models in `segzoo infer`
def _ct_checkpoint(path: Path) -> Path:
    """A 3D checkpoint carrying everything `segzoo infer` uses: CT preprocessing with a training orientation and
    spacing, the sliding-window inferer, KiTS19 post-processing."""
    from segzoo.checkpoint import checkpoint_format
    from segzoo.data.preprocessor import CTPreprocessor
    from segzoo.inference import KiTSPostprocess, SlidingWindowTTAInferer
    from segzoo.nets import MSSUNet

    torch.manual_seed(1)
    net = MSSUNet(3, 1, 3, kernel_size=[3, 3, 3], strides=[1, 2, 2], base_features=4)
    pre = CTPreprocessor(-1.0, 3.0, 0.5, 0.7, target_spacing=(2.0, 1.5, 1.5), orientation=("I", "P", "L"))
    post = KiTSPostprocess(min_relative_size=0.0, remove_detached_tumour=False, validation={"chosen": "by test"})
    fmt = checkpoint_format(net, SlidingWindowTTAInferer(roi_size=[8, 16, 16], overlap=0.25), post, pre)
    torch.save({"segzoo_format": fmt, "state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}}, path)
    return path


@pytest.fixture
def offline_hub_cache(tmp_path, monkeypatch):
    """An empty hub cache and HF_HUB_OFFLINE=1 for this process (huggingface_hub reads both at import)."""
    hub = pytest.importorskip("huggingface_hub")
    cache = tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_infer_from_the_hub_cache_equals_the_checkpoint(tmp_path, offline_hub_cache):
    """push_to_hub of a checkpoint uploads the whole model; `segzoo infer --ckpt hf-hub:...` from the cache, offline,
    predicts what the checkpoint predicts, on an image stored in another orientation and spacing."""
    import nibabel as nib

    from segzoo.checkpoint import load_checkpoint
    from segzoo.cli import main
    from segzoo.data.io import save_nifti

    ckpt = _ct_checkpoint(tmp_path / "model.ckpt")
    push_to_hub(ckpt, "segzoo-test/ct", api=RecordingHubApi(tmp_path / "remote"))
    files = sorted(p.name for p in (tmp_path / "remote").iterdir())
    assert files == ["README.md", "config.json", "inference.json", "model.safetensors", "preprocessor.json"]
    assert "segzoo infer --ckpt hf-hub:segzoo-test/ct" in (tmp_path / "remote" / "README.md").read_text()
    put_in_hub_cache(tmp_path / "remote", offline_hub_cache, "segzoo-test/ct")

    hub_model, own = load_checkpoint("hf-hub:segzoo-test/ct"), load_checkpoint(ckpt)
    for key in ("preprocessor", "inferer", "postprocess"):  # orientation, spacing, window, post-processing
        assert hub_model.format[key] == own.format[key], key
    assert hub_model.format["preprocessor"]["orientation"] == ["I", "P", "L"]

    rng = np.random.default_rng(0)
    volume = rng.normal(0.5, 1.0, (36, 40, 14)).astype(np.float32)  # stored R/A/S, slices last
    volume[8:28, 10:30, 4:10] += 2.0
    save_nifti(volume, np.diag([1.3, 1.2, 2.6, 1.0]), tmp_path / "in" / "ct.nii.gz")
    labels = {}
    for name, source in (("ckpt", str(ckpt)), ("hub", "hf-hub:segzoo-test/ct")):
        out = tmp_path / name
        assert main(["infer", "--ckpt", source, "--input", str(tmp_path / "in"), "--output", str(out)]) == 0
        labels[name] = np.asarray(nib.load(str(out / "ct.nii.gz")).dataobj)
    assert len(np.unique(labels["ckpt"])) > 1
    np.testing.assert_array_equal(labels["hub"], labels["ckpt"])


def test_hub_models_are_read_by_the_safe_loader(tmp_path, offline_hub_cache, capsys):
    """What is not cached, and a cached repository naming a class outside the allow-list, are one line each."""
    from expect import expect_cli_error

    from segzoo.data.io import save_nifti

    image = save_nifti(np.zeros((8, 16, 16), np.float32), np.eye(4), tmp_path / "in" / "ct.nii.gz")
    args = ["--input", str(image), "--output", str(tmp_path / "out")]
    expect_cli_error(
        ["infer", "--ckpt", "hf-hub:segzoo-test/absent", *args], capsys, "hf-hub:segzoo-test/absent", "HF_HUB_OFFLINE"
    )

    segzoo.save_pretrained(_ct_checkpoint(tmp_path / "model.ckpt"), tmp_path / "evil")
    marker = tmp_path / "ran"
    config = json.loads((tmp_path / "evil" / "config.json").read_text())
    config.update(class_path="subprocess.run", init_args={"args": ["touch", str(marker)]})
    (tmp_path / "evil" / "config.json").write_text(json.dumps(config))
    put_in_hub_cache(tmp_path / "evil", offline_hub_cache, "segzoo-test/evil")
    expect_cli_error(["infer", "--ckpt", "hf-hub:segzoo-test/evil", *args], capsys, "config.json", "subprocess.run")
    assert not marker.exists()


def test_hub_download_asks_for_every_pretrained_file(tmp_path, monkeypatch):
    """Online, `hf-hub:` fetches only the files it asks for: all of PRETRAINED_FILES, so preprocessing, window and
    post-processing arrive with the weights (huggingface_hub's download replaced by a copy of the matching files)."""
    import fnmatch

    hub = pytest.importorskip("huggingface_hub")
    from segzoo.checkpoint import load_checkpoint

    push_to_hub(_ct_checkpoint(tmp_path / "model.ckpt"), "segzoo-test/ct", api=RecordingHubApi(tmp_path / "remote"))

    def snapshot_download(repo_id, revision=None, allow_patterns=(), **kwargs):
        local = tmp_path / "downloaded"
        local.mkdir(exist_ok=True)
        for f in (tmp_path / "remote").iterdir():
            if any(fnmatch.fnmatch(f.name, pattern) for pattern in allow_patterns):
                shutil.copyfile(f, local / f.name)
        return str(local)

    monkeypatch.setattr(hub, "snapshot_download", snapshot_download)
    loaded = load_checkpoint("hf-hub:segzoo-test/ct")
    assert loaded.roi_size == [8, 16, 16] and loaded.preprocessor().orientation == ("I", "P", "L")
    assert type(loaded.postprocess()).__name__ == "KiTSPostprocess"
