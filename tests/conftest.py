"""Shared test fixtures: one thread, the tiny net and the tiny run config every CLI-level test uses."""

import copy
import textwrap
from pathlib import Path

import pytest
import torch
import yaml


@pytest.fixture(autouse=True)
def one_thread():
    """Run every test with one torch intra-op thread, restored afterwards.

    Tiny convolutions and patches on a shared 2-core CPU only contend with a second thread (up to 50x slower under
    load: the registry test took 267 s with two threads and 20 s with one); DataLoader workers use one thread too.
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ------------------------------------------------------------------------------------------ shared tiny configs
# the tiny 3-level 3D MSS-UNet and deep-supervision Dice+CE loss every CLI-level test trains (a few seconds per fit)
TINY_NET = {
    "class_path": "segzoo.nets.MSSUNet",
    "init_args": {"kernel_size": [3, 3, 3], "strides": [1, 2, 2], "base_features": 4, "out_channels": 3},
}
TINY_LOSS = {
    "class_path": "segzoo.losses.DeepSupervisionLoss",
    "init_args": {
        "loss": {"class_path": "monai.losses.DiceCELoss", "init_args": {"to_onehot_y": True, "softmax": True}}
    },
}


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


@pytest.fixture
def tiny_net_config() -> dict:
    """``{"class_path", "init_args"}`` of the tiny 3D MSS-UNet (a fresh copy per test)."""
    return copy.deepcopy(TINY_NET)


@pytest.fixture
def tiny_net(tiny_net_config):
    """The tiny 3D MSS-UNet itself (input ``(B, 1, D, H, W)`` with sizes divisible by 4)."""
    from segzoo.nets import build_net

    return build_net(tiny_net_config)


@pytest.fixture
def write_config(tmp_path):
    """``write_config(yaml_text, name="run.yaml", **overrides) -> Path``: a run config with the tiny net and loss.

    ``model.net`` and ``model.loss`` default to :data:`TINY_NET` / :data:`TINY_LOSS`; ``overrides`` (nested dicts,
    e.g. ``model={"net": {"init_args": {"out_channels": 5}}}``) are merged in last.
    """

    def write(text: str = "", name: str = "run.yaml", **overrides) -> Path:
        config = yaml.safe_load(textwrap.dedent(text)) or {}
        config["model"] = _merge(
            {"net": copy.deepcopy(TINY_NET), "loss": copy.deepcopy(TINY_LOSS)}, config.get("model") or {}
        )
        config = _merge(config, overrides)
        path = tmp_path / name
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    return write
