"""BraTS metrics on the tumour regions WT, TC and ET: Dice and HD95 (mm).

Reference: B. Menze et al., "The Multimodal Brain Tumor Image Segmentation Benchmark (BRATS)", IEEE TMI 2015;
S. Bakas et al., arXiv:1811.02629. Labels 1 necrotic/non-enhancing core, 2 oedema, 4 enhancing tumour;
regions WT = {1, 2, 4}, TC = {1, 4}, ET = {4}.

HD95 is MONAI's ``compute_hausdorff_distance(percentile=95, spacing=...)``: the larger of the two directed 95th
percentiles of surface distances (the DeepMind ``surface-distance`` definition used by the BraTS evaluation,
without its surface-area weighting).

Empty masks follow the BraTS challenge convention: both empty -> Dice 1, HD95 0; exactly one empty -> Dice 0,
HD95 = ``hd95_penalty`` (default 373.13 mm, the diagonal of the 240x240x155 1 mm BraTS volume, which is what the
BraTS 2018-2021 ranking assigned). See ``docs/losses_metrics.md``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
from monai.metrics import compute_hausdorff_distance

from segzoo.data.brats import BRATS_LABELS
from segzoo.metrics._common import check_label_maps, check_spacing, dice, foreground_box
from segzoo.metrics.base import CaseMetric

BRATS_REGIONS: dict[str, tuple[int, ...]] = {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)}
BRATS_HD95_PENALTY = 373.13


def hd95(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> float:
    """Symmetric 95th-percentile Hausdorff distance (mm) of two non-empty boolean masks (via MONAI)."""
    y_pred = torch.from_numpy(np.ascontiguousarray(pred, dtype=np.float32))[None, None]
    y = torch.from_numpy(np.ascontiguousarray(ref, dtype=np.float32))[None, None]
    with warnings.catch_warnings():
        # MONAI 1.6 passes its own deprecated ``always_return_as_numpy`` argument internally
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*", category=FutureWarning)
        value = compute_hausdorff_distance(y_pred, y, include_background=True, percentile=95, spacing=list(spacing))
    return float(value[0, 0])


def brats_scores(
    pred: np.ndarray,
    target: np.ndarray,
    spacing: Sequence[float] | None = None,
    label_map: Sequence[int] = BRATS_LABELS,
    hd95_penalty: float = BRATS_HD95_PENALTY,
) -> dict[str, float]:
    """BraTS region scores of one case.

    Args:
        pred: ``(*spatial)`` 2D or 3D map of class indices; index ``i`` means BraTS label ``label_map[i]``.
        target: reference map of class indices, same shape.
        spacing: mm per spatial axis in array order; ``None`` means 1 mm.
        label_map: BraTS label of each class index (default: index 3 is label 4, as the datamodules map it).
        hd95_penalty: HD95 (mm) when exactly one of the region masks is empty.

    Returns:
        ``{"WT/dice", "WT/hd95", "TC/dice", "TC/hd95", "ET/dice", "ET/hd95"}``.
    """
    lut = np.asarray([int(v) for v in label_map], dtype=np.int64)
    pred, target = check_label_maps(pred, target, max_label=len(lut) - 1, name="BraTS metric")
    sp = check_spacing(spacing, pred.ndim, "BraTS metric")
    box = foreground_box((pred > 0) | (target > 0))  # every region lies inside; values do not change
    pred, target = lut[pred[box]], lut[target[box]]
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
            out[f"{region}/hd95"] = hd95(p, r, sp)
    return out


class BraTSMetric(CaseMetric):
    """Per-case BraTS Dice and HD95 on WT, TC and ET, accumulated over a run.

    Args:
        label_map: BraTS label of each class index; class index ``i`` means label ``label_map[i]``. Default
            ``(0, 1, 2, 4)``: the datamodules map label 4 to index 3.
        hd95_penalty: HD95 (mm) when exactly one of prediction and reference region is empty (BraTS: 373.13).

    ``update(pred, target, case_ids, spacing)`` takes ``(B, *spatial)`` or ``(B, 1, *spatial)`` class-index maps
    and ``spacing`` ``(B, n_spatial)`` in mm (1 mm when omitted).
    """

    def __init__(self, label_map: Sequence[int] = BRATS_LABELS, hd95_penalty: float = BRATS_HD95_PENALTY) -> None:
        super().__init__()
        label_map = tuple(int(v) for v in label_map)
        if len(label_map) < 2 or label_map[0] != 0 or len(set(label_map)) != len(label_map):
            raise ValueError(f"label_map must start with 0 (background) and hold distinct labels, got {label_map!r}")
        if not set(label_map) & {1, 2, 4}:
            raise ValueError(f"label_map {label_map!r} holds none of the BraTS tumour labels 1, 2, 4")
        if not (np.isfinite(hd95_penalty) and hd95_penalty >= 0):
            raise ValueError(f"hd95_penalty must be a finite value >= 0 (mm), got {hd95_penalty!r}")
        self.label_map = label_map
        self.hd95_penalty = float(hd95_penalty)

    def score_case(
        self, pred: np.ndarray, target: np.ndarray, spacing: Sequence[float] | None = None
    ) -> dict[str, float]:
        return brats_scores(pred, target, spacing, self.label_map, self.hd95_penalty)
