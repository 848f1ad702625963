"""DR-Net's two readings of the residual (issue 25 item 4) at the notebooks' medium budget.

``map_norm_act=True`` (the default: the direction maps pass norm + act before the per-map residual) against
``map_norm_act=False`` (the earlier linear maps, where the residual folds into the branch weights), each at the paper
width (32-512), trained exactly as the notebooks' medium budget trains ``drnet``: 10 synthetic cases (6 train /
4 held out), 32x32 slices, batch 8, 40 epochs, Adam lr 1e-3, cross-entropy, validation every epoch. Each run reports
the mean Dice on the held-out cases after the last epoch and whether its validation curve has flattened (the
notebooks' convergence test: the best score of the last quarter of validations beats the best before by < 0.01).

    python benchmarks/drnet_readings.py --dataset chaos --out runs/drnet_readings --seeds 0 1 2

Results: ``OUT/<dataset>/<reading>/seed<k>/metrics.{csv,json}`` and the table ``OUT/<dataset>/readings.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CONVERGED_GAIN = 0.01
FEATURES = (32, 64, 128, 256, 512)


def datamodule(dataset: str, data_dir: Path):
    from segzoo.data.datamodule_2d import BraTSDataModule, CHAOSDataModule

    common = dict(data_dir=str(data_dir), image_size=(32, 32), resize_mode="resize", batch_size=8, train_fraction=0.6,
                  synthetic_cases=10, synthetic_size="small")  # fmt: skip
    if dataset == "chaos":
        dm = CHAOSDataModule(sequence="T2SPIR", slice_selection="all", **common)
    else:
        dm = BraTSDataModule(slice_selection="lesion", **common)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def convergence(csv: Path) -> tuple[bool, float]:
    import pandas as pd

    score = pd.read_csv(csv)["val/score"].dropna().to_numpy()
    k = max(3, len(score) // 4)
    if len(score) < 2 * k:
        return False, float("nan")
    gain = float(score[-k:].max() - score[:-k].max())
    return gain < CONVERGED_GAIN, gain


def train(dm, dataset: str, map_norm_act: bool, seed: int, run: Path, epochs: int) -> dict:
    import lightning as L
    import torch
    from lightning.pytorch.loggers import CSVLogger
    from monai.inferers import SliceInferer

    import segzoo
    from segzoo.losses import CELoss
    from segzoo.metrics import BraTSMetric, CHAOSMetric
    from segzoo.tasks import SegmentationTask

    L.seed_everything(seed, verbose=False)
    net = segzoo.create_net(
        "drnet", in_channels=dm.in_channels, out_channels=dm.num_classes, features=FEATURES, map_norm_act=map_norm_act
    )
    task = SegmentationTask(
        net=net,
        loss=CELoss(),
        inferer=SliceInferer(spatial_dim=0, roi_size=(32, 32), sw_batch_size=16),
        metric=CHAOSMetric() if dataset == "chaos" else BraTSMetric(),
        optimizer=lambda params: torch.optim.Adam(params, lr=1e-3, betas=(0.9, 0.999)),
        score_key="mean/dice" if dataset == "chaos" else None,
        num_overlays=0,
    )
    trainer = L.Trainer(
        max_epochs=epochs, accelerator="auto", devices=1, default_root_dir=run, logger=CSVLogger(run, name="", version=""),
        check_val_every_n_epoch=1, num_sanity_val_steps=0, log_every_n_steps=1, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    start = time.perf_counter()
    trainer.fit(task, datamodule=dm)
    seconds = time.perf_counter() - start
    converged, gain = convergence(run / "metrics.csv")
    mean = task.last_summary["mean"]
    classes = ("liver", "right_kidney", "left_kidney", "spleen") if dataset == "chaos" else ("WT", "TC", "ET")
    return {
        "seed": seed,
        "map_norm_act": map_norm_act,
        "params": sum(p.numel() for p in net.parameters()),
        "mean_dice": float(np.mean([mean[f"{c}/dice"] for c in classes])),
        "converged": converged,
        "late_gain": gain,
        "seconds": seconds,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", choices=("chaos", "brats"), default="chaos")
    p.add_argument("--out", default="runs/drnet_readings")
    p.add_argument("--data-dir", default=None, help="the notebook's data folder (default OUT/<dataset>/data)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--readings", nargs="+", default=["nonlinear", "linear"], choices=("nonlinear", "linear"))
    args = p.parse_args(argv)
    import logging
    import warnings

    import torch

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    out = Path(args.out) / args.dataset
    dm = datamodule(args.dataset, Path(args.data_dir) if args.data_dir else out / "data")
    rows = []
    for reading in args.readings:
        for seed in args.seeds:
            run = out / reading / f"seed{seed}"
            row = {"reading": reading, **train(dm, args.dataset, reading == "nonlinear", seed, run, args.epochs)}
            (run / "result.json").write_text(json.dumps(row, indent=1))
            rows.append(row)
            print(json.dumps(row), flush=True)
    lines = [
        "| reading | params | seeds | mean Dice per seed | mean +- std | converged (late gain) |",
        "|---|---|---|---|---|---|",
    ]
    for reading in args.readings:
        rs = [r for r in rows if r["reading"] == reading]
        d = [r["mean_dice"] for r in rs]
        spread = np.std(d, ddof=1) if len(d) > 1 else 0.0
        per_seed = ", ".join(f"{v:.3f}" for v in d)
        verdicts = ", ".join(("yes" if r["converged"] else "no") + " ({:+.3f})".format(r["late_gain"]) for r in rs)
        lines.append(
            f"| `map_norm_act={reading == 'nonlinear'}` | {rs[0]['params']:,} | {len(rs)} | {per_seed} | "
            f"{np.mean(d):.3f} +- {spread:.3f} | {verdicts} |"
        )
    (out / "readings.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
