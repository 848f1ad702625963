"""A 5-fold ensemble in one ``segzoo infer`` vs five separate ``segzoo infer`` runs: time and peak memory, CPU.

Five checkpoints of the demo's MSS U-Net (``configs/kits19_demo.yaml``: widths 16-128, kernels ``[1,3,3]`` then 3,
strides ``[1,2,2]`` then 2, window 24x96x96; each member its own seeded weights, one CT preprocessing) predict one
CT volume already at the training spacing (no resampling, so the net dominates) with in-plane mirroring (4 flips)
and the default body crop:

- ``ensemble``: ``segzoo infer --ckpt m0 ... --ckpt m4``: one process, the case read and preprocessed once, the
  members' mean probabilities (:mod:`segzoo.inference.ensemble`);
- ``separate``: ``segzoo infer --ckpt mK`` five times, one process each (what averaging fold predictions afterwards
  would start from; the averaging itself is not counted).

Each variant runs in child processes: the wall time includes the interpreter and import start-up a user pays
(``end_to_end``); each child also reports the time inside ``segzoo.cli.main`` after its heavy imports (``work``).
Peak memory is each child's peak resident set size (``ru_maxrss``; also the part above the peak its imports alone
reach, about 0.5 GB of PyTorch and MONAI), measured in a separate pass with
``MALLOC_MMAP_THRESHOLD_=65536`` (freed tensors leave the RSS, see benchmarks/README.md); for ``separate`` the largest
of the five. The variants alternate in ABBA order (ensemble, separate, separate, ensemble, ...), so a load that drifts
during the run (the reference machine is shared) hits both alike; the table gives medians and the median of the
per-round ratios. The ensemble's labels are checked against the argmax of the members' mean probabilities computed in
process.

Usage: ``python benchmarks/ensemble_bench.py [--shape 32 128 128] [--members 5] [--repeats 3]``; writes
``benchmarks/results/ensemble_cpu.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
NET = {
    "kernel_size": [[1, 3, 3], 3, 3, 3],
    "strides": [1, [1, 2, 2], 2, 2],
    "base_features": 16,
    "max_features": 128,
    "deep_supervision": True,
}
ROI = [24, 96, 96]
SPACING = (3.0, 2.0, 2.0)
INFER = ["--tta", "inplane", "--device", "cpu"]
CHILD = """
import json, resource, sys, time
import segzoo.inference.ensemble  # the heavy imports (torch, MONAI) before the clock starts
from segzoo.cli import main
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # the interpreter and its imports
t0 = time.perf_counter()
code = main(json.loads(sys.argv[1]))
work = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print("BENCH", json.dumps({"work_s": work, "maxrss_mb": peak, "import_rss_mb": base}))
sys.exit(code)
"""


def write_members(folder: Path, members: int) -> list[Path]:
    import torch

    from segzoo.checkpoint import checkpoint_format
    from segzoo.data.preprocessor import CTPreprocessor
    from segzoo.inference import SlidingWindowTTAInferer
    from segzoo.nets import MSSUNet

    pre = CTPreprocessor(clip_low=-80.0, clip_high=300.0, mean=100.0, std=80.0, target_spacing=SPACING)
    paths = []
    for k in range(members):
        torch.manual_seed(k)
        net = MSSUNet(3, 1, 3, **NET)
        fmt = checkpoint_format(net, SlidingWindowTTAInferer(roi_size=ROI, mirror_axes=None), None, pre)
        path = folder / f"fold_{k}.ckpt"
        torch.save({"segzoo_format": fmt, "state_dict": {f"net.{n}": v for n, v in net.state_dict().items()}}, path)
        paths.append(path)
    return paths


def write_case(folder: Path, shape: tuple[int, int, int]) -> Path:
    """A CT-like volume: body ellipse ~40 HU, two kidney-like blobs ~150 HU, noise; stored at the training spacing."""
    import numpy as np

    from segzoo.data.io import save_nifti

    rng = np.random.default_rng(0)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    ct = np.full(shape, -1000.0, np.float32)
    ct[(y / 0.8) ** 2 + (x / 0.9) ** 2 < 1] = 40.0
    for cx in (-0.4, 0.4):
        ct[(z / 0.5) ** 2 + ((y + 0.1) / 0.2) ** 2 + ((x - cx) / 0.15) ** 2 < 1] = 150.0
    ct += rng.normal(0, 15, shape).astype(np.float32)
    affine = np.diag([*SPACING, 1.0])
    return save_nifti(ct.astype(np.int16), affine, folder / "ct.nii.gz")


def run_child(argv: list[str], env: dict[str, str]) -> dict:
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(argv)], capture_output=True, text=True, env=env, timeout=3600
    )
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-2000:])
    line = [x for x in result.stdout.splitlines() if x.startswith("BENCH")][-1]
    return {"wall_s": wall, **json.loads(line.split(" ", 1)[1])}


def ensemble(members: list[Path], case: Path, out: Path, env: dict[str, str]) -> dict:
    argv = ["infer", *(x for m in members for x in ("--ckpt", str(m))), "--input", str(case), "--output", str(out)]
    r = run_child([*argv, *INFER], env)
    return {
        "end_to_end_s": r["wall_s"],
        "work_s": r["work_s"],
        "peak_rss_mb": r["maxrss_mb"],
        "above_imports_mb": r["maxrss_mb"] - r["import_rss_mb"],
    }


def separate(members: list[Path], case: Path, out: Path, env: dict[str, str]) -> dict:
    runs = [
        run_child(["infer", "--ckpt", str(m), "--input", str(case), "--output", str(out / m.stem), *INFER], env)
        for m in members
    ]
    return {
        "end_to_end_s": sum(r["wall_s"] for r in runs),
        "work_s": sum(r["work_s"] for r in runs),
        "peak_rss_mb": max(r["maxrss_mb"] for r in runs),
        "above_imports_mb": max(r["maxrss_mb"] - r["import_rss_mb"] for r in runs),
    }


def check_average(members: list[Path], case: Path, out: Path) -> dict:
    """The ensemble's labels vs the argmax of the mean of the members' own probabilities (in process)."""
    import numpy as np
    import torch

    from segzoo.data.io import load_nifti
    from segzoo.inference.labels import labels_on_original_grid
    from segzoo.inference.predict import load_predictor

    volume, _ = load_nifti(case)
    total = None
    for m in members:
        p = load_predictor(m, tta="inplane", crop="exact", postprocess=False)
        with torch.inference_mode():
            probs = p.inferer(p.prepare(volume, SPACING), p.net)[0].clone()
        total = probs if total is None else total + probs
    by_hand = labels_on_original_grid(total / len(members), volume.shape, p.preprocessor, None)
    written = load_nifti(out / "ct.nii.gz")[0]
    return {"voxels": int(by_hand.size), "differing_voxels": int((np.asarray(written) != by_hand).sum())}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", type=int, nargs=3, default=[32, 128, 128], help="CT volume (D, H, W) voxels")
    p.add_argument("--members", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=str(RESULTS / "ensemble_cpu.json"))
    args = p.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(os.cpu_count() or 1))}
    mem_env = {**env, "MALLOC_MMAP_THRESHOLD_": "65536"}
    with tempfile.TemporaryDirectory(prefix="segzoo-ensemble-bench-") as tmp:
        tmp = Path(tmp)
        members, case = write_members(tmp, args.members), write_case(tmp, tuple(args.shape))
        variants = {"ensemble": ensemble, "separate": separate}
        for name, fn in variants.items():  # warm-up (file caches)
            fn(members, case, tmp / f"warm_{name}", env)
        samples: dict[str, list[dict]] = {name: [] for name in variants}
        for r in range(args.repeats):
            order = list(variants) if r % 2 == 0 else list(reversed(variants))  # ABBA
            for name in order:
                samples[name].append(variants[name](members, case, tmp / f"{name}_{r}", env))
                print(f"{name} #{r}: {samples[name][-1]}", file=sys.stderr)
        memory = {name: fn(members, case, tmp / f"mem_{name}", mem_env) for name, fn in variants.items()}
        check = check_average(members, case, tmp / "ensemble_0")
    rows = {}
    for name in variants:
        rows[name] = {
            "end_to_end_s": statistics.median(s["end_to_end_s"] for s in samples[name]),
            "work_s": statistics.median(s["work_s"] for s in samples[name]),
            "peak_rss_mb": memory[name]["peak_rss_mb"],
            "above_imports_mb": memory[name]["above_imports_mb"],
            "samples": samples[name],
        }
    ratio = {  # per round (paired), then the median; memory from its own pass
        k: statistics.median(e[k] / s[k] for e, s in zip(samples["ensemble"], samples["separate"]))
        for k in ("end_to_end_s", "work_s")
    }
    for k in ("peak_rss_mb", "above_imports_mb"):
        ratio[k] = rows["ensemble"][k] / rows["separate"][k]
    machine = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "load_avg": os.getloadavg(),
    }
    record = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": machine,
        "setting": {"shape": args.shape, "members": args.members, "repeats": args.repeats, "net": NET, "roi": ROI},
        "infer_args": INFER,
        "results": rows,
        "ratio_ensemble_to_separate": ratio,
        "check": check,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    shape = "x".join(map(str, args.shape))
    md = [
        f"{args.members} demo-size MSS U-Nets on one {shape} CT volume (in-plane mirroring, 4 flips), CPU "
        f"({machine['machine']}, {machine['cpus']} CPUs, {record['date'][:10]}), median of {args.repeats}:",
        "",
        "| variant | end to end (s) | inside `segzoo infer` (s) | peak RSS (MB) | of it above the imports (MB) |",
        "|---|---|---|---|---|",
    ]
    for name, label in (
        ("ensemble", f"one `segzoo infer` with {args.members} `--ckpt`"),
        ("separate", f"{args.members} separate `segzoo infer` runs (peak: the largest)"),
    ):
        r = rows[name]
        md.append(
            f"| {label} | {r['end_to_end_s']:.1f} | {r['work_s']:.1f} | {r['peak_rss_mb']:.0f} | "
            f"{r['above_imports_mb']:.0f} |"
        )
    md.append(
        f"| ratio ensemble / separate (median of the rounds' ratios) | {ratio['end_to_end_s']:.2f}x | "
        f"{ratio['work_s']:.2f}x | {ratio['peak_rss_mb']:.2f}x | {ratio['above_imports_mb']:.2f}x |"
    )
    md += [
        "",
        f"The ensemble's labels differ from the argmax of the members' mean probabilities (computed in process) in "
        f"{check['differing_voxels']} of {check['voxels']} voxels.",
    ]
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
