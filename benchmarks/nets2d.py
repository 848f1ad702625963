"""2D nets benchmark: forward/backward time and memory of DR-Net, its U-Net + PFM ablation and the 2D baselines.

Reference: DR-Net (the deep rotation network of the CHAOS/BraTS experiments, ``segzoo.nets.drnet``) and the baselines
it is compared with: U-Net, CE-Net, DenseASPP, MS-Dual (``segzoo.nets.baselines``).

Each registered net (``segzoo.create_net(name)`` with its defaults) runs one training step: zero_grad, forward,
MONAI ``DiceCELoss(to_onehot_y=True, softmax=True)`` against random labels, backward, Adam step. CUDA: 8x1x256x256
under bf16 autocast with ``cudnn.benchmark``; CPU: float32 at the same 8x1x256x256 (2 rounds by default: a round of
the six nets takes minutes on two cores). Timing and memory as ``train_step.py``: a warm-up step per net, then ``--repeats`` interleaved rounds,
medians; memory = peak above what was allocated before the step (CUDA allocator, or sampled RSS on CPU).

Writes ``<out>/nets2d_<device>.json`` and ``.md``. Usage:
``python benchmarks/nets2d.py [--device cpu|cuda] [--repeats N] [--quick] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
from monai.losses import DiceCELoss

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_step import (  # noqa: E402
    RESULTS,
    atomic_write,
    machine_meta,
    measure,
    peaks_from_child,
    write_peaks,
)

NETS = ("drnet", "unet_pfm", "unet2d", "cenet", "denseaspp", "msdual")
DEFAULTS = {"cpu": {"batch": 8, "size": 256, "repeats": 2}, "cuda": {"batch": 8, "size": 256, "repeats": 10}}


class Runner2D:
    """One registered 2D net with its optimizer and a fixed random batch."""

    def __init__(self, name: str, device: torch.device, batch: int, size: int, amp: bool) -> None:
        import segzoo

        torch.manual_seed(0)
        self.net = segzoo.create_net(name).to(device).train()
        self.params = sum(p.numel() for p in self.net.parameters())
        self.classes = int(getattr(self.net, "out_channels", 0) or self._probe_classes(device))
        self.x = torch.randn(batch, 1, size, size, device=device)
        self.y = torch.randint(0, self.classes, (batch, 1, size, size), device=device)
        self.loss = DiceCELoss(to_onehot_y=True, softmax=True)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=1e-3)
        self.device, self.amp = device, amp

    def _probe_classes(self, device: torch.device) -> int:
        with torch.no_grad():
            self.net.eval()
            k = self.net(torch.zeros(1, 1, 32, 32, device=device)).shape[1]
            self.net.train()
        return k

    def step(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            out = self.net(self.x)
            out = out[0] if isinstance(out, list | tuple) else out
            loss = self.loss(out, self.y)
        loss.backward()
        self.opt.step()


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--size", type=int, default=None, help="square input size; default per device")
    p.add_argument("--nets", nargs="+", default=list(NETS))
    p.add_argument("--quick", action="store_true", help="smoke run: 1 round, 1x1x64x64")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--memory-pass", type=Path, default=None, help=argparse.SUPPRESS)  # internal: the memory child
    args = p.parse_args(argv)
    device = torch.device(args.device)
    cfg = DEFAULTS[device.type]
    batch = args.batch or (1 if args.quick else cfg["batch"])
    size = args.size or (64 if args.quick else cfg["size"])
    repeats = 1 if args.quick else (args.repeats or cfg["repeats"])
    amp = device.type == "cuda"
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    meta = machine_meta(device)
    runners = {n: Runner2D(n, device, batch, size, amp) for n in args.nets}
    if args.memory_pass is not None:
        write_peaks(args.memory_pass, {n: r.step for n, r in runners.items()})
        return {}
    for r in runners.values():
        r.step()
    samples = {n: ([], []) for n in runners}
    for _ in range(repeats):
        for n, r in runners.items():
            dt, peak = measure(r.step, device)
            samples[n][0].append(dt)
            samples[n][1].append(peak)
    if device.type == "cpu":  # memory from a separate pass (see train_step.peaks_from_child)
        peaks = peaks_from_child(__file__, list(sys.argv[1:] if argv is None else argv))
        samples = {n: (t, [peaks[n]]) for n, (t, _) in samples.items()}
    rows = {
        n: {
            "params": runners[n].params,
            "median_s": statistics.median(t),
            "peak_mib": statistics.median(m) / 2**20,
            "times_s": t,
        }
        for n, (t, m) in samples.items()
    }
    ref = rows.get("unet2d")
    ratios = {f"{n}/unet2d time": row["median_s"] / ref["median_s"] for n, row in rows.items() if ref and n != "unet2d"}
    result = {
        **meta,
        "benchmark": "nets2d",
        "input": [batch, 1, size, size],
        "precision": "bf16 autocast" if amp else "float32",
        "repeats": repeats,
        "quick": args.quick,
        "rows": rows,
        "ratios": ratios,
    }
    stem = f"nets2d_{device.type}"
    atomic_write(args.out / f"{stem}.json", json.dumps(result, indent=2) + "\n")
    atomic_write(args.out / f"{stem}.md", markdown(result))
    print(markdown(result))
    return result


def markdown(result: dict) -> str:
    shape = "x".join(str(s) for s in result["input"])
    note = "" if result["input"] == [8, 1, 256, 256] else " (smaller than the paper-style 8x1x256x256: CPU)"
    lines = [
        f"### 2D nets, train step ({result['device']}: {result['device_name']})",
        "",
        f"{result['date']}, torch {result['torch']}, input {shape}{note}, {result['precision']}, Adam, Dice+CE; "
        f"median of {result['repeats']} interleaved steps after a warm-up"
        + (" (quick smoke run)" if result["quick"] else "")
        + ".",
        "",
        "| net | params | step time (s) | peak memory (MiB) | time / unet2d |",
        "|---|---|---|---|---|",
    ]
    for name, row in result["rows"].items():
        ratio = result["ratios"].get(f"{name}/unet2d time", 1.0 if name == "unet2d" else float("nan"))
        lines.append(
            f"| {name} | {row['params'] / 1e6:.2f} M | {row['median_s']:.3f} | {row['peak_mib']:.0f} | {ratio:.2f}x |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
