"""A short CPU run of ``--config mss_unet3d`` on ``segzoo synth nnunet`` data, scored on held-out cases' own grids.

The walk-through of ``docs/own_data.md`` at a CPU budget, end to end through the command line:
``segzoo synth nnunet`` (two channels, four labels, thick slices, mixed orientations) -> ``segzoo verify`` ->
``segzoo fit --config mss_unet3d`` (planned spacing, patch and topology; a smaller net and patch than the recipe's)
with ``num_test_cases`` labelled cases held out -> ``segzoo test`` (the held-out cases, predictions restored to each
case's original grid) and ``segzoo infer`` + ``segzoo evaluate`` on the same cases (the two scorings must agree).
The validation curve is printed so that a reader can see whether it had flattened.

Usage: ``python benchmarks/own_data_run.py [--steps 400] [--seed 0]``; writes
``benchmarks/results/own_data_cpu.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cases", type=int, default=20)
    p.add_argument("--test-cases", type=int, default=4)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--val-every", type=int, default=50, help="steps per epoch (validation after each)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep", default=None, help="keep the data and run in this folder")
    p.add_argument(
        "--adam", type=float, default=None, help="Adam with this learning rate instead of the recipe's SGD (1e-2)"
    )
    p.add_argument("--tag", default="", help="suffix of the result files (own_data_cpu<tag>.json / .md)")
    args = p.parse_args()
    from segzoo.cli import main as segzoo
    from segzoo.data.synthetic.nnunet import write_nnunet

    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="segzoo-own-data-"))
    data, run = tmp / "Dataset501_Synth", tmp / "run"
    shutil.rmtree(run, ignore_errors=True)
    if not (data / "dataset.json").is_file():
        write_nnunet(data, cases=args.cases, test_cases=0, seed=args.seed)
    assert segzoo(["verify", str(data)]) == 0
    epochs = max(1, args.steps // args.val_every)
    fit = [
        "--config", "mss_unet3d", "--data.data_dir", str(data), "--trainer.default_root_dir", str(run),
        "--trainer.accelerator", "cpu", "--trainer.precision", "32-true", "--trainer.max_epochs", str(epochs),
        "--trainer.check_val_every_n_epoch", "1", "--trainer.logger", "CSVLogger",
        "--trainer.logger.save_dir", str(run), "--trainer.enable_progress_bar", "false",
        "--data.iterations_per_epoch", str(args.val_every), "--data.num_workers", "1",
        "--data.num_val_cases", "3", "--data.num_test_cases", str(args.test_cases),
        "--data.max_patch_voxels", "40000", "--data.base_features", "8", "--data.max_features", "64",
        "--data.foreground_oversample", "0.5",
        "--model.net.init_args.base_features", "8", "--model.net.init_args.max_features", "64",
        "--model.scheduler.init_args.total_iters", str(epochs), "--seed_everything", str(args.seed),
        "--data.seed", str(args.seed),
    ]  # fmt: skip
    if args.adam is not None:
        fit += ["--model.optimizer", json.dumps({"class_path": "torch.optim.Adam", "init_args": {"lr": args.adam}})]
    t0 = time.perf_counter()
    assert segzoo(["fit", *fit]) == 0
    fit_s = time.perf_counter() - t0
    ckpt = run / "checkpoints" / "last.ckpt"
    curve = []
    for path in sorted(run.glob("lightning_logs/version_*/metrics.csv")):
        with open(path) as f:
            for row in csv.DictReader(f):
                if row.get("val/mean/dice"):
                    curve.append((int(row["step"]), float(row["val/mean/dice"])))
    test_args = [a for a in fit if a not in ()]
    assert segzoo(["test", *test_args, "--ckpt_path", str(ckpt)]) == 0
    test = json.loads((run / "metrics.json").read_text())
    split = json.loads(next(data.parent.glob(f"{data.name}_preprocessed/split.json")).read_text())
    held_out = tmp / "held_out"
    shutil.rmtree(held_out, ignore_errors=True)
    (held_out / "images").mkdir(parents=True)
    (held_out / "labels").mkdir()
    for case in split["test"]:
        for f in (data / "imagesTr").glob(f"{case}_*.nii.gz"):
            shutil.copy(f, held_out / "images" / f.name)
        shutil.copy(data / "labelsTr" / f"{case}.nii.gz", held_out / "labels" / f"{case}.nii.gz")
    t0 = time.perf_counter()
    assert segzoo(["infer", "--ckpt", str(ckpt), "--input", str(held_out / "images"),
                   "--output", str(held_out / "pred")]) == 0  # fmt: skip
    infer_s = time.perf_counter() - t0
    assert segzoo(["evaluate", str(held_out / "pred"), str(held_out / "labels"),
                   "--labels", str(data / "dataset.json")]) == 0  # fmt: skip
    evaluated = json.loads((held_out / "pred" / "summary.json").read_text())
    names = ("organ", "lesion", "vessel")
    result = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "seed": args.seed,
        "steps": epochs * args.val_every,
        "optimizer": "recipe (SGD 1e-2, Nesterov)" if args.adam is None else f"Adam {args.adam}",
        "fit_s": fit_s,
        "infer_s": infer_s,
        "test_cases": split["test"],
        "validation_curve": curve,
        "segzoo_test_mean": test["mean"],
        "infer_evaluate_mean": evaluated["mean"],
    }
    lines = [
        "# Own data: `mss_unet3d` on synthetic nnU-Net data (cpu)",
        "",
        f"`--config mss_unet3d` on `segzoo synth nnunet` data ({args.cases} cases: {len(split['train'])} train, "
        f"{len(split['val'])} validation, {len(split['test'])} held-out test), {result['steps']} steps, seed "
        f"{args.seed}, {result['optimizer']}, CPU ({result['machine']}, {result['date']}): fit {fit_s:.0f} s, `segzoo infer` (8 flips) of "
        f"the {len(split['test'])} test cases {infer_s:.0f} s.",
        "",
        "| scored by | " + " | ".join(f"{n} Dice" for n in names) + " | mean Dice |",
        "|---|" + "---|" * (len(names) + 1),
        "| `segzoo test` (validation TTA off, original grid) | "
        + " | ".join(f"{test['mean'][f'{n}/dice']:.3f}" for n in names)
        + f" | {test['mean']['mean/dice']:.3f} |",
        "| `segzoo infer` (8 flips) + `segzoo evaluate` | "
        + " | ".join(f"{evaluated['mean'][f'{n}/dice']:.3f}" for n in names)
        + f" | {evaluated['mean']['mean/dice']:.3f} |",
        "",
        "Validation mean Dice by step: " + ", ".join(f"{s}: {d:.3f}" for s, d in curve),
    ]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"own_data_cpu{args.tag}.json").write_text(json.dumps(result, indent=1))
    (RESULTS / f"own_data_cpu{args.tag}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
