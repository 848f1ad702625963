"""``make demo``: the KiTS19 method end to end on synthetic KiTS19-format data, at laptop scale.

1. ``segzoo fit --config kits19_demo`` (the packaged recipe; synthetic cases are written on first use),
2. ``segzoo infer`` on test cases never seen in training (a different seed), scored on their original grid: first
   in distribution (the training regime: what the method learned), then drawn from regimes held out of training
   (:data:`segzoo.data.synthetic.kits19.HELDOUT`: delayed contrast phase, 4.5-5 mm slices, tumours of radius 3-6 mm,
   in turn: where it stops generalising),
3. KiTS19 kidney / tumour Dice of those predictions, printed in that order, and a slice-overlay picture.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from segzoo.utils import atomic_write_text, cpu_allocator_from_env


def score_cases(cases: list[Path], preds: Path, regime_of=None) -> dict:
    """KiTS19 Dice of ``preds/<case>.nii.gz`` against each case's label: per case, mean, and (``regime_of(name)``
    given) the mean per regime under ``"regimes"``."""
    import nibabel as nib
    import numpy as np

    from segzoo.metrics.kits19 import KiTS19Metric

    metric = KiTS19Metric()
    for case in cases:
        label = np.asarray(nib.load(case / "segmentation.nii.gz").dataobj)
        pred = np.asarray(nib.load(preds / f"{case.name}.nii.gz").dataobj)
        metric.update(pred[None], label[None], [case.name])
    summary = metric.summary()
    if regime_of is not None:
        groups: dict[str, list[dict]] = {}
        for row in summary["cases"]:
            groups.setdefault(regime_of(row["case_id"]), []).append(row)
        summary["regimes"] = {
            name: {k: float(np.mean([r[k] for r in rows])) for k in summary["mean"]} for name, rows in groups.items()
        }
    return summary


def report(in_dist: dict, heldout: dict, regime: str) -> str:
    """The demo's scores as text: in distribution first (what the method learned), then the held-out-regime table
    (where it stops generalising)."""
    keys = ("kidney/dice", "tumour/dice")
    lines = [f"In distribution: {len(in_dist['cases'])} unseen test cases of the training regime '{regime}'"]
    for row in in_dist["cases"]:
        lines.append(f"  {row['case_id']}: " + ", ".join(f"{k} {row[k]:.3f}" for k in keys))
    lines.append("  mean: " + ", ".join(f"{k} {in_dist['mean'][k]:.3f}" for k in keys))
    lines.append(f"\nHeld-out regimes: {len(heldout['cases'])} cases of regimes training never saw")
    lines.append(f"  {'regime':22s} {'kidney':>7s} {'tumour':>7s}")
    for name, vals in heldout.get("regimes", {}).items():
        lines.append(f"  {name:22s} {vals['kidney/dice']:7.3f} {vals['tumour/dice']:7.3f}")
    lines.append(f"  {'all':22s} {heldout['mean']['kidney/dice']:7.3f} {heldout['mean']['tumour/dice']:7.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m segzoo.demo", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/demo", help="folder for data, run, predictions and pictures")
    p.add_argument("--config", default="kits19_demo", help="a recipe name (`segzoo recipes`) or a YAML file")
    p.add_argument("--test-cases", type=int, default=6, help="in-distribution test cases (the training regime)")
    p.add_argument("--heldout-cases", type=int, default=6)
    p.add_argument(
        "--heldout-regime", default="heldout", help="'heldout' (the three held-out regimes in turn) or a name"
    )
    args, extra = p.parse_known_args(argv)  # the rest goes to `segzoo fit`, e.g. --trainer.max_epochs=2
    if argv is None:  # the same opt-in as `segzoo` (SEGZOO_CPU_ALLOCATOR=reuse; `make demo` sets it)
        cpu_allocator_from_env()

    import yaml

    from segzoo.cli import main as segzoo
    from segzoo.data.synthetic import write_synthetic
    from segzoo.data.synthetic.kits19 import HELDOUT

    out = Path(args.out).resolve()
    data, run, heldout, preds = out / "data", out / "run", out / "heldout", out / "predictions"
    test, test_preds = out / "test", out / "test_predictions"
    print(
        "segzoo demo: training the kits19_demo recipe (350 steps) takes about 8-9 minutes on 2 free CPU cores (measured: "
        "docs/experiments.md), then inference on the test and held-out-regime cases about 1 minute",
        file=sys.stderr,
    )
    t0 = time.time()
    rc = segzoo(
        ["fit", "--config", args.config, "--data.data_dir", str(data), "--trainer.default_root_dir", str(run)] + extra
    )
    if rc:
        return rc
    t_fit = time.time() - t0
    regime = yaml.safe_load((run / "config.yaml").read_text())["data"]["init_args"].get("synthetic_regime", "all")
    if not any(test.glob("case_*")):  # indices 200+: not among the training folder's cases
        write_synthetic("kits19", test, cases=args.test_cases, seed=10_000, start_index=200, regime=regime)
    if not any(heldout.glob("case_*")):
        write_synthetic(
            "kits19", heldout, cases=args.heldout_cases, seed=10_000, start_index=300, regime=args.heldout_regime
        )
    t1 = time.time()
    for folder, pred_dir in ((test, test_preds), (heldout, preds)):
        rc = segzoo(
            ["infer", "--ckpt", str(run / "checkpoints" / "last.ckpt"), "--input", str(folder)]
            + ["--output", str(pred_dir), "--no-tta", "--overlap", "0.25"]  # 8-flip TTA costs 8x on 2 CPU cores
        )
        if rc:
            return rc
    t_infer = time.time() - t1

    def heldout_regime(case_id: str) -> str:
        if args.heldout_regime != "heldout":
            return args.heldout_regime
        return HELDOUT[int(case_id.split("_")[1]) % len(HELDOUT)]  # write_kits19's cycle

    in_dist = score_cases(sorted(test.glob("case_*")), test_preds)
    summary = score_cases(sorted(heldout.glob("case_*")), preds, heldout_regime)
    timing = {"fit": round(t_fit, 1), "infer": round(t_infer, 1)}
    summary["timing_s"] = timing
    atomic_write_text(out / "heldout_metrics.json", json.dumps(summary, indent=2, default=float))
    atomic_write_text(
        out / "metrics.json",
        json.dumps({"in_distribution": in_dist, "heldout": summary, "timing_s": timing}, indent=2, default=float),
    )

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
    print(report(in_dist, summary, regime))
    n_cases = len(in_dist["cases"]) + len(summary["cases"])
    print(f"\nfit {t_fit:.0f} s, infer {t_infer:.0f} s ({n_cases} cases, no TTA)")
    print("\nOutputs:")
    print(f"  run folder (checkpoints, config, fingerprint, logs): {run}")
    print(f"  predictions (NIfTI):                                 {test_preds}, {preds}")
    print(f"  metrics (in distribution and held-out):              {out / 'metrics.json'}")
    if picture:
        print(f"  overlay picture:                                     {picture}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
