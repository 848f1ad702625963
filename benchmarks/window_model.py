"""How much work each `segzoo infer` switch leaves, counted in net forward passes (windows x flips), no net run.

On a CPU a whole-case prediction costs (forward passes) x (seconds per window): the default ``max_batch`` runs one
flip per pass, and window cutting, weighting and stitching are a few percent (``docs/inference.md``). This script
counts the forward passes of every path on real-size and demo-size synthetic KiTS19 cases exactly as the inferer
places its windows (MONAI's grid; ``segzoo.inference.crop`` for the boxes), so the ratios to MONAI's 8-pass peer
are those of the arithmetic, free of the noise of a shared machine. ``whole_case_bench.py`` times the same paths.

The coarse-to-fine rows need the coarse pass's foreground; here it is the case's ground-truth label (resampled like
the image), i.e. a coarse pass that finds exactly the kidneys: the rows are what coarse-to-fine costs when its
localisation is right, not a measurement of that localisation (``whole_case_bench.py`` measures it with a trained
net).

Cases: ``large``: the KiTS19 generator's large mode (512x512 at ~0.78 mm, ~3 mm slices) with ``--large-slices`` (200)
slices; ``small_*``: demo-size cases (seed 10000, as the demo's held-out cases). Settings: the demo (spacing
3 x 2 x 2 mm, window 24x96x96) and the paper (3 x 0.78 x 0.78 mm, window 48x192x192); overlap 0.5; the
preprocessing clips to the case's own foreground 0.5/99.5 percentiles and z-scores with its foreground mean/std (a
one-case fingerprint). Writes ``<out>/window_model_cpu.{json,md}`` (the name keeps ``run.py``'s convention).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from whole_case_bench import large_case  # noqa: E402

from segzoo.data.preprocessor import PAPER_TARGET_SPACING, CTPreprocessor  # noqa: E402
from segzoo.inference.crop import (  # noqa: E402
    body_box,
    fit_box,
    foreground_boxes,
    intersects,
    merge_boxes,
)
from segzoo.utils import atomic_write_text  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SETTINGS = {"demo": ((3.0, 2.0, 2.0), (24, 96, 96)), "paper": (PAPER_TARGET_SPACING, (48, 192, 192))}


def grid(shape, roi, overlap: float = 0.5) -> list[tuple[slice, ...]]:
    """MONAI's sliding-window grid (cases smaller than the window are padded to it)."""
    from monai.data.utils import dense_patch_slices
    from monai.inferers.utils import _get_scan_interval

    size = tuple(max(int(n), r) for n, r in zip(shape, roi))
    return dense_patch_slices(size, roi, _get_scan_interval(size, roi, len(roi), (overlap,) * len(roi)))


def _size(box) -> list[int]:
    return [s.stop - s.start for s in box]


def passes(x: torch.Tensor, label: np.ndarray, roi, crop_margin: int = 4) -> dict:
    """Forward passes of every path for one preprocessed case ``x`` ``(1, *spatial)`` with label ``(*spatial)``."""
    shape = tuple(x.shape[1:])
    whole = grid(shape, roi)
    body = body_box(x, margin=crop_margin)
    fitted = fit_box(body, roi, shape)
    crop_exact = sum(intersects(w, body) for w in whole)
    crop_regrid = len(grid(_size(fitted), roi))
    coarse = len(grid(_size(fitted), roi, overlap=0.0))
    margin = tuple(r // 4 for r in roi)
    boxes = []
    for b in foreground_boxes(label, margin, shape=shape):
        inter = tuple(slice(max(s.start, t.start), min(s.stop, t.stop)) for s, t in zip(b, body))
        if all(s.start < s.stop for s in inter):
            boxes.append(inter)
    fine_exact = sum(any(intersects(w, b) for b in boxes) for w in whole) if boxes else crop_exact
    fine_regrid = (
        sum(len(grid(_size(b), roi)) for b in merge_boxes([fit_box(b, roi, shape) for b in boxes]))
        if boxes
        else crop_regrid
    )
    n = len(whole)
    rows = {
        "monai_8pass": 8 * n,
        "full": 8 * n,
        "crop_exact": 8 * crop_exact,
        "crop_regrid": 8 * crop_regrid,
        "coarse_to_fine": coarse + 8 * fine_exact,
        "coarse_to_fine_regrid": coarse + 8 * fine_regrid,
        "tta_inplane": 4 * crop_exact,
        "tta_none": crop_exact,
        "crop_regrid_inplane": 4 * crop_regrid,
    }
    return {
        "shape": list(shape),
        "roi": list(roi),
        "windows_whole_case": n,
        "body_box": [[s.start, s.stop] for s in body],
        "coarse_boxes": [[[s.start, s.stop] for s in b] for b in boxes],
        "forward_passes": rows,
        "ratio_to_monai_8pass": {k: v / rows["monai_8pass"] for k, v in rows.items()},
    }


def one_case_preprocessor(image: np.ndarray, label: np.ndarray, spacing) -> CTPreprocessor:
    fg = image[label > 0]
    lo, hi = np.percentile(fg, [0.5, 99.5])
    return CTPreprocessor(float(lo), float(hi), float(fg.mean()), float(fg.std()), spacing)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--large-slices", type=int, default=200)
    p.add_argument("--large-seed", type=int, default=20_000)
    p.add_argument("--small-cases", type=int, default=2)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    from segzoo.data.geometry import spacing_from_affine
    from segzoo.data.synthetic.kits19 import synth_kits19_case

    cases = {"large": large_case(args.large_slices, args.large_seed)}
    rng = np.random.default_rng(10_000)
    for k in range(args.small_cases):
        image, label, affine = synth_kits19_case(rng, size="small")
        cases[f"small_{k}"] = (image, label, spacing_from_affine(affine))
    out: dict = {}
    for name, (image, label, spacing) in cases.items():
        for setting, (target, roi) in SETTINGS.items():
            if name != "large" and setting == "paper":
                continue  # demo-size cases are the demo's
            pre = one_case_preprocessor(image.astype(np.float32), label, target)
            x = torch.from_numpy(pre.preprocess(image.astype(np.float32), spacing))
            lab = pre.preprocess_label(label, spacing)[0]
            out[f"{name}/{setting}"] = {"original_shape": list(image.shape), **passes(x, lab, roi)}
            print(name, setting, out[f"{name}/{setting}"]["ratio_to_monai_8pass"], flush=True)
    result = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "cases": out}
    atomic_write_text(args.out / "window_model_cpu.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(args.out / "window_model_cpu.md", markdown(result))
    print(markdown(result))
    return result


COLUMNS = (
    "crop_exact",
    "crop_regrid",
    "coarse_to_fine",
    "coarse_to_fine_regrid",
    "tta_inplane",
    "tta_none",
    "crop_regrid_inplane",
)


def markdown(result: dict) -> str:
    md = [
        "# Work per path: net forward passes (windows x flips) / MONAI 8-pass",
        "",
        f"{result['date']}, counted by `benchmarks/window_model.py` (no net runs; the coarse-to-fine rows take the "
        "ground-truth kidneys as the coarse pass's foreground, i.e. a correct localisation). On a CPU the time "
        "follows these ratios to within the few percent of window cutting and stitching; the coarse pass is counted "
        "as its windows (one flip).",
        "",
        "| case / setting | preprocessed | window | whole-case windows | "
        + " | ".join(f"`{c}`" for c in COLUMNS)
        + " |",
        "|---|---|---|---|" + "---|" * len(COLUMNS),
    ]
    for name, c in result["cases"].items():
        r = c["ratio_to_monai_8pass"]
        md.append(
            f"| {name} | {c['shape']} | {c['roi']} | {c['windows_whole_case']} | "
            + " | ".join(f"{r[k]:.3f}" for k in COLUMNS)
            + " |"
        )
    md += [
        "",
        "`crop_exact` is `segzoo infer`'s default (8 flips); `tta_*` use the exact crop; `crop_regrid_inplane` is "
        "`--crop regrid --tta inplane`.",
    ]
    return "\n".join(md) + "\n"


if __name__ == "__main__":
    main()
