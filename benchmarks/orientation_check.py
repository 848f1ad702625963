"""Issue 12 done-when check: one checkpoint's KiTS19 Dice on held-out cases stored as-is, RAS, LPS and axis-permuted
(H, W, slices) must agree (the label maps are the same voxels), and every output must overlay its input in SimpleITK.

    flock /tmp/segzoo-heavy.lock python benchmarks/orientation_check.py RUN/checkpoints/last.ckpt OUT [--no-tta]

Writes 4 synthetic held-out cases (seed 10000, like ``segzoo.demo``) to ``OUT/heldout`` once, re-saves them in each
orientation with nibabel (``as_reoriented``: the same voxels, the matching affine), runs ``segzoo infer`` on each
copy (extra arguments go to it) and writes ``OUT/orientation_results.json``: per copy the axis codes, the KiTS19
mean Dice, whether SimpleITK reads every output with its input's size, origin, spacing and direction, and whether the
labels equal the original copy's voxel for voxel once mapped back.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

VARIANTS = {"original": None, "RAS": ("R", "A", "S"), "LPS": ("L", "P", "S"), "permuted_PLI": ("P", "L", "I")}


def _to_codes(img, codes):
    ornt = nib.orientations.ornt_transform(
        nib.orientations.io_orientation(img.affine), nib.orientations.axcodes2ornt(codes)
    )
    return img.as_reoriented(ornt)


def main(argv: list[str]) -> int:
    import SimpleITK as sitk

    from segzoo.data.synthetic import write_synthetic
    from segzoo.metrics.kits19 import KiTS19Metric

    ckpt, root, extra = Path(argv[0]), Path(argv[1]), argv[2:]
    held = root / "heldout"
    if not any(held.glob("case_*")):
        write_synthetic("kits19", held, cases=4, seed=10_000, start_index=300)
    results = {}
    for name, codes in VARIANTS.items():
        folder = root / f"in_{name}"
        if not folder.exists():
            for case in sorted(held.glob("case_*")):
                (folder / case.name).mkdir(parents=True, exist_ok=True)
                for f in ("imaging.nii.gz", "segmentation.nii.gz"):
                    img = nib.load(case / f)
                    nib.save(img if codes is None else _to_codes(img, codes), folder / case.name / f)
        out = root / f"pred_{name}"
        shutil.rmtree(out, ignore_errors=True)
        cmd = [
            sys.executable,
            "-m",
            "segzoo",
            "infer",
            "--ckpt",
            str(ckpt),
            "--input",
            str(folder),
            "--output",
            str(out),
        ]
        if subprocess.call(cmd + extra):
            return 1
        metric, overlay = KiTS19Metric(), []
        for case in sorted(folder.glob("case_*")):
            label = np.asarray(nib.load(case / "segmentation.nii.gz").dataobj)
            pred = np.asarray(nib.load(out / f"{case.name}.nii.gz").dataobj)
            metric.update(pred[None], label[None], [case.name])
            a, b = sitk.ReadImage(str(case / "imaging.nii.gz")), sitk.ReadImage(str(out / f"{case.name}.nii.gz"))
            overlay.append(
                a.GetSize() == b.GetSize()
                and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-4)
                and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-6)
                and np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-6)
            )
        summary = metric.summary()
        codes_seen = nib.aff2axcodes(nib.load(next(folder.glob("case_*")) / "imaging.nii.gz").affine)
        results[name] = {
            "codes": "".join(codes_seen),
            "mean": summary.get("mean", summary),
            "sitk_overlay": all(overlay),
        }
    for name in VARIANTS:
        same = True
        for case in sorted(held.glob("case_*")):
            o = nib.load(root / "pred_original" / f"{case.name}.nii.gz")
            v = nib.load(root / f"pred_{name}" / f"{case.name}.nii.gz")
            t = nib.orientations.ornt_transform(
                nib.orientations.io_orientation(v.affine), nib.orientations.io_orientation(o.affine)
            )
            same &= np.array_equal(nib.orientations.apply_orientation(np.asarray(v.dataobj), t), np.asarray(o.dataobj))
        results[name]["same_labels_as_original"] = bool(same)
    text = json.dumps(results, indent=1, default=float)
    (root / "orientation_results.json").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
