"""Seconds per sliding-window forward pass for each `segzoo infer --backend` (and `--amp`), and achieved GFLOP/s.

The net is ``mss_unet3d_small`` (the demo's widths 8-64) on its window (24x96x96) and, with ``--paper``, the paper's
``mss_unet3d`` (widths 30-320) on 48x192x192; weights are random (the arithmetic does not depend on them). Each
backend runs the same ``(sw_batch_size, 1, *window)`` input: PyTorch eager float32 (the reference), PyTorch under
bf16 autocast (``--amp``; only where oneDNN has bf16 kernels), ONNX Runtime and OpenVINO on the graph
``segzoo.export.export_onnx`` writes. Time = median of ``--repeats`` calls after two warm-up calls, interleaved
(A, B, C, A, B, C ...) so load from other processes hits all alike. GFLOP/s = FLOPs of the call
(``torch.utils.flop_counter``) / time, against the CPU's fp32 peak (cores x base clock x 64 FLOP/cycle with two
AVX-512 FMA units). Together with ``window_model.py`` (forward passes per path) it gives the whole-case time of every
path on this CPU. Writes ``<out>/window_speed_cpu.{json,md}``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from inference_bench import _cpu_bf16, _cpu_name  # noqa: E402
from whole_case_bench import cpu_peak_gflops, window_gflop  # noqa: E402

import segzoo  # noqa: E402
from segzoo.inference.backends import backend_net  # noqa: E402
from segzoo.utils import atomic_write_text  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
NETS = {"demo": ("mss_unet3d_small", (24, 96, 96)), "paper": ("mss_unet3d", (48, 192, 192))}


def runners(net, shape) -> dict:
    x = torch.randn(*shape)
    out = {}

    def torch_fp32():
        with torch.inference_mode():
            return net(x)

    out["torch_fp32"] = torch_fp32
    if _cpu_bf16():

        def torch_bf16():
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
                return net(x).float()

        out["torch_bf16"] = torch_bf16
    for backend in ("onnxruntime", "openvino"):
        try:
            run = backend_net(net, backend, shape, out_channels=3)
        except ImportError:
            continue
        out[backend] = lambda run=run: run(x)
    return out


def measure(name: str, batch: int, repeats: int, backends=None, warmups: int = 2) -> dict:
    net_name, roi = NETS[name]
    torch.manual_seed(0)
    net = segzoo.create_net(net_name).eval()
    shape = (batch, 1, *roi)
    gflop = window_gflop(net, 1, roi) * batch
    fns = {k: fn for k, fn in runners(net, shape).items() if backends is None or k in backends}
    ref = fns["torch_fp32"]().float()
    diffs = {k: float((fn().float() - ref).abs().max()) for k, fn in fns.items()}  # also the first warm-up call
    for _ in range(warmups - 1):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    median = {k: statistics.median(v) for k, v in times.items()}
    return {
        "net": net_name,
        "input": list(shape),
        "gflop_per_call": gflop,
        "times_s": times,
        "median_s": median,
        "gflops": {k: gflop / v for k, v in median.items()},
        "time_over_torch_fp32": {k: v / median["torch_fp32"] for k, v in median.items()},
        "max_abs_logit_difference_to_torch_fp32": diffs,
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=2, help="windows per call (segzoo infer's sw_batch_size)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument(
        "--nets",
        nargs="+",
        choices=tuple(NETS),
        default=["demo"],
        help="demo: every backend; paper: PyTorch fp32 and bf16, one window per call, one warm-up, one timed call",
    )
    p.add_argument("--merge", action="store_true", help="keep the other nets' rows of an existing result file")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    peak, how = cpu_peak_gflops()
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device_name": _cpu_name(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "load_average_at_start": os.getloadavg()[0],
        "cpu_peak_gflops_fp32": peak,
        "cpu_peak_how": how,
        "nets": {},
    }
    old = args.out / "window_speed_cpu.json"
    if args.merge and old.exists():
        result["nets"] = json.loads(old.read_text())["nets"]
    for name in args.nets:
        if name == "demo":
            result["nets"]["demo"] = measure("demo", args.batch, args.repeats)
        else:
            result["nets"]["paper"] = measure("paper", 1, 1, backends=("torch_fp32", "torch_bf16"), warmups=1)
    atomic_write_text(args.out / "window_speed_cpu.json", json.dumps(result, indent=2, default=float) + "\n")
    atomic_write_text(args.out / "window_speed_cpu.md", markdown(result))
    print(markdown(result))
    return result


def markdown(result: dict) -> str:
    md = [
        "# Forward pass per backend (cpu)",
        "",
        f"{result['date']}, {result['device_name']}, torch {result['torch']}, {result['threads']} threads, load average "
        f"{result['load_average_at_start']:.1f} at start (shared machine). fp32 peak {result['cpu_peak_gflops_fp32']:.0f} "
        f"GFLOP/s ({result['cpu_peak_how']}). Random weights; median after two warm-up calls, interleaved (the paper's net: "
        "one warm-up call, one timed call).",
        "",
        "| net | input | backend | time (s) | / PyTorch fp32 | GFLOP/s | % of fp32 peak | max abs logit diff |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["nets"].values():
        for k, t in r["median_s"].items():
            gf = r["gflops"][k]
            md.append(
                f"| {r['net']} | {r['input']} | {k} | {t:.3f} | {r['time_over_torch_fp32'][k]:.2f} | {gf:.0f} | "
                f"{100 * gf / result['cpu_peak_gflops_fp32']:.0f}% | "
                f"{r['max_abs_logit_difference_to_torch_fp32'][k]:.1e} |"
            )
    md.append("")
    return "\n".join(md) + "\n"


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
