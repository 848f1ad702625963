"""BraTS metrics on the tumour regions WT, TC and ET: Dice and HD95 (mm).

Reference: B. Menze et al., "The Multimodal Brain Tumor Image Segmentation Benchmark (BRATS)", IEEE TMI 2015;
S. Bakas et al., arXiv:1811.02629. Labels 1 necrotic/non-enhancing core, 2 oedema, 4 enhancing tumour;
regions WT = {1, 2, 4}, TC = {1, 4}, ET = {4}.

HD95 comes in the two definitions the evaluation tools use (``hd95`` argument, see ``docs/losses_metrics.md``):

* ``"directed_max"`` (default): the larger of the two directed 95th percentiles of the surface distances, computed
  with MONAI's ``compute_hausdorff_distance(percentile=95)``; the DeepMind ``surface-distance`` package (used by the
  BraTS 2023 evaluation code) defines it so too, with a surface-area weighting we do not apply;
* ``"pooled"``: the 95th percentile of both directions' distances pooled, as medpy's ``hd95`` and BrainLesion's
  ``panoptica`` compute it (surface = mask minus its erosion by the face-connected cross, image edge included).

Slice selections: a stack of selected 2D slices (the paper's two largest-lesion slices, ``largest2``, or every tumour
slice, ``lesion``) is not a volume: the slices are not neighbours. The 2D datamodules mark such stacks with a NaN
slice spacing; their Dice and HD95 are computed on each 2D slice with its in-plane spacing and averaged over the
slices of the case (``per_slice``). Volume metrics only when every slice of a case is predicted.

Empty masks follow the BraTS challenge convention: both empty -> Dice 1, HD95 0; exactly one empty -> Dice 0,
HD95 = ``hd95_penalty`` (default 373.13 mm, the diagonal of the 240x240x155 1 mm BraTS volume, which is what the
BraTS 2018-2021 ranking assigned; the same value per slice).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
from monai.metrics import compute_hausdorff_distance
from scipy import ndimage

from segzoo.data.brats import BRATS_CLASS_NAMES, BRATS_LABELS
from segzoo.metrics._common import check_label_maps, check_spacing, dice, foreground_box, slices_are_a_selection
from segzoo.metrics.base import CaseMetric

BRATS_REGIONS: dict[str, tuple[int, ...]] = {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)}
BRATS_HD95_PENALTY = 373.13
HD95_DEFINITIONS = ("directed_max", "pooled")
_LABEL_NAMES = dict(zip(BRATS_LABELS, BRATS_CLASS_NAMES, strict=True))  # BraTS label -> name, for messages


def _surface(mask: np.ndarray) -> np.ndarray:
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def hd95(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float], definition: str = "directed_max") -> float:
    """95th-percentile Hausdorff distance (mm) of two non-empty boolean masks.

    Args:
        pred: boolean mask, 2D or 3D.
        ref: boolean mask of the same shape.
        spacing: mm per axis.
        definition: ``"directed_max"`` (MONAI, DeepMind: the larger of the two directed 95th percentiles) or
            ``"pooled"`` (medpy, panoptica: the 95th percentile of both directions' distances together).
    """
    if definition == "pooled":
        box = foreground_box(pred | ref)
        pred, ref = pred[box], ref[box]
        p_surf, r_surf = _surface(pred), _surface(ref)
        to_ref = ndimage.distance_transform_edt(~r_surf, sampling=spacing)[p_surf]
        to_pred = ndimage.distance_transform_edt(~p_surf, sampling=spacing)[r_surf]
        return float(np.percentile(np.concatenate([to_ref, to_pred]), 95))
    if definition != "directed_max":
        raise ValueError(f"hd95 definition must be one of {HD95_DEFINITIONS}, got {definition!r}")
    y_pred = torch.from_numpy(np.ascontiguousarray(pred, dtype=np.float32))[None, None]
    y = torch.from_numpy(np.ascontiguousarray(ref, dtype=np.float32))[None, None]
    with warnings.catch_warnings():
        # MONAI 1.6 passes its own deprecated ``always_return_as_numpy`` argument internally
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*", category=FutureWarning)
        value = compute_hausdorff_distance(y_pred, y, include_background=True, percentile=95, spacing=list(spacing))
    return float(value[0, 0])


def _region_scores(
    pred: np.ndarray, target: np.ndarray, spacing: Sequence[float], hd95_penalty: float, definition: str
) -> dict[str, float]:
    """Dice and HD95 of WT, TC, ET for BraTS label maps (values 0, 1, 2, 4) of one volume or one slice."""
    box = foreground_box((pred > 0) | (target > 0))  # every region lies inside; values do not change
    pred, target = pred[box], target[box]
    out: dict[str, float] = {}
    for region, labels in BRATS_REGIONS.items():
        p, r = np.isin(pred, labels), np.isin(target, labels)
        n_p, n_r = bool(p.any()), bool(r.any())
        out[f"{region}/dice"] = dice(p, r, empty_value=1.0)
        if not n_p and not n_r:
            out[f"{region}/hd95"] = 0.0
        elif not n_p or not n_r:
            out[f"{region}/hd95"] = float(hd95_penalty)
        else:
            out[f"{region}/hd95"] = hd95(p, r, spacing, definition)
    return out


def brats_scores(
    pred: np.ndarray,
    target: np.ndarray,
    spacing: Sequence[float] | None = None,
    label_map: Sequence[int] = BRATS_LABELS,
    hd95_penalty: float = BRATS_HD95_PENALTY,
    hd95_definition: str = "directed_max",
    per_slice: bool | None = None,
) -> dict[str, float]:
    """BraTS region scores of one case.

    Args:
        pred: ``(*spatial)`` 2D map or 3D stack ``(S, H, W)`` of class indices; index ``i`` means BraTS label
            ``label_map[i]``.
        target: reference map of class indices, same shape.
        spacing: mm per spatial axis in array order; ``None`` means 1 mm. A NaN slice spacing (first of 3) marks
            a stack of selected, non-neighbouring slices.
        label_map: BraTS label of each class index (default: index 3 is label 4, as the datamodules map it).
        hd95_penalty: HD95 (mm) when exactly one of the region masks is empty.
        hd95_definition: ``"directed_max"`` or ``"pooled"``, see :func:`hd95`.
        per_slice: score each slice of a 3D stack in 2D (in-plane spacing) and average over the slices; ``None``
            (default): per slice exactly when the slice spacing is NaN. ``False`` with a NaN slice spacing is an
            error: the slices of a selection have no distance to each other.

    Returns:
        ``{"WT/dice", "WT/hd95", "TC/dice", "TC/hd95", "ET/dice", "ET/hd95"}``.
    """
    lut = np.asarray([int(v) for v in label_map], dtype=np.int64)
    pred, target = check_label_maps(pred, target, max_label=len(lut) - 1, name="BraTS metric")
    sp = check_spacing(spacing, pred.ndim, "BraTS metric", undefined_slices=True)
    if hd95_definition not in HD95_DEFINITIONS:
        raise ValueError(f"BraTS metric: hd95 definition must be one of {HD95_DEFINITIONS}, got {hd95_definition!r}")
    selection = slices_are_a_selection(sp)
    if per_slice is None:
        per_slice = selection
    if pred.ndim == 3 and per_slice:
        rows = [
            _region_scores(lut[p], lut[t], sp[1:], hd95_penalty, hd95_definition)
            for p, t in zip(pred, target, strict=True)
        ]
        return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
    if selection:
        raise ValueError(
            "BraTS metric: the slices of this case are a selection (slice spacing undefined), so volume metrics "
            "are meaningless; score per slice (per_slice=None or True) or predict every slice (slice_selection='all')"
        )
    return _region_scores(lut[pred], lut[target], sp, hd95_penalty, hd95_definition)


class BraTSMetric(CaseMetric):
    """Per-case BraTS Dice and HD95 on WT, TC and ET, accumulated over a run.

    Args:
        label_map: BraTS label of each class index; class index ``i`` means label ``label_map[i]``. Default
            ``(0, 1, 2, 4)``: the datamodules map label 4 to index 3.
        hd95_penalty: HD95 (mm) when exactly one of prediction and reference region is empty (BraTS: 373.13).
        hd95: HD95 definition, ``"directed_max"`` (MONAI, DeepMind surface-distance; default) or ``"pooled"``
            (medpy, panoptica).
        per_slice: for 3D stacks, score each slice in 2D and average per case; ``None`` (default): exactly for the
            stacks whose slice spacing is NaN (the ``largest<k>`` and ``lesion`` selections of the datamodules).

    ``update(pred, target, case_ids, spacing)`` takes ``(B, *spatial)`` or ``(B, 1, *spatial)`` class-index maps
    and ``spacing`` ``(B, n_spatial)`` in mm (1 mm when omitted).
    """

    def __init__(
        self,
        label_map: Sequence[int] = BRATS_LABELS,
        hd95_penalty: float = BRATS_HD95_PENALTY,
        hd95: str = "directed_max",
        per_slice: bool | None = None,
    ) -> None:
        super().__init__()
        label_map = tuple(int(v) for v in label_map)
        if len(label_map) < 2 or label_map[0] != 0 or len(set(label_map)) != len(label_map):
            raise ValueError(f"label_map must start with 0 (background) and hold distinct labels, got {label_map!r}")
        if not set(label_map) & {1, 2, 4}:
            raise ValueError(f"label_map {label_map!r} holds none of the BraTS tumour labels 1, 2, 4")
        if not (np.isfinite(hd95_penalty) and hd95_penalty >= 0):
            raise ValueError(f"hd95_penalty must be a finite value >= 0 (mm), got {hd95_penalty!r}")
        if hd95 not in HD95_DEFINITIONS:
            raise ValueError(f"hd95 must be one of {HD95_DEFINITIONS}, got {hd95!r}")
        self.label_map = label_map
        self.hd95_penalty = float(hd95_penalty)
        self.hd95 = hd95
        self.per_slice = per_slice

    def class_names(self) -> tuple[str, ...]:
        return tuple(_LABEL_NAMES.get(label, f"label_{label}") for label in self.label_map[1:])

    def regions(self) -> dict[str, tuple[int, ...]]:
        """WT, TC and ET as class indices (through ``label_map``)."""
        return {
            region: tuple(i for i, label in enumerate(self.label_map) if label in labels)
            for region, labels in BRATS_REGIONS.items()
        }

    def score_case(
        self, pred: np.ndarray, target: np.ndarray, spacing: Sequence[float] | None = None
    ) -> dict[str, float]:
        return brats_scores(pred, target, spacing, self.label_map, self.hd95_penalty, self.hd95, self.per_slice)
