"""benchmarks/window_model.py counts exactly the windows the inferer runs (so its ratios are the inferer's work)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from segzoo.inference import SlidingWindowTTAInferer

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name: str):
    sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Oracle(nn.Module):
    """Predicts class 1 exactly where the input carries the marker value (the "kidney"), background elsewhere."""

    out_channels = 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kidney = (x > 2.5).float()
        return torch.cat([10 * (1 - kidney), 10 * kidney, torch.zeros_like(x)], dim=1)


def test_window_model_counts_what_the_inferer_runs():
    model = _load("window_model")
    roi = (6, 12, 12)
    x = torch.full((1, 1, 30, 60, 56), -2.0)
    x[0, 0, :, 14:46, 10:40] = 0.5  # body
    x[0, 0, 12:16, 20:26, 14:20] = 3.0  # kidney
    label = (x[0, 0] > 2.5).numpy().astype(np.uint8)
    counted = model.passes(x[0], label, roi)
    net = Oracle()
    ran = {}
    for name, kw, flips in (
        ("full", {}, 8),
        ("crop_exact", {"crop": True}, 8),
        ("crop_regrid", {"crop": True, "crop_grid": "crop"}, 8),
        ("coarse_to_fine", {"crop": True, "coarse_to_fine": True}, 8),
        ("coarse_to_fine_regrid", {"crop": True, "crop_grid": "crop", "coarse_to_fine": True}, 8),
        ("tta_inplane", {"crop": True}, 4),
    ):
        inferer = SlidingWindowTTAInferer(roi, mirror_axes=None, **kw)  # windows do not depend on the flips
        inferer(x, net)
        stats = inferer.last_stats[0]
        ran[name] = stats["windows_run"] * flips + stats.get("coarse_windows", 0)
        assert counted["forward_passes"][name] == ran[name], name
    assert ran["coarse_to_fine_regrid"] < ran["crop_regrid"] < ran["full"]
    assert counted["ratio_to_monai_8pass"]["crop_exact"] <= 1
