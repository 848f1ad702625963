"""The inference benchmark script runs end to end on a tiny case and writes its result files."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "inference_bench.py"


@pytest.mark.slow
def test_inference_bench_tiny(tmp_path):
    spec = importlib.util.spec_from_file_location("inference_bench", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    argv = ["--net", "mss_unet3d_small", "--shape", "8", "16", "32", "--roi", "8", "16", "16"]
    result = bench.main([*argv, "--repeats", "1", "--out", str(tmp_path), "--tag", "tiny"])
    saved = json.loads((tmp_path / "inference_cpu_tiny.json").read_text())
    assert saved["median_s"] == result["median_s"] and saved["flips"] == 8
    assert saved["ratio_cpu_time_segzoo_over_peer"] > 0
    assert saved["max_abs_difference"] < 1e-5  # symmetric window grid: both methods compute the same thing
    assert saved["max_abs_difference_to_segzoo"]["segzoo_allflips"] < 1e-6  # batching changes nothing but speed
    assert set(saved["peak_memory_bytes"]) == set(saved["median_s"])  # the memory pass measured every method
    if "segzoo_amp" in saved["median_s"]:  # a CPU with bf16 kernels: bf16 autocast, close to float32
        assert 0 < saved["max_abs_difference_to_segzoo"]["segzoo_amp"] < 0.1
    md = (tmp_path / "inference_cpu_tiny.md").read_text()
    assert "time / peer" in md and "all flips in one pass" in md

    # segzoo alone, flips split over passes (the accelerator memory check's setting)
    alone = bench.main(
        [*argv, "--repeats", "1", "--out", str(tmp_path), "--tag", "alone", "--no-peer", "--no-variants"]
    )
    assert list(alone["median_s"]) == ["segzoo"] and alone["ratio_time_segzoo_over_peer"] is None
    assert alone["peak_memory_bytes"]["segzoo"] >= 0 and alone["peak_memory_absolute_bytes"] == {}  # CPU: no absolute
    assert "segzoo SlidingWindowTTAInferer" in (tmp_path / "inference_cpu_alone.md").read_text()
