"""Whole-case inference benchmark: segzoo's SlidingWindowTTAInferer vs MONAI's sliding window run once per flip.

Both compute the same thing: overlap 0.5, Gaussian blending, softmax probabilities averaged over the 8 mirrorings
of the 3 spatial axes, with ``segzoo.create_net(NET)`` in eval mode and the same ``sw_batch_size``.

- "segzoo": ``SlidingWindowTTAInferer(roi, sw_batch_size, mirror_axes=(0, 1, 2))``: each window is built once and
  all 8 flips of a window batch go through the net in one batch; one Gaussian-weighted accumulation.
  with its default ``max_batch="auto"``: all flips at once on CUDA, one flip per pass (``sw_batch_size`` inputs) on
  a CPU;
- the other batching, to show what the default buys: on CUDA "segzoo_lowmem" (``max_batch = sw_batch_size``: the
  flips go through the net in 8 passes of the peer's batch size; windows are still cut, weighted and stitched once),
  on a CPU "segzoo_allflips" (``max_batch=None``: all 16 inputs in one pass);
- "monai_8pass" (the peer): the naive way, under ``torch.no_grad()``: for every flip, flip the volume, run
  ``monai.inferers.sliding_window_inference`` (predictor = softmax of the net), flip back; average the 8 results.

Timing: a warm-up forward of the net at both window batch sizes, then ``--repeats`` whole-case calls of each
method, interleaved (segzoo, peer, segzoo, ...) so that load from other processes hits both alike; the median is
reported. On CUDA segzoo runs with ``amp=True`` (bf16 autocast inside the inferer) and the peer under
``torch.autocast(bf16)``. ``--no-peer --no-variants`` measures segzoo alone (the 512x512x600 memory check).
Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` (reset before each call; the table shows the peak above
what was allocated before the call, the JSON also the absolute peak incl. net and input); on CPU the peak resident
set size (RSS) during the call minus the RSS before it, sampled every 2 ms, in a separate memory pass: a child
process run with ``MALLOC_MMAP_THRESHOLD_=65536`` (so freed tensors leave the RSS) calls each method once after a
warm-up (``train_step.peaks_from_child``). The timed calls run in this process with the normal allocator, because
that setting slows allocation-heavy code down (2x for both methods here).

On a CPU with bf16 support in oneDNN (AVX512-BF16 or AMX) the table also has ``segzoo_amp``: segzoo with
``amp=True`` (bf16 autocast), what ``segzoo infer --amp`` does; its probabilities differ from float32 by ~1e-2.

Writes ``<out>/inference_<device>[_<tag>].json`` and ``.md``.

Usage: ``python benchmarks/inference_bench.py [--device cpu|cuda] [--repeats 3] [--out benchmarks/results]``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from monai.inferers import sliding_window_inference

import segzoo
from segzoo.inference import SlidingWindowTTAInferer
from segzoo.inference.sliding_window import flip_combinations
from segzoo.utils import atomic_write_text as atomic_write

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_step import peaks_from_child, write_peaks  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
# CPU: a case small enough that 2 x (1 + repeats) whole-case 8-flip runs of the full-width net stay within minutes
# on two cores; CUDA: a real KiTS-sized case at the paper's patch size.
DEFAULTS = {
    "cpu": {"shape": (24, 48, 48), "roi": (16, 32, 32)},
    "cuda": {"shape": (200, 512, 512), "roi": (48, 192, 192)},
}


def naive_tta(x, net, roi, sw_batch_size, mirror_axes=(0, 1, 2)):
    """The peer: MONAI's sliding window once per flip of the whole volume, probabilities averaged."""
    flips = flip_combinations(mirror_axes)
    acc = None
    with torch.no_grad():
        for f in flips:
            dims = [a + 2 for a in f]
            xf = x.flip(dims) if dims else x
            out = sliding_window_inference(
                xf,
                roi,
                sw_batch_size,
                lambda w: torch.softmax(net(w).float(), dim=1),
                overlap=0.5,
                mode="gaussian",
            )
            out = out.flip(dims) if dims else out
            acc = out if acc is None else acc + out
    return acc / len(flips)


def _cpu_name() -> str:
    """CPU model (platform.processor() is empty on many Linux systems, so /proc/cpuinfo is read first)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _measure(fn, device: str) -> tuple[float, float, int | None, int | None, torch.Tensor]:
    """``(wall s, process CPU s, peak bytes above the start, absolute peak bytes, output)`` of one call.

    The memory entries are ``None`` on a CPU: they come from the separate memory pass.
    """
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        t = time.perf_counter()
        out = fn()
        torch.cuda.synchronize()
        dt = time.perf_counter() - t
        total = torch.cuda.max_memory_allocated()
        return dt, float("nan"), total - before, total, out
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - t, time.process_time() - c, None, None, out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per method after one warm-up (median)")
    p.add_argument("--out", type=Path, default=RESULTS, help="folder for inference_<device>.{json,md}")
    p.add_argument("--net", default="mss_unet3d", help="registered net name (default: the paper's net)")
    p.add_argument("--shape", type=int, nargs=3, default=None, help="case size (D H W); default per device")
    p.add_argument("--roi", type=int, nargs=3, default=None, help="window size (D H W); default per device")
    p.add_argument("--sw-batch-size", type=int, default=2)
    p.add_argument("--tag", default="", help="suffix of the result files: inference_<device>[_<tag>].{json,md}")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's default)")
    p.add_argument("--max-batch", type=int, default=None, help="segzoo's max_batch (default: 'auto')")
    p.add_argument("--no-peer", dest="peer", action="store_false", help="skip the naive MONAI 8-pass peer")
    p.add_argument(
        "--no-variants", dest="variants", action="store_false", help="skip the other batching and the CPU bf16 row"
    )
    p.add_argument("--memory-pass", type=Path, default=None, help=argparse.SUPPRESS)  # internal: the memory child
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    if args.threads:
        torch.set_num_threads(args.threads)
    shape = tuple(args.shape or DEFAULTS[args.device]["shape"])
    roi = tuple(args.roi or DEFAULTS[args.device]["roi"])
    device = args.device

    torch.manual_seed(0)
    net = segzoo.create_net(args.net).eval().to(device)
    x = torch.randn(1, net_in_channels(net), *shape, device=device)
    amp = device == "cuda"  # bf16 on GPU as in practice; fp32 on CPU
    common = dict(sw_batch_size=args.sw_batch_size, overlap=0.5, mode="gaussian", amp=amp)
    inferer = SlidingWindowTTAInferer(roi, max_batch=args.max_batch or "auto", **common)
    other_name, other_batch = ("segzoo_lowmem", args.sw_batch_size) if device == "cuda" else ("segzoo_allflips", None)
    other = SlidingWindowTTAInferer(roi, max_batch=other_batch, **common)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if amp else contextlib.nullcontext()

    def peer():
        with autocast:
            return naive_tta(x, net, roi, args.sw_batch_size)

    methods = {"segzoo": lambda: inferer(x, net)}
    if args.variants:
        methods[other_name] = lambda: other(x, net)
    if device == "cpu" and args.variants and _cpu_bf16():
        bf16 = SlidingWindowTTAInferer(roi, max_batch=args.max_batch or "auto", **{**common, "amp": True})
        methods["segzoo_amp"] = lambda: bf16(x, net)
    if args.peer:
        methods["monai_8pass"] = peer
    if args.memory_pass is not None:
        write_peaks(args.memory_pass, methods)
        return {}
    # warm-up: the net at the batch sizes the methods use (one-time allocator / oneDNN / cuDNN set-up)
    with autocast, torch.inference_mode():
        for n in sorted({args.sw_batch_size, min(args.max_batch or 8 * args.sw_batch_size, 8 * args.sw_batch_size)}):
            net(torch.randn(n, x.shape[1], *roi, device=device))
    times: dict[str, list[float]] = {k: [] for k in methods}
    cpu_times: dict[str, list[float]] = {k: [] for k in methods}
    mems: dict[str, list[int]] = {k: [] for k in methods}
    totals: dict[str, list[int]] = {k: [] for k in methods}
    first: dict[str, torch.Tensor] = {}
    for _ in range(args.repeats):
        for name, fn in methods.items():
            dt, cpu, mem, total, out = _measure(fn, device)
            if name not in first:
                first[name] = out.cpu()  # off the accelerator: kept outputs must not count in later peaks
            times[name].append(dt)
            cpu_times[name].append(cpu)
            mems[name].append(mem)
            totals[name].append(total)
            print(f"{name}: {dt:.2f} s", flush=True)
            del out
    if device == "cpu":
        peaks = peaks_from_child(__file__, list(sys.argv[1:] if argv is None else argv))
        mems = {k: [peaks[k]] for k in methods}
        totals = {}
    diffs = {k: (first["segzoo"] - first[k]).abs().max().item() for k in first if k != "segzoo"}
    diff = diffs.get("monai_8pass")

    median = {k: statistics.median(v) for k, v in times.items()}
    peak = {k: max(v) for k, v in mems.items()}
    peer_name = "monai_8pass" if args.peer else None

    def ratio(values: dict, name: str) -> float | None:
        return values[name] / max(values[peer_name], 1e-12) if peer_name and name in values else None

    device_name = torch.cuda.get_device_name() if device == "cuda" else _cpu_name()
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device,
        "device_name": device_name,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "net": args.net,
        "case_shape": [1, 1, *shape],
        "roi_size": list(roi),
        "sw_batch_size": args.sw_batch_size,
        "overlap": 0.5,
        "mode": "gaussian",
        "flips": 8,
        "autocast": "bf16" if device == "cuda" else "none (fp32)",
        "repeats": args.repeats,
        "times_s": times,
        "median_s": median,
        "ratio_time_segzoo_over_peer": ratio(median, "segzoo"),
        # process CPU time (all threads; includes the 2 ms memory sampler), robust when other jobs share the cores
        "cpu_times_s": cpu_times if device == "cpu" else None,
        "ratio_cpu_time_segzoo_over_peer": ratio({k: statistics.median(v) for k, v in cpu_times.items()}, "segzoo")
        if device == "cpu"
        else None,
        "peak_memory_bytes": peak,
        "peak_memory_absolute_bytes": {k: max(v) for k, v in totals.items()},
        "peak_memory_method": "torch.cuda.max_memory_allocated - allocated before"
        if device == "cuda"
        else "peak process RSS during the call - RSS before (sampled every 2 ms, separate pass with "
        "MALLOC_MMAP_THRESHOLD_=65536)",
        "ratio_memory_segzoo_over_peer": ratio(peak, "segzoo"),
        "max_abs_difference": diff,
        "max_abs_difference_to_segzoo": diffs,
        "max_batch": args.max_batch or "auto",
        "note": "peer flips the whole volume, segzoo flips each window; identical when the window grid is symmetric",
    }
    out = args.out
    stem = f"inference_{device}" + (f"_{args.tag}" if args.tag else "")
    atomic_write(out / f"{stem}.json", json.dumps(result, indent=2) + "\n")
    atomic_write(out / f"{stem}.md", markdown(result))
    print(markdown(result))
    return result


LABELS = {
    "segzoo": "segzoo SlidingWindowTTAInferer",
    "segzoo_lowmem": "segzoo, `max_batch` = sw_batch_size (one flip per pass, low memory)",
    "segzoo_allflips": "segzoo, `max_batch=None` (all flips in one pass)",
    "segzoo_amp": "segzoo, `amp=True` (bf16 autocast on the CPU)",
    "monai_8pass": "MONAI sliding_window_inference x 8 flips",
}


def markdown(result: dict) -> str:
    """The result table of :func:`main`'s ``result``."""
    mib, median, peak = 2**20, result["median_s"], result["peak_memory_bytes"]
    has_peer = "monai_8pass" in median
    head = "| method | median time (s) | peak memory (MiB) |" + (" time / peer | memory / peer |" if has_peer else "")
    md = [
        f"# Whole-case inference, 8-flip mirroring TTA ({result['device']})",
        "",
        f"{result['date']}, {result['device_name']}, torch {result['torch']}, {result['threads']} threads. "
        f"Net `{result['net']}` (eval), case {result['case_shape']}, roi {result['roi_size']}, overlap 0.5, Gaussian, "
        f"sw_batch_size {result['sw_batch_size']}, max_batch {result.get('max_batch')}, autocast "
        f"{result['autocast']}, median of {result['repeats']} after warm-up.",
        "",
        head,
        "|---|---|---|" + ("---|---|" if has_peer else ""),
    ]
    for name, t in median.items():
        row = f"| {LABELS[name]} | {t:.2f} | {peak[name] / mib:.0f} |"
        if has_peer:
            row += f" {t / median['monai_8pass']:.2f} | {peak[name] / max(peak['monai_8pass'], 1):.2f} |"
        md.append(row)
    md.append("")
    if result.get("ratio_cpu_time_segzoo_over_peer") is not None:
        md.append(
            "Ratio of median process CPU time segzoo / peer (robust to other jobs on the machine): "
            f"{result['ratio_cpu_time_segzoo_over_peer']:.2f}.\n"
        )
    absolute = ", ".join(f"{k} {v / mib:.0f} MiB" for k, v in result["peak_memory_absolute_bytes"].items())
    diffs = ", ".join(f"{k} {v:.2e}" for k, v in result["max_abs_difference_to_segzoo"].items())
    md.append(
        f"Peak memory: {result['peak_memory_method']}"
        + (f" (absolute peak: {absolute})." if absolute else ".")
        + (f" Max |difference| of the probabilities to segzoo's: {diffs}." if diffs else "")
    )
    return "\n".join(md) + "\n"


def _cpu_bf16() -> bool:
    """Whether oneDNN has fast bf16 kernels on this CPU (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def net_in_channels(net: torch.nn.Module) -> int:
    """Input channels of a segzoo net (from its recorded constructor arguments), default 1."""
    config = getattr(net, "init_config", None) or {}
    return int(config.get("init_args", {}).get("in_channels", 1))


if __name__ == "__main__":
    main()
