"""Fingerprint + plan + preprocess of one nnU-Net-format dataset: segzoo vs ``nnUNetv2_plan_and_preprocess``.

Both read the same ``Dataset5xx_Synth`` (``segzoo synth nnunet``: two channels, CT and T2, four labels, thick
slices, every case stored RAS so that nnU-Net's storage-order statistics and segzoo's training-orientation ones
describe the same axes) and write their preprocessed cases:

- segzoo: ``PatchDataModule(data_dir).prepare_data()`` with the dataset check off (nnU-Net's command checks nothing
  unless ``--verify_dataset_integrity``) and again with it on: voxel fingerprint, plan, per-channel normalisation,
  resampling to the target spacing, the cache (arrays + foreground locations), one process;
- nnU-Net v2: ``nnUNetv2_plan_and_preprocess -d ID -c 3d_fullres -np 1 -npfp 1`` (fingerprint, plan, preprocess of
  the 3d_fullres configuration, one process each), as a subprocess (its start-up counted, as a user pays it).

The work differs where the defaults differ: nnU-Net resamples images with cubic splines (order 3; order 0 along the
thick axis of anisotropic data), segzoo trilinearly by default; the ``segzoo_cubic`` row uses cubic resampling
(``image_order=3``) for a like-for-like comparison.

Each repeat starts from empty output folders; the variants run interleaved; medians and the ratio come from one run.
The plans are printed side by side (target spacing, patch size, kernels and strides: nnU-Net's arrays are in its
storage order, z first for these RAS files, segzoo's in the training orientation, x first).

Usage: ``python benchmarks/plan_bench.py [--cases 16] [--shape 160 160 48] [--repeats 3]``; writes
``benchmarks/results/plan_cpu.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def _segzoo(raw: Path, verify: bool, image_order: int = 1) -> tuple[float, dict]:
    from segzoo.data.datamodule import PatchDataModule

    cache = raw.parent.parent / "segzoo_cache"  # outside nnUNet_raw: nnU-Net looks up datasets by id there
    shutil.rmtree(cache, ignore_errors=True)
    t0 = time.perf_counter()
    dm = PatchDataModule(
        str(raw), cache_dir=str(cache), verify=verify, num_val_cases=0.2, num_workers=0, image_order=image_order
    )
    dm.prepare_data()
    elapsed = time.perf_counter() - t0
    plan = dm.plan
    return elapsed, {
        "target_spacing": [round(v, 4) for v in plan["target_spacing"]],
        "patch_size": plan["patch_size"],
        "kernel_size": plan["kernel_size"],
        "strides": plan["strides"],
        "normalization": plan["normalization"],
    }


def _nnunet(root: Path, dataset_id: int) -> tuple[float, dict]:
    pre = root / "nnunet_preprocessed"
    shutil.rmtree(pre, ignore_errors=True)
    pre.mkdir()
    env = {**os.environ, "nnUNet_raw": str(root / "raw"), "nnUNet_preprocessed": str(pre), "nnUNet_results": str(pre)}
    exe = Path(sys.executable).with_name("nnUNetv2_plan_and_preprocess")
    cmd = [str(exe), "-d", str(dataset_id), "-c", "3d_fullres", "-np", "1", "-npfp", "1"]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"nnUNetv2_plan_and_preprocess failed: {done.stderr[-2000:]}")
    plans = json.loads(next(pre.glob("Dataset*/nnUNetPlans.json")).read_text())
    cfg = plans["configurations"]["3d_fullres"]
    arch = cfg["architecture"]["arch_kwargs"]
    return elapsed, {
        "target_spacing": [round(v, 4) for v in cfg["spacing"]],
        "patch_size": cfg["patch_size"],
        "kernel_size": arch["kernel_sizes"],
        "strides": arch["strides"],
        "normalization": cfg["normalization_schemes"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cases", type=int, default=16)
    p.add_argument("--shape", type=int, nargs=3, default=[160, 160, 48])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="4 small cases, 1 repeat")
    args = p.parse_args()
    if args.quick:
        args.cases, args.shape, args.repeats = 4, [56, 56, 18], 1
    import torch

    from segzoo.data.synthetic.nnunet import write_nnunet

    torch.set_num_threads(1)  # nnU-Net's preprocessing runs single-threaded numpy/scipy with -np 1
    dataset_id = 503
    times: dict[str, list[float]] = {"segzoo": [], "segzoo_verify": [], "segzoo_cubic": [], "nnunet": []}
    with tempfile.TemporaryDirectory(prefix="segzoo-plan-bench-") as tmp:
        root = Path(tmp)
        raw = root / "raw" / f"Dataset{dataset_id}_Synth"
        write_nnunet(raw, cases=args.cases, test_cases=0, seed=0, shape=tuple(args.shape), mixed_orientations=False)
        plans = {}
        for r in range(args.repeats):
            for name in ("segzoo", "nnunet", "segzoo_verify", "segzoo_cubic"):
                if name == "nnunet":
                    t, plans["nnunet"] = _nnunet(root, dataset_id)
                else:
                    order = 3 if name == "segzoo_cubic" else 1
                    t, plans["segzoo"] = _segzoo(raw, verify=name == "segzoo_verify", image_order=order)
                times[name].append(t)
                print(f"repeat {r}: {name} {t:.2f} s", file=sys.stderr)
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "cases": args.cases,
        "shape": args.shape,
        "channels": 2,
        "samples": times,
        "median_s": med,
        "ratio_segzoo_over_nnunet": med["segzoo"] / med["nnunet"],
        "ratio_segzoo_verify_over_nnunet": med["segzoo_verify"] / med["nnunet"],
        "ratio_segzoo_cubic_over_nnunet": med["segzoo_cubic"] / med["nnunet"],
        "plans": plans,
    }
    lines = [
        "# Plan and preprocess: segzoo vs nnU-Net v2 (cpu)",
        "",
        f"Fingerprint + plan + preprocess of {args.cases} two-channel cases of about {'x'.join(map(str, args.shape))} "
        f"voxels, one process each, CPU ({result['machine']}, {result['date']}), median of {args.repeats}:",
        "",
        "| variant | seconds | ratio to nnU-Net |",
        "|---|---|---|",
        f"| segzoo `PatchDataModule.prepare_data` | {med['segzoo']:.2f} | {result['ratio_segzoo_over_nnunet']:.2f}x |",
        f"| segzoo, with the dataset check (`segzoo verify`) | {med['segzoo_verify']:.2f} | "
        f"{result['ratio_segzoo_verify_over_nnunet']:.2f}x |",
        f"| segzoo, cubic image resampling (`--data.image_order 3`, nnU-Net's order) | {med['segzoo_cubic']:.2f} | "
        f"{result['ratio_segzoo_cubic_over_nnunet']:.2f}x |",
        f"| `nnUNetv2_plan_and_preprocess -c 3d_fullres -np 1 -npfp 1` | {med['nnunet']:.2f} | 1.00x |",
        "",
        "| plan | segzoo (x, y, z) | nnU-Net v2 (z, y, x) |",
        "|---|---|---|",
    ]
    for key in ("target_spacing", "patch_size", "kernel_size", "strides", "normalization"):
        lines.append(f"| {key} | `{plans['segzoo'][key]}` | `{plans['nnunet'][key]}` |")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "plan_cpu.json").write_text(json.dumps(result, indent=1))
    (RESULTS / "plan_cpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
