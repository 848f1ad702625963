"""KiTS19 demo in distribution and on held-out regimes: train a net with the demo budget, score it on test cases of
its training data's distribution and on synthetic cases of regimes that training never saw, and compare with a plain
MONAI ``DynUNet`` under the same budget.

    python benchmarks/kits19_heldout.py --out runs/heldout --net mss --seed 0
    python benchmarks/kits19_heldout.py --out runs/heldout --net dynunet --seed 0
    python benchmarks/kits19_heldout.py --out runs/single --data-regime single_appearance --seed 0
    python benchmarks/kits19_heldout.py --out runs/phantoms --data-regime phantoms --seed 0 --tag before
    python benchmarks/kits19_heldout.py --out runs/phantoms --data-regime phantoms --seed 0 --tag logdice \
        --override benchmarks/kits19_demo_logdice.yaml
    python benchmarks/kits19_heldout.py --out runs/phantoms --summary --results phantoms   # benchmarks/results/

``--data-regime`` picks the training data: segzoo's domain-randomised ``train`` regime (default), its earlier
``single_appearance`` generator, or ``phantoms`` (``benchmarks/kits19_phantoms.py``, a generator written
independently of segzoo's: data the recipe was not tuned on). ``OUT/test`` holds ``--test-cases`` in-distribution
test cases of the same source (never in the training folder); the held-out regimes are scored for segzoo's sources.

Both nets train through ``segzoo fit --config configs/kits19_demo.yaml`` (same data, split, patches, augmentation,
optimizer, epochs). ``dynunet`` swaps in ``monai.networks.nets.DynUNet`` with the demo net's kernels, strides and widths,
MONAI's ``DiceCELoss``, no deep supervision and no post-processing. Every run shares ``OUT/data`` (the "train" regime,
written on first use) and ``OUT/heldout`` (``--heldout-cases`` cases cycling through the held-out regimes: delayed
phase, 4.5-5 mm slices, tumours of radius 3-6 mm). Held-out cases are predicted as ``make demo`` does (overlap 0.25,
no mirroring: 8-flip TTA costs 8x on 2 CPU cores) and scored on their original grid (``Predictor.predict_array``, the ``segzoo infer`` path); the MSS U-Net is scored with and without its
validated post-processing. Results: ``OUT/<tag>_seed<S>/heldout_metrics.json`` (``tag`` defaults to the net).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _config(config: str) -> dict:
    import yaml

    return yaml.safe_load(Path(config).read_text())


def dynunet_args(config: str) -> dict:
    """``DynUNet`` arguments matching the MSS U-Net of ``config``: same kernels, strides and widths (base features
    doubled per level, capped at max features), instance norm, no deep supervision, no residual blocks."""
    net = _config(config)["model"]["net"]["init_args"]
    kernels, strides = net["kernel_size"], net["strides"]
    from segzoo.nets.mss_unet import default_features

    widths = {k: int(net[k]) for k in ("base_features", "max_features") if k in net}  # MSSUNet's defaults otherwise
    return {
        "spatial_dims": 3,
        "in_channels": 1,
        "out_channels": 3,
        "kernel_size": kernels,
        "strides": strides,
        "upsample_kernel_size": strides[1:],
        "filters": list(default_features(len(kernels), **widths)),
        "norm_name": "instance",
        "deep_supervision": False,
        "res_block": False,
    }


def dynunet_override(path: Path, config: str) -> Path:
    """A second ``--config`` that replaces net, loss and post-processing of the demo config (JSON is valid YAML)."""
    cfg = {
        "model": {
            "net": {"class_path": "monai.networks.nets.DynUNet", "init_args": dynunet_args(config)},
            "loss": {"class_path": "monai.losses.DiceCELoss", "init_args": {"to_onehot_y": True, "softmax": True}},
            "postprocess": None,
        }
    }
    path.write_text(json.dumps(cfg, indent=1))
    return path


def load_dynunet(ckpt_path: Path, config: str):
    """The trained peer and its preprocessor; the checkpoint is read as plain data (``weights_only=True``)."""
    import torch
    from monai.networks.nets import DynUNet

    from segzoo.data.preprocessor import CTPreprocessor

    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    net = DynUNet(**dynunet_args(config))
    net.load_state_dict({k[4:]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")})
    pre = next(v["preprocessor"] for v in ckpt.values() if isinstance(v, dict) and "preprocessor" in v)
    return net.eval(), CTPreprocessor.from_dict(pre)


def summary_table(out: Path) -> str:
    """Markdown rows: net, post-processing, seeds, then mean +- std over seeds of each regime's kidney / tumour Dice."""
    from segzoo.data.synthetic.kits19 import HELDOUT

    runs: dict[tuple[str, str], list[dict]] = {}
    for path in sorted(out.glob("*_seed*/heldout_metrics.json")):
        res = json.loads(path.read_text())
        for variant, block in res["results"].items():
            tag = res.get("tag", res["net"])
            runs.setdefault((tag, variant), []).append({**res, **block["mean"]})
    cols = [c for c in ("test", "all", *HELDOUT) if any(c in r for rows in runs.values() for r in rows)]
    names = {"test": "in-distribution", "all": "held-out all"}
    lines = [
        "| run | post-processing | seeds | "
        + " | ".join(f"{names.get(c, c)} kidney | {names.get(c, c)} tumour" for c in cols)
        + " | fit (s) |",
        "|---" * (4 + 2 * len(cols)) + "|",
    ]
    for (tag, variant), rows in runs.items():
        cells = []
        for c in cols:
            for key in ("kidney/dice", "tumour/dice"):
                vals = np.array([r[c][key] for r in rows if c in r])
                if not len(vals):
                    cells.append("-")
                elif len(vals) == 1:
                    cells.append(f"{vals[0]:.3f}")
                else:  # mean +- std, then each seed
                    each = " / ".join(f"{v:.2f}" for v in vals)
                    cells.append(f"{vals.mean():.3f} +- {vals.std():.3f} ({each})")
        fit = np.mean([r["timing_s"]["fit"] for r in rows])
        seeds = ",".join(str(r["seed"]) for r in rows)
        pp = "validated" if variant == "post" else "none"
        lines.append(f"| {tag} | {pp} | {seeds} | " + " | ".join(cells) + f" | {fit:.0f} |")
    return "\n".join(lines)


def write_results(out: Path, name: str, table: str) -> None:
    """``benchmarks/results/kits19_<name>_cpu.{md,json}``: the table and every run's means, arguments and timing."""
    import platform

    from segzoo.utils import atomic_write_text

    runs = []
    for path in sorted(out.glob("*_seed*/heldout_metrics.json")):
        res = json.loads(path.read_text())
        means = {k: v["mean"] for k, v in res.pop("results").items()}
        runs.append({"run": path.parent.name, **res, "means": means})
    results = ROOT / "benchmarks" / "results"
    meta = {"benchmark": f"kits19_{name}", "platform": platform.platform(), "load_average_now": os.getloadavg()}
    atomic_write_text(results / f"kits19_{name}_cpu.json", json.dumps({**meta, "runs": runs}, indent=2, default=float))
    head = (
        f"### KiTS19 demo recipe on `{out.name}` data (`benchmarks/kits19_heldout.py --summary`)\n\n"
        "Kidney / tumour Dice on each case's original grid; several seeds: mean +- std (each seed). Fit times on a "
        "shared 2-core machine: not comparable across rows unless said so in docs/experiments.md.\n\n"
    )
    atomic_write_text(results / f"kits19_{name}_cpu.md", head + table + "\n")


def resampling_bound(out: Path, run: Path) -> int:
    """Dice of the ground truth after the resampling round trip a prediction makes: one-hot label -> the run's
    preprocessing grid (its label resampling) -> ``restore`` to the original grid -> argmax; an upper bound that the
    grid alone puts on a perfect net."""
    import nibabel as nib
    import torch

    from segzoo.checkpoint import load_checkpoint
    from segzoo.data.synthetic.kits19 import HELDOUT
    from segzoo.inference.labels import labels_on_original_grid
    from segzoo.metrics.kits19 import kits19_scores

    pre = load_checkpoint(run / "checkpoints" / "last.ckpt").preprocessor()
    for case in sorted((out / "heldout").glob("case_*")):
        img = nib.load(case / "imaging.nii.gz")
        label = np.asarray(nib.load(case / "segmentation.nii.gz").dataobj)
        spacing = tuple(float(v) for v in np.linalg.norm(img.affine[:3, :3], axis=0))
        small = np.asarray(pre.preprocess_label(label, spacing))
        small = small.reshape(small.shape[-3:])  # (1, D, H, W) -> (D, H, W)
        onehot = torch.nn.functional.one_hot(torch.as_tensor(small.astype(np.int64)), 3).permute(3, 0, 1, 2).float()
        scores = kits19_scores(labels_on_original_grid(onehot, label.shape, pre), label)
        regime = HELDOUT[int(case.name.split("_")[1]) % len(HELDOUT)]
        print(
            f"{case.name} {regime:22s} kidney {scores['kidney/dice']:.3f} tumour {scores['tumour/dice']:.3f} "
            f"({int((label == 2).sum())} tumour voxels)"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/heldout")
    p.add_argument("--net", choices=("mss", "dynunet"), default="mss")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--config", default=str(ROOT / "configs" / "kits19_demo.yaml"))
    p.add_argument(
        "--data-regime",
        choices=("train", "single_appearance", "phantoms"),
        default="train",
        help="training data: segzoo's 'train' regime, its earlier 'single_appearance' generator, or the independent "
        "phantoms of benchmarks/kits19_phantoms.py",
    )
    p.add_argument("--override", default=None, help="a YAML fragment given to segzoo fit as a second --config")
    p.add_argument("--tag", default=None, help="run name (OUT/<tag>_seed<S>); default the net")
    p.add_argument("--train-cases", type=int, default=24, help="phantoms written to OUT/data (segzoo's: the recipe's)")
    p.add_argument("--test-cases", type=int, default=8, help="in-distribution test cases (OUT/test)")
    p.add_argument("--heldout-cases", type=int, default=6)
    p.add_argument("--heldout-seed", type=int, default=10_000)
    p.add_argument("--skip-fit", action="store_true", help="score the existing OUT/<tag>_seed<S> run again")
    p.add_argument("--fit-seconds", type=float, default=None, help="with --skip-fit: the fit time to record")
    p.add_argument("--summary", action="store_true", help="print the markdown table of every run under OUT and exit")
    p.add_argument(
        "--results",
        default=None,
        help="with --summary: also write benchmarks/results/kits19_<RESULTS>_cpu.{md,json} (table, per-run means)",
    )
    p.add_argument(
        "--resampling-bound",
        action="store_true",
        help="score the ground truth taken to the run's grid and back (the infer path) on OUT/heldout, and exit",
    )
    args, extra = p.parse_known_args(argv)
    if args.summary:
        table = summary_table(Path(args.out))
        print(table)
        if args.results:
            write_results(Path(args.out), args.results, table)
        return 0
    if args.resampling_bound:
        return resampling_bound(Path(args.out), Path(args.out) / f"{args.net}_seed{args.seed}")

    import nibabel as nib

    from segzoo.cli import main as segzoo
    from segzoo.data.synthetic.kits19 import HELDOUT, write_kits19
    from segzoo.inference.predict import Predictor, load_predictor
    from segzoo.inference.sliding_window import SlidingWindowTTAInferer
    from segzoo.metrics.kits19 import kits19_scores
    from segzoo.utils import atomic_write_text

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data, test, heldout = out / "data", out / "test", out / "heldout"
    tag = args.tag or args.net
    run = out / f"{tag}_seed{args.seed}"
    phantoms = args.data_regime == "phantoms"
    if phantoms:
        from kits19_phantoms import write_phantoms  # benchmarks/: a test instrument, not part of segzoo

        if not any(data.glob("case_*")):
            write_phantoms(data, cases=args.train_cases, seed=0)
        if not any(test.glob("case_*")):
            write_phantoms(test, cases=args.test_cases, seed=1, start_index=100)
    elif not any(test.glob("case_*")):  # indices 200+: never among the training folder's 0..N-1
        write_kits19(test, cases=args.test_cases, seed=args.heldout_seed, start_index=200, regime=args.data_regime)
    fit_args = ["fit", "--config", args.config]
    if args.net == "dynunet":
        fit_args += ["--config", str(dynunet_override(out / "dynunet_override.yaml", args.config))]
    if args.override:
        fit_args += ["--config", args.override]
    fit_args += ["--data.data_dir", str(data), "--trainer.default_root_dir", str(run)]
    if not phantoms:
        fit_args += ["--data.init_args.synthetic_regime", args.data_regime]
    fit_args += [f"--seed_everything={args.seed}", *extra]
    t0 = time.time()
    rc = 0 if args.skip_fit else segzoo(fit_args)
    if rc:
        return rc
    t_fit = time.time() - t0
    if args.skip_fit:
        old = run / "heldout_metrics.json"
        t_fit = args.fit_seconds or (json.loads(old.read_text())["timing_s"]["fit"] if old.exists() else float("nan"))
    if not phantoms and not any(heldout.glob("case_*")):
        write_kits19(heldout, cases=args.heldout_cases, seed=args.heldout_seed, start_index=300, regime="heldout")

    ckpt = run / "checkpoints" / "last.ckpt"
    if args.net == "mss":
        with_pp = load_predictor(ckpt, tta=False, overlap=0.25, amp=False)  # float32 like the peer
        variants = {"post": with_pp, "none": Predictor(with_pp.net, with_pp.inferer, with_pp.preprocessor, None)}
    else:
        net, pre = load_dynunet(ckpt, args.config)
        roi = list(_config(args.config)["data"]["init_args"]["patch_size"])
        inferer = SlidingWindowTTAInferer(roi_size=roi, sw_batch_size=2, overlap=0.25, mirror_axes=None)
        variants = {"none": Predictor(net, inferer, pre, None)}
    rows: dict[str, list[dict]] = {k: [] for k in variants}
    t1 = time.time()
    cases = [(c, "test") for c in sorted(test.glob("case_*"))]
    if not phantoms:
        cases += [(c, HELDOUT[int(c.name.split("_")[1]) % len(HELDOUT)]) for c in sorted(heldout.glob("case_*"))]
    for case, regime in cases:
        img = nib.load(case / "imaging.nii.gz")
        image = np.asarray(img.dataobj, dtype=np.float32)
        label = np.asarray(nib.load(case / "segmentation.nii.gz").dataobj)
        spacing = tuple(float(v) for v in np.linalg.norm(img.affine[:3, :3], axis=0))
        raw = variants["none"].predict_array(image, spacing)
        preds = {"none": raw}
        if "post" in variants:
            preds["post"] = np.asarray(variants["post"].postprocess(raw)) if variants["post"].postprocess else raw
        for k, pred in preds.items():
            rows[k].append({"case_id": case.name, "regime": regime, **kits19_scores(pred, label)})
    t_infer = time.time() - t1

    def means(rs: list[dict]) -> dict:
        keys = [k for k in rs[0] if k.endswith("/dice")]
        out = {}
        for name, sub in (
            ("test", [r for r in rs if r["regime"] == "test"]),
            ("all", [r for r in rs if r["regime"] != "test"]),
        ):
            if sub:  # "all": every held-out-regime case
                out[name] = {k: float(np.mean([r[k] for r in sub])) for k in keys}
        for reg in HELDOUT:
            sub = [r for r in rs if r["regime"] == reg]
            if sub:
                out[reg] = {k: float(np.mean([r[k] for r in sub])) for k in keys}
        return out

    post_cfg = getattr(variants.get("post"), "postprocess", None)
    summary = {
        "net": args.net,
        "tag": tag,
        "data_regime": args.data_regime,
        "config": args.config,
        "override": args.override,
        "extra_args": extra,
        "seed": args.seed,
        "timing_s": {"fit": round(t_fit, 1), "inference": round(t_infer, 1)},
        "postprocess_steps": list(getattr(post_cfg, "steps", []) or []),
        "results": {k: {"mean": means(v), "cases": v} for k, v in rows.items()},
    }
    atomic_write_text(run / "heldout_metrics.json", json.dumps(summary, indent=2, default=float))
    for k, v in rows.items():
        m = means(v)
        print(f"[{tag} seed {args.seed} {'with' if k == 'post' else 'without'} post-processing]")
        for reg, vals in m.items():
            print(f"  {reg:22s} " + ", ".join(f"{key} {val:.3f}" for key, val in vals.items()))
    print(f"  fit {t_fit:.0f} s, inference {t_infer:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
