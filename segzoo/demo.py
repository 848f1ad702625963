"""``make demo``: the KiTS19 method end to end on synthetic KiTS19-format data, at laptop scale.

1. ``segzoo fit --config kits19_demo`` (the packaged recipe; synthetic cases are written on first use),
2. ``segzoo infer`` on held-out synthetic cases (a different seed, never seen in training) drawn from regimes held out
   of training (:data:`segzoo.data.synthetic.kits19.HELDOUT`: delayed contrast phase, 4.5-5 mm slices, tumours of
   radius 3-6 mm, in turn), scored on their original grid,
3. KiTS19 kidney / tumour Dice of those predictions, and a slice-overlay picture.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from segzoo.utils import atomic_write_text, cpu_allocator_from_env


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m segzoo.demo", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/demo", help="folder for data, run, predictions and pictures")
    p.add_argument("--config", default="kits19_demo", help="a recipe name (`segzoo recipes`) or a YAML file")
    p.add_argument("--heldout-cases", type=int, default=6)
    p.add_argument(
        "--heldout-regime", default="heldout", help="'heldout' (the three held-out regimes in turn) or a name"
    )
    args, extra = p.parse_known_args(argv)  # the rest goes to `segzoo fit`, e.g. --trainer.max_epochs=2
    if argv is None:  # the same opt-in as `segzoo` (SEGZOO_CPU_ALLOCATOR=reuse; `make demo` sets it)
        cpu_allocator_from_env()

    from segzoo.cli import main as segzoo
    from segzoo.data.synthetic import write_synthetic
    from segzoo.metrics.kits19 import KiTS19Metric

    out = Path(args.out).resolve()
    data, run, heldout, preds = out / "data", out / "run", out / "heldout", out / "predictions"
    t0 = time.time()
    rc = segzoo(
        ["fit", "--config", args.config, "--data.data_dir", str(data), "--trainer.default_root_dir", str(run)] + extra
    )
    if rc:
        return rc
    t_fit = time.time() - t0
    if not any(heldout.glob("case_*")):
        write_synthetic(
            "kits19", heldout, cases=args.heldout_cases, seed=10_000, start_index=300, regime=args.heldout_regime
        )
    t1 = time.time()
    rc = segzoo(
        ["infer", "--ckpt", str(run / "checkpoints" / "last.ckpt"), "--input", str(heldout), "--output", str(preds)]
        + ["--no-tta", "--overlap", "0.25"]  # 8-flip TTA costs 8x on 2 CPU cores; `segzoo infer` defaults to it
    )
    if rc:
        return rc
    t_infer = time.time() - t1

    import nibabel as nib
    import numpy as np

    metric = KiTS19Metric()
    for case in sorted(heldout.glob("case_*")):
        label = np.asarray(nib.load(case / "segmentation.nii.gz").dataobj)
        pred = np.asarray(nib.load(preds / f"{case.name}.nii.gz").dataobj)
        metric.update(pred[None], label[None], [case.name])
    summary = metric.summary()
    summary["timing_s"] = {"fit": round(t_fit, 1), "infer": round(t_infer, 1)}
    atomic_write_text(out / "heldout_metrics.json", json.dumps(summary, indent=2, default=float))

    picture = None
    try:
        from segzoo.viz import save_case_overlay

        first = sorted(heldout.glob("case_*"))[0]
        picture = save_case_overlay(
            first / "imaging.nii.gz",
            out / "overlay.png",
            label=first / "segmentation.nii.gz",
            pred=preds / f"{first.name}.nii.gz",
        )
    except ImportError:
        pass

    print("\n=== segzoo demo: multi-scale supervised 3D U-Net on synthetic KiTS19 ===")
    for row in summary["cases"]:
        print(f"  {row['case_id']}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items() if k != "case_id"))
    print("  mean: " + ", ".join(f"{k} {v:.3f}" for k, v in summary["mean"].items()))
    print(f"  fit {t_fit:.0f} s, infer {t_infer:.0f} s ({len(summary['cases'])} held-out-regime cases, no TTA)")
    print("\nOutputs:")
    print(f"  run folder (checkpoints, config, fingerprint, logs): {run}")
    print(f"  held-out predictions (NIfTI):                        {preds}")
    print(f"  held-out metrics:                                    {out / 'heldout_metrics.json'}")
    if picture:
        print(f"  overlay picture:                                     {picture}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
