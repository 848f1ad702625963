"""``segzoo infer``: predict NIfTI files, KiTS-layout case folders or DICOM series with a checkpoint."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


def cmd_infer(argv: Sequence[str]) -> int:
    from segzoo.inference.outputs import OUTPUT_FORMATS
    from segzoo.tools_cli import TRUST_HELP

    p = argparse.ArgumentParser(
        prog="segzoo infer",
        description="Predict label maps. 3D checkpoints: NIfTI images (any orientation) or KiTS19 case folders -> "
        "OUT/<case>.nii.gz with the input's shape and header; a DICOM series folder (or a study folder and --series "
        "UID) -> OUT/<folder>.nii.gz on the series' grid and/or a DICOM Segmentation OUT/<folder>.dcm "
        "(--output-format). 2D nets (DR-Net, 2D baselines) predict the same inputs slice by slice, through the same "
        "path. BraTS case folders -> OUT/<case>_seg.nii.gz (a BraTS-trained 2D net: 0/1/2/4), CHAOS DICOM series or "
        "Train_Sets/Test_Sets trees -> OUT/<case>_<sequence>.nii.gz (+ Ground-style PNGs with --chaos-png); a model "
        "trained on BraTS or CHAOS slices takes only its dataset's layout. A bad input is reported on one line "
        "and skipped; the run ends with a written / skipped / failed summary and exits 1 if any input failed.",
    )
    p.add_argument(
        "--ckpt",
        required=True,
        action="append",
        help="Lightning checkpoint (.ckpt), save_pretrained directory, hf-hub:ORG/NAME or segzoo cv run folder (its "
        "folds); repeat it "
        "for an ensemble: the mean of the members' probabilities (segzoo.inference.ensemble)",
    )
    p.add_argument("--folds", type=int, nargs="+", default=None, help="the folds of a cv run folder to ensemble")
    p.add_argument(
        "--input",
        required=True,
        help="a .nii/.nii.gz file, a folder of them (nnU-Net channel files are grouped by case), a dataset folder "
        "(dataset.json) or MONAI datalist, a folder of KiTS19 case folders, a DICOM series folder (or a study folder "
        "with --series), a BraTS case folder or a folder of them, a CHAOS DICOM series folder or Train_Sets/Test_Sets "
        "tree",
    )
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument(
        "--output-format",
        default="nifti",
        choices=OUTPUT_FORMATS,
        help="nifti (default): OUT/<case>.nii.gz; dicom-seg: one DICOM Segmentation OUT/<case>.dcm per case, "
        "referencing its source series (DICOM inputs only); both",
    )
    p.add_argument(
        "--series",
        default=None,
        metavar="UID",
        help="the SeriesInstanceUID to predict when --input is a study folder holding several DICOM series (the "
        "refusal lists them)",
    )
    p.add_argument(
        "--stats",
        action="store_true",
        help="also write OUT/stats.json and OUT/stats.csv: per case and label the voxel count and volume in ml",
    )
    p.add_argument(
        "--label-names",
        nargs="+",
        default=None,
        metavar="NAME",
        help="names of the model's labels in order (1, 2, ...; BraTS 1, 2, 4) (for --stats and the DICOM-SEG segments; known names such as kidney, "
        "tumour, liver, spleen get their SNOMED CT codes). Default: the dataset's names where the checkpoint tells "
        "(KiTS19 post-processing, CHAOS, BraTS), else label_1, label_2, ...",
    )
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
    p.add_argument(
        "--overlap",
        type=float,
        default=None,
        help="sliding-window overlap (default: the one stored with the model, else 0.5); the blending mode and "
        "padding are always the stored ones",
    )
    p.add_argument(
        "--sw-batch-size",
        type=int,
        default=None,
        help="windows per pass (3D, default: stored with the model, else 2) or slices per pass (2D, 16)",
    )
    p.add_argument(
        "--chaos-png",
        action="store_true",
        help="DICOM series and CHAOS trees: also write one CHAOS Ground-style PNG per slice (grey 63/126/189/252) to "
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
    if args.overlap is not None and not 0 <= args.overlap < 1:
        p.error(f"--overlap must be in [0, 1), got {args.overlap}")

    from segzoo.data.io import DataError
    from segzoo.data.sources.dicom import DicomSeriesCase, series_output_name
    from segzoo.inference.ensemble import load_ensemble_predictor, load_members
    from segzoo.inference.predict import find_cases, find_series_input, slice_dataset

    ckpts, args.ckpt = args.ckpt, args.ckpt[0] if len(args.ckpt) == 1 else f"the {len(args.ckpt)} checkpoints"
    problems: list[str] = []  # cases a layout's reader cannot give (a BraTS case lacking a modality)
    skipped: list[str] = []  # outputs already there (--continue)
    try:
        members = load_members(ckpts, args.folds, trust=args.trust_checkpoint)
        loaded = members[0]
        pre = loaded.preprocessor()
        dataset = slice_dataset(pre)  # "brats" / "chaos" for a model trained on their slices: it reads their layout
        if args.series is not None and dataset is not None:
            raise DataError(f"--series: {args.ckpt} is a 2D checkpoint; it reads whole CHAOS series folders")
        in_channels = int(getattr(loaded.net, "init_config", {}).get("init_args", {}).get("in_channels", 1))
        series_dir = None if dataset is not None else find_series_input(args.input)
        writer = case_writer(args, _model_labels(loaded, pre))
        if series_dir is None:
            if args.series is not None:
                raise DataError(f"{args.input}: --series picks a series of a DICOM folder; this is not one")
            cases = find_cases(args.input, in_channels, pre, problems)
            if args.output_format != "nifti" and not all(case.is_dicom for case in cases):
                raise DataError(
                    f"{args.input}: NIfTI input; --output-format {args.output_format} writes a DICOM Segmentation, "
                    "which needs the DICOM source images (give the DICOM series folder, or use --output-format nifti)"
                )
        elif args.resume and writer.finished(series_output_name(series_dir, args.series)):
            cases, skipped = [], [series_output_name(series_dir, args.series)]
        else:  # read before the net is built: a series that is no volume (or a study folder without --series,
            # listing its series) ends the run here with exit 2, as a bad --input does
            cases = [DicomSeriesCase.read(series_dir, args.series)]
        if args.chaos_png and not all(case.is_dicom for case in cases):
            raise DataError(
                f"--chaos-png: {args.input} is not a DICOM series or CHAOS tree (the PNGs are CHAOS Ground-style masks, "
                "one per DICOM slice)"
            )
        if args.resume:
            skipped += [case.output_name for case in cases if writer.finished(case.output_name)]
            cases = [case for case in cases if case.output_name not in skipped]
        predictor = load_ensemble_predictor(
            members,
            device=args.device,
            tta=args.tta,
            overlap=args.overlap,
            sw_batch_size=args.sw_batch_size,
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
        _print_error(e)
        return 2
    import logging

    logging.basicConfig(level=logging.INFO, format="segzoo infer: %(message)s")  # notes such as oblique inputs
    logging.getLogger("highdicom").setLevel(logging.WARNING)  # its INFO notes (each module it copies) are noise here
    out_dir = Path(args.output)
    for name in skipped:
        writer.add_existing(name)

    def predict_case(case, out: Path) -> list[Path]:
        result = case.prediction_output(*predictor.predict_labels(case), dicom_seg=writer.dicom_seg)
        written = writer.write(
            case.output_name,
            result.labels,
            result.affine,
            header=result.header,
            seg_frames=result.seg_frames,
            seg_sources=result.seg_sources,
        )
        if args.chaos_png:
            from segzoo.inference.outputs import write_ground_pngs

            written += write_ground_pngs(out_dir / f"{case.output_name}_png", result.seg_frames, result.slice_files)
        return written

    for line in problems:
        print(f"segzoo infer: error: {line}", file=sys.stderr)
    summary = run_folder(
        [(case, writer.paths(case.output_name)[0]) for case in cases], predict_case, desc="segzoo infer"
    )
    summary["failed"] += [(line, line) for line in problems]
    return report(summary, out_dir, skipped=len(skipped), writer=writer)


def _model_labels(loaded, preprocessor=None) -> tuple[list[int], dict[int, str]]:
    """``(label values, known names)`` of a checkpoint: BraTS / CHAOS slice models their datasets' values and names;
    otherwise ``1 .. out_channels - 1``, with KiTS19's names when it carries the KiTS19 post-processing (which defines
    labels 1 kidney, 2 tumour)."""
    from segzoo.inference.predict import slice_dataset

    dataset = slice_dataset(preprocessor)
    if dataset is not None:
        from segzoo.data.brats import BRATS_CLASS_NAMES
        from segzoo.data.chaos import CHAOS_CLASS_NAMES

        values = [int(v) for v in preprocessor.label_values]
        names = CHAOS_CLASS_NAMES if dataset == "chaos" else BRATS_CLASS_NAMES
        return [v for v in values if v], dict(zip(values, names))
    out_channels = getattr(loaded.net, "init_config", {}).get("init_args", {}).get("out_channels")
    values = list(range(1, int(out_channels))) if out_channels is not None else []
    post = (loaded.format.get("postprocess") or {}).get("class_path", "")
    if post.rsplit(".", 1)[-1] == "KiTSPostprocess":
        from segzoo.data.kits19 import KITS19_LABELS

        return values, dict(KITS19_LABELS)
    return values, {}


def case_writer(args, labels: tuple[list[int], dict[int, str]]):
    """The :class:`~segzoo.inference.outputs.CaseWriter` of a run: output format, statistics and label names
    (``--label-names`` for the labels 1, 2, ..., else the known names of the model's label values)."""
    from segzoo.data.io import DataError
    from segzoo.inference.outputs import CaseWriter, default_label_names

    values, known = labels
    if args.label_names is not None:
        if values and len(args.label_names) != len(values):
            raise DataError(
                f"--label-names: {len(args.label_names)} names for the {len(values)} labels {values} of {args.ckpt}"
            )
        values = values or list(range(1, len(args.label_names) + 1))
        names = list(args.label_names)
    else:
        if not values and (args.stats or args.output_format != "nifti"):
            raise DataError(
                f"{args.ckpt}: the checkpoint does not say how many labels its net predicts; pass --label-names"
            )
        names = default_label_names(values, known)
    return CaseWriter(
        Path(args.output),
        output_format=args.output_format,
        label_values=values,
        label_names=names,
        stats=args.stats,
        model_name=Path(str(args.ckpt)).stem or "segzoo",
    )


def _print_error(e: BaseException) -> None:
    """One ``segzoo infer: error:`` line (whitespace folded); a message that lists things on its own lines (the series
    of a study folder) keeps them below it."""
    first, *rest = str(e).split("\n")
    lines = [" ".join(first.split())] + [line for line in rest if line.strip()]
    print("segzoo infer: error: " + "\n".join(lines), file=sys.stderr)


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


def report(summary: dict[str, list], out_dir: Path, skipped: int = 0, writer=None) -> int:
    """Print the written / skipped / failed summary (and write the statistics when ``writer`` collects them); exit
    code 1 when any input failed, else 0."""
    n_written, n_failed = len(summary["written"]), len(summary["failed"])
    if writer is not None and writer.stats:
        stats_json, stats_csv = writer.write_stats()
        print(f"segzoo infer: label volumes of {len(writer.rows)} cases -> {stats_json}, {stats_csv}")
    print(f"segzoo infer: {n_written} written, {skipped} skipped (already there), {n_failed} failed -> {out_dir}")
    return 1 if n_failed else 0


INFERENCE_COMMANDS = {"infer": (cmd_infer, "predict NIfTI files / KiTS case folders with a checkpoint")}
