"""KiTS19 data-path benchmark: preprocessing time per case and training patches/s per worker, cached vs raw.

- "cached": segzoo's path, ``PatchDataset`` reading the preprocessed ``.npy`` cache with ``mmap_mode="r"``,
  cropping patch + margin, then the full augmentation chain (``build_kits19_transforms``).
- "raw": the usual MONAI pipeline re-reading NIfTI every iteration: ``LoadImaged`` -> ``EnsureChannelFirstd`` ->
  clip + z-score (``ScaleIntensityRanged`` + ``NormalizeIntensityd`` with the same fingerprint numbers) ->
  ``Spacingd`` to the target spacing -> ``SpatialPadd`` -> ``RandCropByPosNegLabeld`` (patch + margin, pos 0.33) -> the same augmentation.

Both run in one process with one torch thread, which is what a DataLoader worker gets, so the numbers are
"patches/s per worker". Writes ``benchmarks/results/data_cpu.{json,md}``.

Usage: ``python benchmarks/data_bench.py [--quick] [--work DIR]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from segzoo.data.augment import AugmentConfig
from segzoo.data.cache import preprocess_dataset
from segzoo.data.datamodule import PatchDataset
from segzoo.data.fingerprint import compute_fingerprint
from segzoo.data.kits19 import find_kits19_cases
from segzoo.data.preprocessor import CTPreprocessor
from segzoo.data.synthetic.kits19 import write_kits19
from segzoo.data.transforms import augmentation_input_size, build_kits19_transforms
from segzoo.utils import atomic_write_text

RESULTS = Path(__file__).resolve().parent / "results"


def _raw_pipeline(pre: CTPreprocessor, crop_size, augment):
    from monai.transforms import (
        Compose,
        EnsureChannelFirstd,
        LoadImaged,
        NormalizeIntensityd,
        RandCropByPosNegLabeld,
        ScaleIntensityRanged,
        Spacingd,
        SpatialPadd,
    )

    # Spacingd's pixdim is per array axis (it rescales the affine's columns), the same order as target_spacing
    pixdim = tuple(pre.target_spacing)
    return Compose(
        [
            LoadImaged(["image", "label"], image_only=True),
            EnsureChannelFirstd(["image", "label"]),
            ScaleIntensityRanged("image", pre.clip_low, pre.clip_high, pre.clip_low, pre.clip_high, clip=True),
            NormalizeIntensityd("image", subtrahend=pre.mean, divisor=max(pre.std, 1e-8)),
            Spacingd(["image", "label"], pixdim=pixdim, mode=("bilinear", "nearest")),
            SpatialPadd(["image", "label"], crop_size),  # small cases: pad to the crop with margin (as the cache path)
            RandCropByPosNegLabeld(["image", "label"], "label", crop_size, pos=0.33, neg=0.67, num_samples=1),
        ]
    ), augment


def _rate(fn, n: int) -> float:
    fn()  # warm-up
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return n / (time.perf_counter() - t)


def bench(name: str, size: str, cases: int, patch, target_spacing, n_cached: int, n_raw: int, work: Path) -> dict:
    data = work / f"{name}_data"
    cache = work / f"{name}_cache"
    t = time.perf_counter()
    write_kits19(data, cases=cases, seed=0, size=size)
    synth_s = (time.perf_counter() - t) / cases
    kcases = find_kits19_cases(data)
    t = time.perf_counter()
    fp = compute_fingerprint(kcases)
    fp_s = (time.perf_counter() - t) / cases
    pre = CTPreprocessor.from_fingerprint(fp, target_spacing)
    t = time.perf_counter()
    props = preprocess_dataset(kcases, cache, pre, progress=False)
    prep_s = (time.perf_counter() - t) / cases
    cubic = CTPreprocessor.from_fingerprint(fp, target_spacing, image_order=3)
    from segzoo.data.geometry import spacing_from_affine
    from segzoo.data.kits19 import load_kits19_case

    img, _, aff = load_kits19_case(kcases[0])
    t = time.perf_counter()
    pre.preprocess(img, spacing_from_affine(aff))
    linear_s = time.perf_counter() - t
    t = time.perf_counter()
    cubic.preprocess(img, spacing_from_affine(aff))
    cubic_s = time.perf_counter() - t

    out = {
        "size": size,
        "cases": cases,
        "original_shapes": [props[c.case_id]["original_shape"] for c in kcases],
        "preprocessed_shapes": [props[c.case_id]["preprocessed_shape"] for c in kcases],
        "target_spacing": list(pre.target_spacing),
        "patch_size": list(patch),
        "synth_s_per_case": synth_s,
        "fingerprint_s_per_case": fp_s,
        "preprocess_s_per_case": prep_s,
        "resample_image_linear_s": linear_s,
        "resample_image_cubic_s": cubic_s,
    }
    ids = [c.case_id for c in kcases]
    for label, probs in (("default_probs", {}), ("all_spatial_on", dict(rotate_prob=1, scale_prob=1, elastic_prob=1))):
        aug = build_kits19_transforms(patch, AugmentConfig(**probs))
        ds = PatchDataset(cache, ids, patch, length=10**6, transforms=aug)
        index = iter(range(10**6))  # every call a new item (patches are seeded by index)
        cached = _rate(lambda ds=ds, index=index: ds[next(index)], n_cached)
        raw_t, aug_raw = _raw_pipeline(pre, augmentation_input_size(aug, patch), aug)
        aug_raw.set_random_state(0)
        raw_t.set_random_state(0)
        items = [{"image": str(c.image), "label": str(c.label)} for c in kcases]
        rng = np.random.default_rng(0)

        def raw_item(raw_t=raw_t, aug_raw=aug_raw, items=items, rng=rng):
            d = raw_t(items[int(rng.integers(len(items)))])[0]
            return aug_raw({"image": d["image"], "label": d["label"]})

        check = raw_item()
        assert tuple(check["image"].shape[1:]) == tuple(patch), check["image"].shape
        raw = _rate(raw_item, n_raw)
        out[label] = {"cached_patches_per_s": cached, "raw_patches_per_s": raw, "ratio_cached_over_raw": cached / raw}
        print(f"{name} {label}: cached {cached:.2f}/s raw {raw:.2f}/s ratio {cached / raw:.1f}x", flush=True)
    # the GPU recipe (augment: false + BatchAugment on the device): the workers only crop
    crop = PatchDataset(cache, ids, patch, length=10**6, transforms=None)
    index = iter(range(10**6))
    out["crop_only_patches_per_s"] = _rate(lambda: crop[next(index)], n_cached)
    print(f"{name} crop only: {out['crop_only_patches_per_s']:.2f}/s", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations (smoke run)")
    parser.add_argument("--work", default=None, help="scratch folder (default: a temporary folder, removed)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # one DataLoader worker = one thread
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="segzoo_data_bench_"))
    q = args.quick
    try:
        results = {
            "machine": {
                "platform": platform.platform(),
                "cpu_count": os.cpu_count(),
                "load_average_at_start": os.getloadavg(),
                "torch": torch.__version__,
                "torch_threads": torch.get_num_threads(),
            },
            "demo_small": bench("demo_small", "small", 4, (32, 96, 96), None, 10 if q else 60, 4 if q else 20, work),
            "paper_large": bench(
                "paper_large", "large", 2, (48, 192, 192), (3.0, 0.78125, 0.78125), 4 if q else 20, 2 if q else 6, work
            ),
        }
        results["machine"]["load_average_at_end"] = os.getloadavg()
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_text(RESULTS / "data_cpu.json", json.dumps(results, indent=2))
    lines = [
        "# KiTS19 data path, CPU (one torch thread = one DataLoader worker)",
        "",
        f"Machine: {results['machine']['platform']}, {results['machine']['cpu_count']} cores, load average "
        f"{results['machine']['load_average_at_start'][0]:.1f} at start (shared machine: absolute numbers are noisy, "
        "the cached/raw ratio is the point).",
        "",
        "| setting | case shape -> preprocessed | patch | preprocess s/case | linear / cubic resample s | "
        "aug probs | cached patches/s | raw NIfTI patches/s | cached/raw |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in ("demo_small", "paper_large"):
        r = results[name]
        for label in ("default_probs", "all_spatial_on"):
            p = r[label]
            lines.append(
                f"| {name} | {r['original_shapes'][0]} -> {r['preprocessed_shapes'][0]} | {tuple(r['patch_size'])} | "
                f"{r['preprocess_s_per_case']:.2f} | {r['resample_image_linear_s']:.2f} / "
                f"{r['resample_image_cubic_s']:.2f} | {label} | {p['cached_patches_per_s']:.2f} | "
                f"{p['raw_patches_per_s']:.2f} | {p['ratio_cached_over_raw']:.1f}x |"
            )
    lines += [
        "",
        "default_probs: rotation 0.2, scaling 0.2, elastic 0.2, gamma 0.3, mirroring 0.5 per axis. "
        "all_spatial_on: rotation, scaling and elastic on every patch (worst case).",
        "Raw: MONAI LoadImaged + clip/z-score + Spacingd + RandCropByPosNegLabeld every iteration, same augmentation.",
        "Crop only (the GPU recipe: `augment: false`, `BatchAugment` on the device): "
        + ", ".join(
            f"{name} {results[name]['crop_only_patches_per_s']:.1f} patches/s"
            for name in ("demo_small", "paper_large")
            if "crop_only_patches_per_s" in results[name]
        )
        + " per worker.",
    ]
    atomic_write_text(RESULTS / "data_cpu.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
