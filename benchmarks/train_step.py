"""Train-step benchmark: segzoo's MSSUNet vs MONAI's DynUNet vs nnU-Net's PlainConvUNet at equal widths.

Reference: Zhao et al., "Multi Scale Supervised 3D U-Net for Kidney and Tumor Segmentation" (KiTS19): 5 levels,
widths 30, 60, 120, 240, 320, kernels (1,3,3), (1,3,3), 3, 3, 3, strides 1, (1,2,2), 2, 2, 2, deep supervision.

One train step = zero_grad, forward, loss, backward, Adam step (lr 3e-4). All nets get the same architecture
(two conv-norm-act per stage, instance norm with affine, leaky ReLU 0.01, strided-conv down, transposed-conv up)
and the same loss, MONAI ``DiceCELoss(to_onehot_y=True, softmax=True)``, over their 4 deep-supervision outputs with
weights 1/2**i normalised (8/15, 4/15, 2/15, 1/15):

- ``mss_unet``: ``segzoo.nets.MSSUNet``; native-scale outputs, :class:`segzoo.losses.DeepSupervisionLoss` resizes the
  label to each output (nearest).
- ``dynunet``: ``monai.networks.nets.DynUNet(deep_supervision=True, deep_supr_num=3)``; it upsamples every head to full
  resolution and stacks them ``(B, 4, K, *spatial)``; the loss is applied to each full-resolution slice against the
  full-resolution label, the way MONAI's DynUNet tutorial does.
- ``plainconvunet``: ``dynamic_network_architectures`` ``PlainConvUNet(deep_supervision=True)``; native-scale outputs,
  the same loss as ``mss_unet`` (nnU-Net downsamples the label the same way).
- ``mss_unet_cl3d``: ``mss_unet`` with net and input in ``torch.channels_last_3d`` (fast-path candidate).
- ``mss_unet_fp32`` (CUDA only): ``mss_unet`` without bf16 autocast, the effect of ``precision: bf16-mixed``;
- ``mss_unet_compile`` (``--compile``; default on CUDA): ``mss_unet`` wrapped in ``torch.compile`` (the task's
  ``compile: true``); compilation happens in the warm-up, which is not timed.

CPU: float32 at a small patch (default 2x1x16x64x64). CUDA: the paper's patch 2x1x48x192x192 under bf16 autocast
(Lightning's ``precision: bf16-mixed``) with ``cudnn.benchmark = True`` (Lightning's ``benchmark: true``).

Timing: one warm-up step per variant, then ``--repeats`` rounds in which every variant runs one step, interleaved
(A, B, C, A, B, C, ...) so that load from other processes hits all alike; medians are reported, and ratios
segzoo / peer come from the same run. Peak memory: on CUDA ``max_memory_allocated`` during the step minus the memory
allocated before it (parameters and Adam state excluded); on CPU the peak resident set size during the step minus the
RSS before it, sampled every 2 ms by a thread, in a separate memory pass: a child process run with
``MALLOC_MMAP_THRESHOLD_=65536`` (so freed tensors leave the RSS) steps each variant once after a warm-up. The timed
steps run in the parent with the normal allocator (that setting slows allocation-heavy code down, up to 2x here).

Writes ``<out>/train_step_<device>.json`` and ``.md``. Usage:
``python benchmarks/train_step.py [--device cpu|cuda] [--repeats N] [--quick] [--compile] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch
from monai.losses import DiceCELoss
from torch import nn

from segzoo.tasks.segmentation import to_channels_last
from segzoo.utils import atomic_write_text as atomic_write

RESULTS = Path(__file__).resolve().parent / "results"
KERNELS = ((1, 3, 3), (1, 3, 3), (3, 3, 3), (3, 3, 3), (3, 3, 3))
STRIDES = ((1, 1, 1), (1, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2))
FEATURES = (30, 60, 120, 240, 320)
NUM_CLASSES = 3
# CPU: the full-width net at a patch small enough that 4 variants x (1 + repeats) steps fit in minutes on 2 shared
# cores; CUDA: the paper's patch.
DEFAULTS = {
    "cpu": {"batch": 2, "patch": (16, 64, 64), "repeats": 3},
    "cuda": {"batch": 2, "patch": (48, 192, 192), "repeats": 10},
}


# ---------------------------------------------------------------------------------------------- shared helpers
MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def peaks_from_child(script: str | Path, argv: list[str]) -> dict[str, int]:
    """Peak CPU memory per variant, measured by ``script argv --memory-pass FILE`` in a child process.

    The child runs with ``MALLOC_MMAP_THRESHOLD_=65536`` so that glibc returns freed tensors to the OS and the
    resident set size tracks live memory; that setting makes every large allocation fault its pages in again (it
    doubled some timings here), so the timed runs happen in this process, with the normal allocator.
    """
    with tempfile.TemporaryDirectory(prefix="segzoo_bench_mem_") as tmp:
        out = Path(tmp) / "peaks.json"
        env = {**os.environ, **MEMORY_ENV}
        subprocess.run([sys.executable, str(script), *argv, "--memory-pass", str(out)], env=env, check=True)
        return {k: int(v) for k, v in json.loads(out.read_text()).items()}


def write_peaks(path: Path, fns: dict[str, Callable[[], object]]) -> None:
    """Memory pass (in the child): a warm-up call of each function, then one measured call each; peaks to ``path``."""
    for fn in fns.values():
        fn()
    peaks = {}
    for name, fn in fns.items():
        with PeakRSS() as m:
            fn()
        peaks[name] = m.delta
    atomic_write(path, json.dumps(peaks))


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Peak RSS increase over the ``with`` block, sampled every 2 ms by a background thread."""

    def __enter__(self) -> PeakRSS:
        self.base = self.peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(0.002)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())
        self.delta = self.peak - self.base


def measure(fn: Callable[[], object], device: torch.device) -> tuple[float, int | None]:
    """Wall time (s) of ``fn()`` and, on CUDA, its peak memory above what was allocated before it (bytes).

    On a CPU the memory is ``None`` here: it comes from a separate pass (:func:`peaks_from_child`).
    """
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        return time.perf_counter() - t, torch.cuda.max_memory_allocated() - before
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t, None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"
    return platform.processor() or platform.machine()


def machine_meta(device: torch.device) -> dict:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {
        "device": device.type,
        "device_name": device_name(device),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "load_average_at_start": load,
    }


def mib(n: float) -> str:
    return f"{n / 2**20:.0f}"


# ---------------------------------------------------------------------------------------------- the nets
def ds_weights(n: int) -> list[float]:
    raw = [0.5**i for i in range(n)]
    return [w / sum(raw) for w in raw]


class StackedDSLoss(nn.Module):
    """The DynUNet recipe: ``loss`` on each full-resolution slice of the stacked ``(B, N, K, *spatial)`` output."""

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if out.ndim == target.ndim:
            return self.loss(out, target)
        preds = torch.unbind(out, dim=1)
        return sum(w * self.loss(p, target) for w, p in zip(ds_weights(len(preds)), preds))


def build_variant(name: str) -> tuple[nn.Module, nn.Module]:
    """``(net, loss)`` of one compared variant (see the module docstring)."""
    dice_ce = DiceCELoss(to_onehot_y=True, softmax=True)
    base = name.split("_cl3d")[0].split("_compile")[0].split("_fp32")[0]
    if base == "mss_unet":
        from segzoo.losses import DeepSupervisionLoss
        from segzoo.nets import MSSUNet

        net = MSSUNet(3, 1, NUM_CLASSES, kernel_size=KERNELS, strides=STRIDES, features=FEATURES)
        loss = DeepSupervisionLoss(dice_ce, weight_mode="exp")
    elif base == "dynunet":
        from monai.networks.nets import DynUNet

        net = DynUNet(
            3,
            1,
            NUM_CLASSES,
            kernel_size=KERNELS,
            strides=STRIDES,
            upsample_kernel_size=STRIDES[1:],
            filters=FEATURES,
            norm_name=("instance", {"affine": True}),
            act_name=("leakyrelu", {"negative_slope": 0.01, "inplace": True}),
            deep_supervision=True,
            deep_supr_num=len(STRIDES) - 2,
        )
        loss = StackedDSLoss(dice_ce)
    elif base == "plainconvunet":
        from dynamic_network_architectures.architectures.unet import PlainConvUNet

        from segzoo.losses import DeepSupervisionLoss

        net = PlainConvUNet(
            input_channels=1,
            n_stages=len(STRIDES),
            features_per_stage=FEATURES,
            conv_op=nn.Conv3d,
            kernel_sizes=KERNELS,
            strides=STRIDES,
            n_conv_per_stage=2,
            num_classes=NUM_CLASSES,
            n_conv_per_stage_decoder=2,
            conv_bias=True,
            norm_op=nn.InstanceNorm3d,
            norm_op_kwargs={"eps": 1e-5, "affine": True},
            nonlin=nn.LeakyReLU,
            nonlin_kwargs={"negative_slope": 0.01, "inplace": True},
            deep_supervision=True,
        )
        loss = DeepSupervisionLoss(dice_ce, weight_mode="exp")
    else:
        raise ValueError(f"unknown variant {name!r}")
    return net, loss


class Runner:
    """One variant's net, optimizer, loss and inputs; ``step()`` runs one train step."""

    def __init__(self, name: str, device: torch.device, batch: int, patch: tuple[int, ...], amp: bool) -> None:
        torch.manual_seed(0)
        net, self.loss = build_variant(name)
        self.params = sum(p.numel() for p in net.parameters())
        self.net = net.to(device).train()
        self.x = torch.randn(batch, 1, *patch, device=device)
        self.y = torch.randint(0, NUM_CLASSES, (batch, 1, *patch), device=device)
        if "_cl3d" in name:  # what SegmentationTask(channels_last=True) does
            to_channels_last(self.net)
            self.x = self.x.contiguous(memory_format=torch.channels_last_3d)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=3e-4)
        self.forward = torch.compile(self.net) if "_compile" in name else self.net
        self.device, self.amp = device, amp and "_fp32" not in name

    def step(self) -> float:
        self.opt.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            loss = self.loss(self.forward(self.x), self.y)
        loss.backward()
        self.opt.step()
        return float(loss.detach())


def run_interleaved(
    runners: dict[str, Runner], repeats: int, device: torch.device
) -> dict[str, dict[str, list[float]]]:
    """Warm up every runner, then ``repeats`` rounds of one step each, in turn; returns times and peaks."""
    for r in runners.values():
        r.step()  # warm-up: allocator, cuDNN autotuning, Adam state, compilation
    samples = {name: {"time_s": [], "peak_bytes": []} for name in runners}
    for _ in range(repeats):
        for name, r in runners.items():
            dt, peak = measure(r.step, device)
            samples[name]["time_s"].append(dt)
            samples[name]["peak_bytes"].append(peak)
    return samples


def augment_rows(device: torch.device, batch: int, patch: tuple[int, ...], repeats: int) -> dict[str, float]:
    """Seconds per batch of the worst-case augmentation (rotation, scaling, elastic on every sample, gamma, flips).

    ``cpu_chain``: segzoo's CPU worker chain (``build_kits19_transforms``) on each sample's crop-with-margin, in this
    process (what the DataLoader workers spend). ``batch_augment``: :class:`segzoo.data.gpu_augment.BatchAugment` on the
    patch-sized batch on ``device`` (what the training device spends instead when the workers only crop).
    """
    from segzoo.data.augment import AugmentConfig
    from segzoo.data.gpu_augment import BatchAugment
    from segzoo.data.transforms import augmentation_input_size, build_kits19_transforms

    probs = AugmentConfig(rotate_prob=1.0, scale_prob=1.0, elastic_prob=1.0, gamma_prob=1.0, flip_prob=0.5)
    chain = build_kits19_transforms(patch, probs)
    chain.set_random_state(0)
    crop = augmentation_input_size(chain, patch)
    samples = [
        {"image": torch.randn(1, *crop), "label": torch.randint(0, NUM_CLASSES, (1, *crop)).float()}
        for _ in range(batch)
    ]
    aug = BatchAugment(probs, seed=0)
    data = {
        "image": torch.randn(batch, 1, *patch, device=device),
        "label": torch.randint(0, NUM_CLASSES, (batch, 1, *patch), device=device),
    }

    def cpu_chain() -> None:
        for s in samples:
            chain(s)

    def on_device() -> None:
        aug(data)

    fns = {"cpu_chain": cpu_chain, "batch_augment": on_device}
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(max(3, repeats)):
        for k, fn in fns.items():
            times[k].append(measure(fn, device)[0])
    out = {f"{k}_s_per_batch": statistics.median(v) for k, v in times.items()}
    out["batch_augment/cpu_chain time"] = out["batch_augment_s_per_batch"] / out["cpu_chain_s_per_batch"]
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeats", type=int, default=None, help="interleaved timed rounds after one warm-up (median)")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--patch", type=int, nargs=3, default=None, help="D H W; default per device")
    p.add_argument("--quick", action="store_true", help="smoke run: 1 round, batch 1, patch 16x32x32")
    p.add_argument("--compile", action="store_true", help="add the torch.compile variant (default on CUDA)")
    p.add_argument("--no-cl3d", action="store_true", help="skip the channels_last_3d variant")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--memory-pass", type=Path, default=None, help=argparse.SUPPRESS)  # internal: the memory child
    args = p.parse_args(argv)
    device = torch.device(args.device)
    cfg = DEFAULTS[device.type]
    batch = args.batch or (1 if args.quick else cfg["batch"])
    patch = tuple(args.patch or ((16, 32, 32) if args.quick else cfg["patch"]))
    repeats = 1 if args.quick else (args.repeats or cfg["repeats"])
    amp = device.type == "cuda"
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    names = ["mss_unet", "dynunet", "plainconvunet"]
    if not args.no_cl3d:
        names.append("mss_unet_cl3d")
    if args.compile or (device.type == "cuda" and not args.quick):
        names.append("mss_unet_compile")
    if device.type == "cuda":
        names.append("mss_unet_fp32")  # the effect of bf16 autocast (precision: bf16-mixed)

    meta = machine_meta(device)
    runners = {n: Runner(n, device, batch, patch, amp) for n in names}
    if args.memory_pass is not None:
        write_peaks(args.memory_pass, {n: r.step for n, r in runners.items()})
        return {}
    samples = run_interleaved(runners, repeats, device)
    if device.type == "cpu":
        peaks = peaks_from_child(__file__, list(sys.argv[1:] if argv is None else argv))
        for n in names:
            samples[n]["peak_bytes"] = [peaks[n]]
    rows = {}
    for n in names:
        rows[n] = {
            "median_s": statistics.median(samples[n]["time_s"]),
            "peak_mib": statistics.median(samples[n]["peak_bytes"]) / 2**20,
            "params": runners[n].params,
            "times_s": samples[n]["time_s"],
        }
    ratios = {
        "mss_unet/dynunet time": rows["mss_unet"]["median_s"] / rows["dynunet"]["median_s"],
        "mss_unet/plainconvunet time": rows["mss_unet"]["median_s"] / rows["plainconvunet"]["median_s"],
        "mss_unet/dynunet memory": rows["mss_unet"]["peak_mib"] / max(rows["dynunet"]["peak_mib"], 1e-9),
        "mss_unet/plainconvunet memory": rows["mss_unet"]["peak_mib"] / max(rows["plainconvunet"]["peak_mib"], 1e-9),
    }
    augment = augment_rows(device, batch, patch, repeats)
    for fast in ("mss_unet_cl3d", "mss_unet_compile", "mss_unet_fp32"):
        if fast in rows:
            ratios[f"{fast}/mss_unet time"] = rows[fast]["median_s"] / rows["mss_unet"]["median_s"]
    result = {
        **meta,
        "benchmark": "train_step",
        "input": [batch, 1, *patch],
        "precision": "bf16 autocast" if amp else "float32",
        "cudnn_benchmark": device.type == "cuda",
        "repeats": repeats,
        "quick": args.quick,
        "rows": rows,
        "ratios": ratios,
        "augment": augment,
    }
    stem = f"train_step_{device.type}"
    atomic_write(args.out / f"{stem}.json", json.dumps(result, indent=2) + "\n")
    atomic_write(args.out / f"{stem}.md", markdown(result))
    print(markdown(result))
    return result


def markdown(result: dict) -> str:
    shape = "x".join(str(s) for s in result["input"])
    lines = [
        f"### Train step ({result['device']}: {result['device_name']})",
        "",
        f"{result['date']}, torch {result['torch']}, input {shape}, {result['precision']}, Adam, Dice+CE on 4 "
        f"deep-supervision outputs; median of {result['repeats']} interleaved steps after a warm-up"
        + (" (quick smoke run)" if result["quick"] else "")
        + ".",
        "",
        "| variant | params | step time (s) | peak memory (MiB) |",
        "|---|---|---|---|",
    ]
    for name, row in result["rows"].items():
        lines.append(f"| {name} | {row['params'] / 1e6:.2f} M | {row['median_s']:.3f} | {row['peak_mib']:.0f} |")
    lines += ["", "| ratio | value |", "|---|---|"]
    lines += [f"| {k} | {v:.2f}x |" for k, v in result["ratios"].items()]
    aug = result.get("augment")
    if aug:
        lines += [
            "",
            f"Worst-case augmentation of one {shape} batch (rotation, scaling, elastic on every sample, gamma, flips): "
            f"CPU worker chain {aug['cpu_chain_s_per_batch'] * 1e3:.0f} ms (CPU, summed over the batch's samples) vs "
            f"`BatchAugment` on {result['device']} {aug['batch_augment_s_per_batch'] * 1e3:.0f} ms "
            f"({aug['batch_augment/cpu_chain time']:.2f}x).",
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
