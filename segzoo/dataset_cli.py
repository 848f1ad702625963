"""Plain ``segzoo`` subcommands for a user's own dataset: ``verify``, ``plan`` and ``evaluate``.

Each is an argparse program ``function(argv) -> exit code`` registered in :data:`DATASET_COMMANDS`. Bad input gives
``segzoo CMD: error: ...`` lines on stderr and exit code 2; nothing is written except where a command says so.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

# every layout segzoo.data.sources.open_source accepts, as the help of a command that takes a dataset names them
LAYOUTS = (
    "nnU-Net v2 raw folder, Decathlon task folder, MONAI datalist .json, KiTS19 folder (case_XXXXX/), BraTS folder "
    "(<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz, also under HGG/ and LGG/) or CHAOS MR folder (Train_Sets/MR/<id>/, "
    "DICOM series + PNG masks)"
)
PATH_HELP = "dataset folder (with dataset.json, or a KiTS19 / BraTS / CHAOS layout) or MONAI datalist .json file"


def _fail(cmd: str, message: object) -> int:
    print(f"segzoo {cmd}: error: {' '.join(str(message).split())}", file=sys.stderr)
    return 2


def cmd_verify(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(
        prog="segzoo verify",
        description=f"Check a dataset before training ({LAYOUTS}): every case has each channel, channels and label "
        "share a grid, label values are declared, no NaN/inf, numTraining agrees, every file reads. One line per "
        "problem and case; exit 2 on any error.",
    )
    p.add_argument("path", help=PATH_HELP)
    p.add_argument("--num-workers", type=int, default=0, help="processes reading the cases (0 = this one)")
    args = p.parse_args(argv)
    from segzoo.data.verify import verify_dataset

    report = verify_dataset(args.path, num_workers=args.num_workers)
    for line in report.warnings:
        print(f"segzoo verify: warning: {line}", file=sys.stderr)
    for line in report.errors:
        print(f"segzoo verify: error: {line}", file=sys.stderr)
    src = report.source
    what = (
        f"{src.kind} dataset '{src.name}': {len(src.training)} training / {len(src.test)} test cases, channels "
        f"{src.channel_names}, labels {src.label_names}"
        if src is not None
        else args.path
    )
    verdict = "OK" if report.ok else f"{len(report.errors)} error(s)"
    print(f"segzoo verify: {what}; {report.cases_checked} cases read: {verdict}, {len(report.warnings)} warning(s)")
    return 0 if report.ok else 2


def cmd_plan(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(
        prog="segzoo plan",
        description="Print the plan of a dataset as `segzoo fit --config mss_unet3d` will use it: normalisation per "
        "channel, target spacing, patch size and the 3D net's kernel sizes and strides (nnU-Net's rules), and the "
        f"axis 2D nets slice along; any layout: {LAYOUTS}. NIfTI headers only (a DICOM case's series is read); "
        "nothing is written unless --out.",
    )
    p.add_argument("path", help=PATH_HELP)
    p.add_argument("--memory-budget-gb", type=float, default=8.0, help="activation memory of one training step")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--base-features", type=int, default=30)
    p.add_argument("--max-features", type=int, default=320)
    p.add_argument("--max-levels", type=int, default=5, help="most resolution levels (0 = no limit, as nnU-Net)")
    p.add_argument("--max-patch-voxels", type=int, default=None, help="cap on the patch's voxel count (a CPU budget)")
    p.add_argument("--out", default=None, help="also write the plan to this JSON file")
    args = p.parse_args(argv)
    from segzoo.data.io import DataError
    from segzoo.data.planning import header_fingerprint, plan_dataset
    from segzoo.data.sources import open_source
    from segzoo.utils import atomic_write_text

    try:
        source = open_source(args.path)
        source.check()
        if not source.training:
            raise DataError(f"{args.path}: no labelled training case")
        plan = plan_dataset(
            header_fingerprint(source.training),
            source.channel_names,
            memory_budget_gb=args.memory_budget_gb,
            batch_size=args.batch_size,
            base_features=args.base_features,
            max_features=args.max_features,
            max_levels=args.max_levels or None,
            max_patch_voxels=args.max_patch_voxels,
        )
    except DataError as e:
        return _fail("plan", e)
    plan = {"dataset": source.summary(), **plan}
    text = json.dumps(plan, indent=1)
    print(text)
    if args.out:
        atomic_write_text(args.out, text)
        print(f"segzoo plan: wrote {args.out}", file=sys.stderr)
    return 0


def cmd_evaluate(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(
        prog="segzoo evaluate",
        description="Score a folder of predicted label maps against reference label maps of the same names: Dice and "
        "HD95 per label (names from --labels, a dataset.json), per case and mean; writes PRED_DIR/summary.json "
        "(nnU-Net's file name) unless --out says otherwise.",
    )
    p.add_argument("pred_dir")
    p.add_argument("label_dir")
    p.add_argument("--labels", default=None, help="dataset.json (nnU-Net or Decathlon) or datalist naming the labels")
    p.add_argument("--out", default=None, help="JSON file to write (default PRED_DIR/summary.json)")
    p.add_argument("--no-hd95", dest="hd95", action="store_false", help="Dice only (faster)")
    args = p.parse_args(argv)
    from segzoo.data.io import DataError, is_nifti_name, load_nifti, strip_nifti_suffix
    from segzoo.metrics.labels import LabelMetric
    from segzoo.utils import atomic_write_text

    pred_dir, label_dir = Path(args.pred_dir), Path(args.label_dir)
    for d in (pred_dir, label_dir):
        if not d.is_dir():
            return _fail("evaluate", f"{d}: no such folder")
    labels = None
    if args.labels:
        from segzoo.data.sources import open_source

        try:
            labels = open_source(Path(args.labels).parent if args.labels.endswith("dataset.json") else args.labels)
        except DataError as e:
            return _fail("evaluate", e)
        labels = labels.label_names
    refs = {strip_nifti_suffix(f.name): f for f in sorted(label_dir.iterdir()) if f.is_file() and is_nifti_name(f)}
    preds = {strip_nifti_suffix(f.name): f for f in sorted(pred_dir.iterdir()) if f.is_file() and is_nifti_name(f)}
    missing = sorted(set(refs) - set(preds))
    if not set(refs) & set(preds):
        return _fail("evaluate", f"{pred_dir}: no prediction has the name of a label map in {label_dir}")
    metric = LabelMetric(labels, hd95=args.hd95)
    counter = None
    failed = 0
    for case in sorted(set(refs) & set(preds)):
        try:
            ref, ref_affine = load_nifti(refs[case])
            pred, pred_affine = load_nifti(preds[case])
            if ref.shape != pred.shape:
                raise DataError(f"{preds[case]}: shape {pred.shape} differs from its reference {ref.shape}")
            from segzoo.data.geometry import spacing_from_affine

            metric.update(pred[None], ref[None], [case], [spacing_from_affine(ref_affine)])
            if counter is None:
                from segzoo.metrics.dead import DeadClassCounter, label_regions

                names = metric.labels or {v: f"label_{v}" for v in range(1, int(max(ref.max(), pred.max())) + 1)}
                top = max(names)
                counter = DeadClassCounter(label_regions(top + 1, [names.get(k, "") for k in range(1, top + 1)]))
            counter.update(np.minimum(pred, counter.num_classes - 1), np.minimum(ref, counter.num_classes - 1))
        except DataError as e:
            print(f"segzoo evaluate: error: {' '.join(str(e).split())}", file=sys.stderr)
            failed += 1
    for case in missing:
        print(f"segzoo evaluate: warning: {label_dir / refs[case].name}: no prediction named {case}", file=sys.stderr)
    summary = metric.summary()
    out = Path(args.out) if args.out else pred_dir / "summary.json"
    atomic_write_text(out, json.dumps(summary, indent=1))
    means = summary["mean"]
    for key in sorted(means):
        print(f"{key:<28} {means[key]:.4f}")
    warning = counter.warning("evaluated") if counter is not None else None
    if warning:  # a label never predicted, or Dice 0 wherever it is present: one line
        print(f"segzoo evaluate: warning: {warning.removeprefix('segzoo: ')}", file=sys.stderr)
    print(
        f"segzoo evaluate: {len(metric.rows)} cases scored, {failed} failed, {len(missing)} without prediction -> {out}"
    )
    return 1 if failed else 0


DATASET_COMMANDS = {
    "verify": (cmd_verify, "check a dataset (nnU-Net raw, Decathlon, datalist, KiTS19, BraTS, CHAOS) before training"),
    "plan": (cmd_plan, "print a dataset's plan: normalisation, spacing, patch size, 3D topology"),
    "evaluate": (cmd_evaluate, "score a folder of predictions against reference label maps (Dice, HD95)"),
}
