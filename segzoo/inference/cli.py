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
        "--tta", action=argparse.BooleanOptionalAction, default=True, help="mirroring test-time augmentation"
    )
    p.add_argument("--postprocess", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    p.add_argument("--overlap", type=float, default=0.5)
    p.add_argument("--sw-batch-size", type=int, default=2)
    p.add_argument("--roi-size", type=int, nargs="+", default=None, help="override the checkpoint's window size")
    p.add_argument(
        "--continue",
        dest="resume",
        action="store_true",
        help="skip cases whose output already exists and is a readable NIfTI (finish an interrupted run); "
        "without it existing outputs are overwritten",
    )
    args = p.parse_args(argv)

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
