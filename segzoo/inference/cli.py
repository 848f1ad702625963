"""``segzoo infer``: predict NIfTI files or KiTS-layout case folders with a checkpoint."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


def cmd_infer(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(
        prog="segzoo infer",
        description="Predict label maps for NIfTI images; writes OUT/<case>.nii.gz with the input's shape and affine.",
    )
    p.add_argument("--ckpt", required=True, help="Lightning checkpoint (.ckpt) or save_pretrained directory")
    p.add_argument("--input", required=True, help="a .nii/.nii.gz file, a folder of them, or of case folders")
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument(
        "--tta",
        nargs="?",
        const="all",
        default="all",
        choices=("all", "inplane", "none"),
        help="mirroring test-time augmentation: all spatial axes (8 flips, default), inplane (the last two axes, "
        "4 flips) or none",
    )
    p.add_argument("--no-tta", dest="tta", action="store_const", const="none", help="same as --tta none")
    p.add_argument(
        "--crop",
        default="exact",
        choices=("exact", "regrid", "none"),
        help="predict only the body box (threshold + largest component + margin on the preprocessed case), "
        "background outside: exact (default; the whole case's windows that touch the box, the same result inside "
        "it), regrid (windows re-placed over the box: fewer, results differ slightly) or none",
    )
    p.add_argument(
        "--coarse-to-fine",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="a cheap pass (no mirroring, no overlap) finds the foreground; the full pass runs only around it "
        "(background elsewhere; see docs/inference.md for the measured tolerance)",
    )
    p.add_argument(
        "--backend",
        default="torch",
        choices=("torch", "onnxruntime", "openvino"),
        help="run the net with PyTorch (default), or export it to ONNX and run it with ONNX Runtime or OpenVINO "
        "(CPU only; bf16 is --amp with the torch backend)",
    )
    p.add_argument("--postprocess", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    p.add_argument("--overlap", type=float, default=0.5)
    p.add_argument("--sw-batch-size", type=int, default=2)
    p.add_argument("--roi-size", type=int, nargs="+", default=None, help="override the checkpoint's window size")
    p.add_argument(
        "--amp",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="bf16 mixed precision for the net (default: on for CUDA, off on a CPU)",
    )
    p.add_argument(
        "--max-batch",
        type=int,
        default=None,
        help="most windows x mirror flips per forward pass (default: all flips of a window batch at once on an "
        "accelerator, one flip per pass on a CPU); lower it if the accelerator runs out of memory",
    )
    p.add_argument(
        "--memory-budget-gb",
        type=float,
        default=None,
        help="keep the whole-case output on the accelerator only when it needs at most this much memory, else stream "
        "it to the CPU (default: half the free accelerator memory)",
    )
    p.add_argument(
        "--continue",
        dest="resume",
        action="store_true",
        help="skip cases whose output already exists and is a readable NIfTI (finish an interrupted run); "
        "without it existing outputs are overwritten",
    )
    args = p.parse_args(argv)
    for name in ("max_batch", "sw_batch_size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.memory_budget_gb is not None and not args.memory_budget_gb > 0:
        p.error(f"--memory-budget-gb must be > 0, got {args.memory_budget_gb}")
    if args.backend != "torch" and not args.device.startswith("cpu"):
        p.error(f"--backend {args.backend} runs on the CPU; use --device cpu or --backend torch")
    if not 0 <= args.overlap < 1:
        p.error(f"--overlap must be in [0, 1), got {args.overlap}")

    from tqdm import tqdm

    from segzoo.data.io import DataError
    from segzoo.inference.predict import case_name, find_inputs, load_predictor

    try:
        inputs = find_inputs(args.input)
        predictor = load_predictor(
            args.ckpt,
            device=args.device,
            tta=args.tta,
            overlap=args.overlap,
            sw_batch_size=args.sw_batch_size,
            postprocess=args.postprocess,
            roi_size=args.roi_size,
            amp=args.amp,
            max_batch="auto" if args.max_batch is None else args.max_batch,
            memory_budget_gb=args.memory_budget_gb,
            crop=args.crop,
            coarse_to_fine=args.coarse_to_fine,
            backend=args.backend,
        )
        out_dir = Path(args.output)
        todo = [(path, out_dir / f"{case_name(path)}.nii.gz") for path in inputs]
        if args.resume:
            todo = [(path, out) for path, out in todo if not _readable_nifti(out)]
        for path, out in tqdm(todo, desc="segzoo infer", unit="case"):
            predictor.predict_file(path, out)  # atomic: an interrupted case leaves no output file
    except (DataError, FileNotFoundError) as e:
        print(f"segzoo infer: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    skipped = len(inputs) - len(todo)
    print(f"wrote {len(todo)} prediction(s) to {out_dir}" + (f"; {skipped} already there" if skipped else ""))
    return 0


def _readable_nifti(path: Path) -> bool:
    """True when ``path`` exists and its header and data can be read (a finished prediction)."""
    if not path.is_file():
        return False
    from segzoo.data.io import DataError, load_nifti

    try:
        load_nifti(path)
    except DataError:
        return False
    return True


INFERENCE_COMMANDS = {"infer": (cmd_infer, "predict NIfTI files / KiTS case folders with a checkpoint")}
