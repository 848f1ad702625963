"""CHAOS metrics per organ: Dice, RAVD (%), ASSD and MSSD (mm).

Reference: A. E. Kavur et al., "CHAOS Challenge - combined (CT-MR) healthy abdominal organ segmentation",
Medical Image Analysis 69 (2021), and the official evaluation ``Python/CHAOSmetrics.py`` of
github.com/emrekavur/CHAOS-evaluation:

* Dice = ``2|S & R| / (|S| + |R|)``;
* RAVD = ``| |S| - |R| | / |R| * 100``;
* surface voxels = mask XOR its erosion by the face-connected cross (``border_value=1``); distances from every
  surface voxel of one mask to the nearest surface voxel of the other, in mm;
  ASSD = mean of both directions' distances pooled, MSSD = their maximum.

Empty masks (the official code divides by zero or fails there; our choice, see ``docs/losses_metrics.md``):
both empty -> Dice 1, RAVD 0, ASSD 0, MSSD 0; reference empty only -> Dice 0, RAVD NaN (undefined, skipped by
the mean), ASSD = MSSD = ``empty_distance``; prediction empty only -> Dice 0, RAVD 100, ASSD = MSSD =
``empty_distance``. ``empty_distance=None`` uses the image diagonal in mm (the largest distance possible in it).

The metrics are volumetric, as in the official evaluation: a stack of selected slices (NaN slice spacing, the 2D
datamodules' ``largest<k>`` and ``lesion`` selections) is refused; score whole cases (``slice_selection="all"``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from segzoo.metrics._common import (
    check_label_maps,
    check_spacing,
    dice,
    image_diagonal,
    slices_are_a_selection,
    surface_distances,
)
from segzoo.metrics.base import CaseMetric

CHAOS_MR_ORGANS = ("liver", "right_kidney", "left_kidney", "spleen")


def chaos_organ_scores(
    pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float], empty_distance: float | None = None
) -> dict[str, float]:
    """Dice, RAVD, ASSD and MSSD of one organ's boolean masks (2D or 3D, spacing in mm per axis)."""
    n_pred, n_ref = int(pred.sum()), int(ref.sum())
    if n_pred == 0 and n_ref == 0:
        return {"dice": 1.0, "ravd": 0.0, "assd": 0.0, "mssd": 0.0}
    ravd = float("nan") if n_ref == 0 else abs(n_pred - n_ref) / n_ref * 100.0
    if n_pred == 0 or n_ref == 0:
        penalty = image_diagonal(pred.shape, spacing) if empty_distance is None else float(empty_distance)
        return {"dice": 0.0, "ravd": ravd, "assd": penalty, "mssd": penalty}
    pred_to_ref, ref_to_pred = surface_distances(pred, ref, spacing)
    pooled = np.concatenate([pred_to_ref, ref_to_pred])
    return {"dice": dice(pred, ref), "ravd": ravd, "assd": float(pooled.mean()), "mssd": float(pooled.max())}


def chaos_scores(
    pred: np.ndarray,
    target: np.ndarray,
    spacing: Sequence[float] | None = None,
    organs: Sequence[str] = CHAOS_MR_ORGANS,
    empty_distance: float | None = None,
) -> dict[str, float]:
    """CHAOS scores of one case.

    Args:
        pred: ``(*spatial)`` 2D or 3D label map; class index ``i`` (1-based) is ``organs[i - 1]``, 0 background.
        target: reference label map of the same shape.
        spacing: mm per spatial axis in array order; ``None`` means 1 mm.
        organs: organ names of the class indices 1, 2, ...
        empty_distance: ASSD/MSSD (mm) when exactly one of the masks is empty; ``None``: image diagonal.

    Returns:
        ``{"<organ>/dice", "<organ>/ravd", "<organ>/assd", "<organ>/mssd", ..., "mean/dice"}``.
    """
    pred, target = check_label_maps(pred, target, max_label=len(organs), name="CHAOS metric")
    sp = check_spacing(spacing, pred.ndim, "CHAOS metric", undefined_slices=True)
    if slices_are_a_selection(sp):
        raise ValueError(
            "CHAOS metric: the slices of this case are a selection (slice spacing undefined); the CHAOS metrics are "
            "volumetric (official evaluation), so score whole cases: slice_selection='all'"
        )
    out: dict[str, float] = {}
    for index, organ in enumerate(organs, start=1):
        for key, value in chaos_organ_scores(pred == index, target == index, sp, empty_distance).items():
            out[f"{organ}/{key}"] = value
    out["mean/dice"] = float(np.mean([out[f"{organ}/dice"] for organ in organs]))
    return out


class CHAOSMetric(CaseMetric):
    """Per-case CHAOS metrics (Dice, RAVD %, ASSD mm, MSSD mm per organ), accumulated over a run.

    Args:
        organs: organ names of class indices 1, 2, ... (default CHAOS MR: liver, right kidney, left kidney,
            spleen; use ``("liver",)`` for CHAOS CT).
        empty_distance: ASSD/MSSD (mm) when exactly one of prediction and reference is empty; ``None`` uses the
            image diagonal in mm.

    ``update(pred, target, case_ids, spacing)`` takes ``(B, *spatial)`` or ``(B, 1, *spatial)`` label maps and
    ``spacing`` ``(B, n_spatial)`` in mm in the arrays' axis order (1 mm when omitted).
    """

    def __init__(self, organs: Sequence[str] = CHAOS_MR_ORGANS, empty_distance: float | None = None) -> None:
        super().__init__()
        if not organs or len(set(organs)) != len(organs):
            raise ValueError(f"organs must be non-empty, distinct names, got {organs!r}")
        if empty_distance is not None and not (np.isfinite(empty_distance) and empty_distance >= 0):
            raise ValueError(f"empty_distance must be None or a finite value >= 0 (mm), got {empty_distance!r}")
        self.organs = tuple(str(o) for o in organs)
        self.empty_distance = None if empty_distance is None else float(empty_distance)

    def class_names(self) -> tuple[str, ...]:
        return self.organs

    def score_case(
        self, pred: np.ndarray, target: np.ndarray, spacing: Sequence[float] | None = None
    ) -> dict[str, float]:
        return chaos_scores(pred, target, spacing, self.organs, self.empty_distance)
