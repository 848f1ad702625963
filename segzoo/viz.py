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


def overlay_figure(
    image: np.ndarray,
    label: np.ndarray | None = None,
    pred: np.ndarray | None = None,
    spacing: Sequence[float] | None = None,
    title: str = "",
):
    """Figure with axial, coronal and sagittal slices (rows: image, ground truth, prediction) of a ``(D, H, W)`` volume.

    Axis 0 is the slice axis (KiTS19 / CHAOS arrays); ``spacing`` sets the aspect so thick slices look right.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 2:
        image = image[None]
        label = None if label is None else np.asarray(label)[None]
        pred = None if pred is None else np.asarray(pred)[None]
    centre = focus_point(np.asarray(label) if label is not None else None, image.shape)
    sp = list(spacing) if spacing is not None else [1.0, 1.0, 1.0]
    lo, hi = np.percentile(image, [1, 99])
    views = [
        ("axial", lambda a: a[centre[0]], sp[1] / sp[2]),
        ("coronal", lambda a: a[:, centre[1]], sp[0] / sp[2]),
        ("sagittal", lambda a: a[:, :, centre[2]], sp[0] / sp[1]),
    ]
    if image.shape[0] == 1:
        views = views[:1]
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
    """Read NIfTI files and write the overlay figure to ``out`` (PNG, atomically)."""
    import matplotlib.pyplot as plt

    from segzoo.data.io import load_nifti

    img, affine = load_nifti(image, dtype=np.float32)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    lbl = load_nifti(label)[0] if label is not None else None
    prd = load_nifti(pred)[0] if pred is not None else None
    if img.ndim == 4:  # e.g. several modalities: show the first
        img = img[..., 0]
    fig = overlay_figure(img, lbl, prd, spacing=spacing, title=Path(image).name)
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
