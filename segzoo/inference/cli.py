"""``segzoo infer``: predict NIfTI files or KiTS-layout case folders with a checkpoint."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


def cmd_infer(argv: Sequence[str]) -> int:
    from segzoo.tools_cli import TRUST_HELP

    p = argparse.ArgumentParser(
        prog="segzoo infer",
        description="Predict label maps. 3D checkpoints: NIfTI images (any orientation) or KiTS19 case folders -> "
        "OUT/<case>.nii.gz with the input's shape and header. 2D checkpoints (DR-Net, 2D baselines): BraTS case "
        "folders -> OUT/<case>_seg.nii.gz (0/1/2/4), CHAOS DICOM series or Train_Sets/Test_Sets trees -> "
        "OUT/<case>_<sequence>.nii.gz (+ Ground-style PNGs with --chaos-png). A bad input is reported on one line "
        "and skipped; the run ends with a written / skipped / failed summary and exits 1 if any input failed.",
    )
    p.add_argument("--ckpt", required=True, help="Lightning checkpoint (.ckpt) or save_pretrained directory")
    p.add_argument(
        "--input",
        required=True,
        help="3D: a .nii/.nii.gz file, a folder of them, or of KiTS19 case folders; 2D: a BraTS case folder or a "
        "folder of them, a CHAOS DICOM series folder or a CHAOS Train_Sets/Test_Sets tree",
    )
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
    p.add_argument(
        "--sw-batch-size", type=int, default=None, help="windows per pass (3D, default 2) or slices per pass (2D, 16)"
    )
    p.add_argument(
        "--chaos-png",
        action="store_true",
        help="CHAOS (2D checkpoints): also write one Ground-style PNG per slice (grey 63/126/189/252) to "
        "OUT/<case>_<sequence>_png/",
    )
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
    p.add_argument("--trust-checkpoint", action="store_true", help=TRUST_HELP)
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

    from segzoo.checkpoint import load_checkpoint
    from segzoo.data.io import DataError
    from segzoo.inference.predict import find_cases, load_predictor
    from segzoo.inference.predict_2d import load_slice_predictor

    try:
        loaded = load_checkpoint(args.ckpt, trust=args.trust_checkpoint)  # read once, for the 2D or the 3D path
        slices = load_slice_predictor(
            loaded,
            device=args.device,
            sw_batch_size=args.sw_batch_size or 16,
            trust=args.trust_checkpoint,
        )
    except (DataError, FileNotFoundError) as e:
        print(f"segzoo infer: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    if slices is not None:
        return _infer_2d(slices, args)
    if args.chaos_png:
        print(f"segzoo infer: error: --chaos-png: {args.ckpt} is a 3D checkpoint, not a CHAOS one", file=sys.stderr)
        return 2
    try:
        in_channels = int(getattr(loaded.net, "init_config", {}).get("init_args", {}).get("in_channels", 1))
        inputs = find_cases(args.input, in_channels)
        predictor = load_predictor(
            loaded,
            device=args.device,
            tta=args.tta,
            overlap=args.overlap,
            sw_batch_size=args.sw_batch_size or 2,
            postprocess=args.postprocess,
            roi_size=args.roi_size,
            amp=args.amp,
            max_batch="auto" if args.max_batch is None else args.max_batch,
            memory_budget_gb=args.memory_budget_gb,
            trust=args.trust_checkpoint,
            crop=args.crop,
            coarse_to_fine=args.coarse_to_fine,
            backend=args.backend,
        )
    except (DataError, FileNotFoundError) as e:
        print(f"segzoo infer: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    import logging

    logging.basicConfig(level=logging.INFO, format="segzoo infer: %(message)s")  # notes such as oblique inputs
    out_dir = Path(args.output)
    todo = [(case, out_dir / f"{case.case_id}.nii.gz") for case in inputs]
    if args.resume:
        todo = [(case, out) for case, out in todo if not _readable_nifti(out)]
    summary = run_folder(todo, predictor.predict_case, desc="segzoo infer")
    return report(summary, out_dir, skipped=len(inputs) - len(todo))


def _infer_2d(predictor, args) -> int:
    """The 2D branch of ``segzoo infer``: BraTS case folders or CHAOS series, slice by slice."""
    from segzoo.data.io import DataError
    from segzoo.inference.predict_2d import find_2d_inputs

    if args.chaos_png and predictor.preprocessor.dataset != "chaos":
        print(
            f"segzoo infer: error: --chaos-png: {args.ckpt} is a {predictor.preprocessor.dataset} checkpoint",
            file=sys.stderr,
        )
        return 2
    try:
        items = find_2d_inputs(args.input, predictor.preprocessor)
    except DataError as e:
        print(f"segzoo infer: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    import logging

    logging.basicConfig(level=logging.INFO, format="segzoo infer: %(message)s")
    out_dir = Path(args.output)
    by_path = {item.path: item for item in items}
    todo = [(item.path, out_dir / f"{item.name}.nii.gz") for item in items]
    if args.resume:
        todo = [(path, out) for path, out in todo if not _readable_nifti(out)]
    summary = run_folder(
        todo, lambda path, out: predictor.predict(by_path[path], out.parent, png=args.chaos_png), desc="segzoo infer"
    )
    return report(summary, out_dir, skipped=len(items) - len(todo))


def run_folder(todo, predict, desc: str) -> dict[str, list]:
    """Predict every ``(input, output)`` of ``todo`` with ``predict(input, output)``; a failing input is reported on
    one line (file and reason) and skipped, the rest still run. Returns ``{"written": [...], "failed": [...]}``."""
    from tqdm import tqdm

    from segzoo.data.io import DataError

    written, failed = [], []
    for path, out in tqdm(todo, desc=desc, unit="case", disable=len(todo) < 2):
        try:
            predict(path, out)  # atomic: a failed or interrupted case leaves no output file
        except (DataError, ValueError, RuntimeError, MemoryError) as e:  # this input; an OSError (disk full, no
            # write permission: reading errors are DataErrors) would fail every file, so it ends the run
            reason = " ".join(str(e).split()) or type(e).__name__
            if not isinstance(e, DataError):  # not a checked input error: say what broke
                reason = f"{type(e).__name__}: {reason}"
            line = reason if str(path) in reason else f"{path}: {reason}"  # one line that names the file
            tqdm.write(f"segzoo infer: error: {line}", file=sys.stderr)  # above the progress bar, one line
            failed.append((path, reason))
            continue
        written.append(out)
    return {"written": written, "failed": failed}


def report(summary: dict[str, list], out_dir: Path, skipped: int = 0) -> int:
    """Print the written / skipped / failed summary; exit code 1 when any input failed, else 0."""
    n_written, n_failed = len(summary["written"]), len(summary["failed"])
    print(f"segzoo infer: {n_written} written, {skipped} skipped (already there), {n_failed} failed -> {out_dir}")
    return 1 if n_failed else 0


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
