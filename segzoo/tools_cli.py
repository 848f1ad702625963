"""Plain ``segzoo`` subcommands for pictures and deployment: ``show``, ``curves`` and ``export``.

Each is an argparse program ``function(argv) -> exit code``, registered in :data:`TOOLS_COMMANDS` and picked up by
``segzoo.cli``. Bad input gives one ``segzoo CMD: error: ...`` line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

TRUST_HELP = (
    "unpickle a checkpoint that segzoo's weights-only loading refuses (it holds objects other than tensors and plain "
    "data); this can run code from the file: only for checkpoints from a source you trust"
)


def _fail(cmd: str, message: object) -> int:
    print(f"segzoo {cmd}: error: {message}", file=sys.stderr)
    return 2


def show_case(
    image: str | Path,
    out: str | Path,
    label: str | Path | None = None,
    pred: str | Path | None = None,
    channel: int = 0,
    title: str | None = None,
) -> Path:
    """Draw axial, coronal and sagittal slices through the lesion (or the centre) of a NIfTI case to a PNG.

    The panels are named from the image's orientation (axis codes of its affine), whatever the array order, and
    each is drawn with its true aspect ratio from the voxel spacing.

    Args:
        image: image NIfTI ``(*spatial)`` or ``(*spatial, C)`` (several modalities: ``channel`` is shown).
        out: PNG file to write (atomically).
        label: optional ground-truth label map with the image's geometry.
        pred: optional predicted label map with the image's geometry.
        channel: modality shown for 4D images.
        title: figure title; default the image file name.

    Raises:
        DataError: unreadable files, a channel out of range, or label/prediction geometry that differs from the image.
    """
    from segzoo.data.io import DataError, check_same_geometry, load_nifti
    from segzoo.viz import _save_figure, overlay_figure

    image = Path(image)
    img, affine = load_nifti(image, dtype=np.float32)
    if img.ndim == 4:
        if not 0 <= channel < img.shape[-1]:
            raise DataError(f"--channel {channel}: {image} has {img.shape[-1]} channels (last axis)")
        img = img[..., channel]
    if img.ndim not in (2, 3):
        raise DataError(f"{image}: expected a 2D or 3D image (or 3D + channels), got shape {img.shape}")
    masks = []
    for path in (label, pred):
        if path is None:
            masks.append(None)
            continue
        data, aff = load_nifti(path)
        if data.ndim == img.ndim + 1 and data.shape[-1] == 1:
            data = data[..., 0]
        check_same_geometry(image, img.shape, affine, Path(path), data.shape, aff)
        masks.append(np.asarray(data))
    import matplotlib.pyplot as plt

    from segzoo.data.geometry import axis_codes, spacing_from_affine

    fig = overlay_figure(
        img,
        masks[0],
        masks[1],
        spacing=spacing_from_affine(affine),
        title=image.name if title is None else title,
        axis_codes=axis_codes(affine),  # panels named from the orientation, drawn radiologically
    )
    try:
        return _save_figure(fig, Path(out))
    finally:
        plt.close(fig)


def find_metrics_csv(run: str | Path) -> Path:
    """The ``metrics.csv`` of a run: the file itself, or the newest one under the run folder (CSVLogger versions)."""
    from segzoo.data.io import DataError

    run = Path(run)
    if run.is_file():
        return run
    if not run.is_dir():
        raise DataError(f"--run {run}: no such run folder or metrics.csv file")
    found = sorted(run.rglob("metrics.csv"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise DataError(f"--run {run}: no metrics.csv below it; train with a CSVLogger to plot learning curves")
    return found[-1]


def cmd_show(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(
        prog="segzoo show",
        description="Draw axial, coronal and sagittal slices through the lesion (or the centre) with coloured "
        "label/prediction overlays.",
    )
    p.add_argument("--image", required=True, help="image .nii/.nii.gz")
    p.add_argument("--label", default=None, help="ground-truth label map (same geometry as the image)")
    p.add_argument("--pred", default=None, help="predicted label map, e.g. from `segzoo infer`")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--channel", type=int, default=0, help="modality shown for 4D (multi-modal) images")
    p.add_argument("--title", default=None, help="figure title (default: the image file name)")
    args = p.parse_args(argv)
    from segzoo.data.io import DataError

    try:
        out = show_case(args.image, args.out, args.label, args.pred, channel=args.channel, title=args.title)
    except DataError as e:
        return _fail("show", e)
    print(f"wrote {out}")
    return 0


def cmd_curves(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(
        prog="segzoo curves", description="Plot the learning curves of a run logged with a CSVLogger (metrics.csv)."
    )
    p.add_argument("--run", required=True, help="run folder (searched for metrics.csv) or a metrics.csv file")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--keys", nargs="+", default=None, help="series to plot (default: all)")
    args = p.parse_args(argv)
    from segzoo.data.io import DataError
    from segzoo.viz import plot_learning_curves

    try:
        csv = find_metrics_csv(args.run)
        if args.keys:
            import pandas as pd

            columns = set(pd.read_csv(csv, nrows=0).columns)
            missing = [k for k in args.keys if k not in columns]
            if missing:
                raise DataError(f"--keys {' '.join(missing)}: not in {csv}; available: {', '.join(sorted(columns))}")
        out = plot_learning_curves(csv, args.out, keys=args.keys)
    except DataError as e:
        return _fail("curves", e)
    print(f"wrote {out} from {csv}")
    return 0


def cmd_export(argv: Sequence[str]) -> int:
    from segzoo.export import EXPORT_FORMATS

    p = argparse.ArgumentParser(
        prog="segzoo export",
        description="Export the net of a checkpoint (eval mode, one logits output) as ONNX, TorchScript or a "
        "save_pretrained directory, or the whole model (preprocessing, sliding window, post-processing) as a MONAI "
        "bundle.",
    )
    p.add_argument(
        "--ckpt", required=True, help="Lightning checkpoint (.ckpt), save_pretrained directory or hf-hub:ORG/NAME"
    )
    p.add_argument("--format", required=True, choices=(*EXPORT_FORMATS, "monai-bundle"))
    p.add_argument("--out", required=True, help="output file (.onnx / .pt) or directory (pretrained, monai-bundle)")
    p.add_argument(
        "--shape", type=int, nargs="+", default=None, help="example input B C *spatial (default: the net's example)"
    )
    p.add_argument("--opset", type=int, default=17, help="ONNX opset")
    p.add_argument("--exporter", choices=("torchscript", "dynamo"), default="torchscript", help="ONNX exporter")
    p.add_argument(
        "--dynamic", action=argparse.BooleanOptionalAction, default=True, help="dynamic batch and spatial ONNX axes"
    )
    p.add_argument("--label-names", nargs="+", default=None, help="monai-bundle: names of the labels 1, 2, ...")
    p.add_argument("--channel-names", nargs="+", default=None, help="monai-bundle: names of the input channels")
    p.add_argument("--bundle-version", default="0.1.0", help="monai-bundle: the version in metadata.json")
    p.add_argument("--trust-checkpoint", action="store_true", help=TRUST_HELP)
    args = p.parse_args(argv)
    from segzoo.data.io import DataError
    from segzoo.export import export_net

    try:
        if args.format == "monai-bundle":
            from segzoo.export_bundle import export_bundle

            out = export_bundle(
                args.ckpt,
                args.out,
                label_names=args.label_names,
                channel_names=args.channel_names,
                version=args.bundle_version,
                trust=args.trust_checkpoint,
            )
            print(f"wrote {out}")
            return 0
        out = export_net(
            args.ckpt,
            args.format,
            args.out,
            shape=args.shape,
            dynamic=args.dynamic,
            opset=args.opset,
            exporter=args.exporter,
            trust=args.trust_checkpoint,
        )
    except DataError as e:
        return _fail("export", e)
    print(f"wrote {out}")
    return 0


TOOLS_COMMANDS = {
    "show": (cmd_show, "draw slices of a NIfTI case with label/prediction overlays to a PNG"),
    "curves": (cmd_curves, "plot learning curves of a run's CSVLogger metrics.csv"),
    "export": (cmd_export, "export a checkpoint's net to ONNX, TorchScript or a pretrained directory"),
}
