"""Pictures a person would rather look at than read: slice overlays and learning curves (matplotlib, no display)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from segzoo.utils import atomic_path

# background transparent; then kidney/organ 1..4 and BraTS label 4 (index 3)
LABEL_COLOURS = np.array(
    [[0, 0, 0, 0], [0.1, 0.8, 0.2, 0.45], [0.95, 0.2, 0.2, 0.55], [0.2, 0.5, 1.0, 0.5], [1.0, 0.8, 0.1, 0.5]]
)


def _rgba(label: np.ndarray) -> np.ndarray:
    idx = np.clip(label.astype(np.int64), 0, len(LABEL_COLOURS) - 1)
    idx[label.astype(np.int64) >= len(LABEL_COLOURS)] = len(LABEL_COLOURS) - 1
    return LABEL_COLOURS[idx]


def focus_point(label: np.ndarray | None, shape: Sequence[int]) -> tuple[int, ...]:
    """Voxel to slice through: centroid of the highest label present (the lesion), else of the foreground, else the centre."""
    if label is not None and label.any():
        top = label == label.max()
        return tuple(int(round(c)) for c in np.argwhere(top).mean(0))
    return tuple(s // 2 for s in shape)


def _save_figure(fig, out: Path) -> Path:
    with atomic_path(out, suffix=".tmp.png") as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
    return Path(out)


# display orientation: axis 0 toward inferior, 1 toward posterior, 2 toward the patient's left, so with row 0 at the
# top every panel is drawn the radiological way (axial: anterior up, patient's right on the left; coronal and
# sagittal: superior up)
DISPLAY_CODES = ("I", "P", "L")
_PLANE = {"I": "axial", "S": "axial", "P": "coronal", "A": "coronal", "L": "sagittal", "R": "sagittal"}


def plane_names(axis_codes: Sequence[str]) -> tuple[str, ...]:
    """Name of the plane cut across each array axis: an axis pointing I/S is cut by axial slices, P/A by coronal,
    L/R by sagittal ones; ``("R", "A", "S")`` -> ``("sagittal", "coronal", "axial")``."""
    return tuple(_PLANE[str(c).upper()] for c in axis_codes)


def overlay_figure(
    image: np.ndarray,
    label: np.ndarray | None = None,
    pred: np.ndarray | None = None,
    spacing: Sequence[float] | None = None,
    title: str = "",
    axis_codes: Sequence[str] | None = None,
):
    """Figure with axial, coronal and sagittal slices (rows: image, ground truth, prediction) of a 3D volume.

    Args:
        image: ``(*spatial)`` volume (or one 2D slice).
        label: optional label map of the image's shape.
        pred: optional predicted label map of the image's shape.
        spacing: voxel size per array axis (mm); each panel is drawn with its true aspect ratio from it.
        title: figure title.
        axis_codes: world direction of each array axis (``segzoo.data.geometry.axis_codes`` of the affine). The
            volume is then brought to a display orientation by an exact flip/permutation and the panels are named
            from the codes. ``None``: axis 0 is taken as the slice axis (KiTS19 / CHAOS arrays as segzoo trains on).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    image = np.asarray(image, dtype=np.float32)
    label = None if label is None else np.asarray(label)
    pred = None if pred is None else np.asarray(pred)
    sp = [float(v) for v in spacing] if spacing is not None else [1.0] * max(image.ndim, 3)
    single = image.ndim == 2
    if single:
        codes = tuple(axis_codes) if axis_codes is not None else ("I", "P", "L")
        names = [plane_names(codes)[2]] if axis_codes is not None else ["axial"]
        cut_aspect = [sp[0] / sp[1] if len(sp) > 1 else 1.0]
        image = image[None]
        label = None if label is None else label[None]
        pred = None if pred is None else pred[None]
    elif axis_codes is not None:
        from segzoo.data.geometry import Reorientation

        r = Reorientation.between_codes(axis_codes, DISPLAY_CODES, image.shape)
        image = r.apply(image)
        label = None if label is None else r.apply(label)
        pred = None if pred is None else r.apply(pred)
        sp = list(r.apply_spacing(sp[:3]))
        names = list(plane_names(DISPLAY_CODES))
    else:
        names = ["axial", "coronal", "sagittal"]
    centre = focus_point(label, image.shape)
    lo, hi = np.percentile(image, [1, 99])
    # aspect = height of a row / width of a column, in mm
    if single:
        views = [(names[0], lambda a: a[0], cut_aspect[0])]
    else:
        views = [
            (names[0], lambda a: a[centre[0]], sp[1] / sp[2]),
            (names[1], lambda a: a[:, centre[1]], sp[0] / sp[2]),
            (names[2], lambda a: a[:, :, centre[2]], sp[0] / sp[1]),
        ]
    rows = [("image", None)] + [(n, m) for n, m in (("ground truth", label), ("prediction", pred)) if m is not None]
    fig, axes = plt.subplots(len(rows), len(views), figsize=(3.2 * len(views), 3.2 * len(rows)), squeeze=False)
    for c, (vname, cut, aspect) in enumerate(views):
        for r, (rname, mask) in enumerate(rows):
            ax = axes[r][c]
            ax.imshow(cut(image), cmap="gray", vmin=lo, vmax=hi, aspect=aspect, origin="upper")
            if mask is not None:
                ax.imshow(_rgba(cut(np.asarray(mask))), aspect=aspect, origin="upper", interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(vname)
            if c == 0:
                ax.set_ylabel(rname)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def save_case_overlay(
    image: str | os.PathLike,
    out: str | os.PathLike,
    label: str | os.PathLike | None = None,
    pred: str | os.PathLike | None = None,
) -> Path:
    """Read NIfTI files and write the overlay figure to ``out`` (PNG, atomically); panels named and drawn from the
    image's affine (orientation and voxel spacing)."""
    import matplotlib.pyplot as plt

    from segzoo.data.geometry import axis_codes, spacing_from_affine
    from segzoo.data.io import load_nifti

    img, affine = load_nifti(image, dtype=np.float32)
    lbl = load_nifti(label)[0] if label is not None else None
    prd = load_nifti(pred)[0] if pred is not None else None
    if img.ndim == 4:  # e.g. several modalities: show the first
        img = img[..., 0]
    fig = overlay_figure(
        img, lbl, prd, spacing=spacing_from_affine(affine), title=Path(image).name, axis_codes=axis_codes(affine)
    )
    try:
        return _save_figure(fig, Path(out))
    finally:
        plt.close(fig)


def plot_learning_curves(
    metrics_csv: str | os.PathLike, out: str | os.PathLike, keys: Sequence[str] | None = None
) -> Path:
    """Plot every logged series (or ``keys``) of a Lightning ``CSVLogger`` ``metrics.csv`` against epoch."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import pandas as pd

    df = pd.read_csv(metrics_csv)
    keys = list(keys) if keys else [k for k in df.columns if k not in ("epoch", "step") and df[k].notna().any()]
    fig, ax = plt.subplots(figsize=(6, 4))
    for k in keys:
        s = df[["epoch", k]].dropna().groupby("epoch")[k].mean()
        ax.plot(s.index, s.values, marker="o", ms=3, label=k)
    ax.set_xlabel("epoch")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    try:
        return _save_figure(fig, Path(out))
    finally:
        plt.close(fig)
