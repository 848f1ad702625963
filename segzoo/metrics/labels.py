"""Per-label metrics of any dataset: Dice and HD95 for every label that dataset.json declares.

Dice follows nnU-Net's ``compute_metrics_on_folder``: ``2 TP / (2 TP + FP + FN)`` per label value, NaN when the label
is absent from both prediction and reference (such cases are left out of the mean, as nnU-Net's ``nanmean`` does).
HD95 is MONAI's ``compute_hausdorff_distance(percentile=95)`` in millimetres (with the case's spacing); 0 when both
are empty, and the image diagonal when only one of them is (the penalty segzoo's BraTS metric uses). ``mean/dice`` is
the mean over the foreground labels (checkpoint selection: ``score_key: mean/dice``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from segzoo.metrics._common import image_diagonal
from segzoo.metrics.base import CaseMetric

__all__ = ["LabelMetric", "label_scores"]


def _hd95(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float] | None) -> float:
    if not pred.any() and not ref.any():
        return 0.0
    sp = [1.0] * pred.ndim if spacing is None else [float(s) for s in spacing]
    if not pred.any() or not ref.any():
        return image_diagonal(pred.shape, sp)
    import torch
    from monai.metrics import compute_hausdorff_distance

    y_pred = torch.from_numpy(np.stack([~pred, pred])[None])
    y = torch.from_numpy(np.stack([~ref, ref])[None])
    value = compute_hausdorff_distance(y_pred, y, include_background=False, percentile=95, spacing=sp)
    return float(value.reshape(-1)[0])


def label_scores(
    pred: np.ndarray,
    target: np.ndarray,
    labels: Mapping[int, str],
    spacing: Sequence[float] | None = None,
    hd95: bool = True,
    regions: Mapping[str, Sequence[int]] | None = None,
) -> dict[str, float]:
    """``{"<name>/dice", "<name>/hd95" ..., "mean/dice"}`` of one case for every foreground label in ``labels``;
    with nnU-Net ``regions`` also ``"region <name>/dice"`` (and hd95) of every region's mask, and ``mean/dice`` is
    then the mean over the regions (what nnU-Net reports for a region dataset)."""
    pred, target = np.asarray(pred), np.asarray(target)
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {target.shape}")
    out: dict[str, float] = {}
    dices = []
    for value, name in sorted(labels.items()):
        if int(value) == 0:
            continue
        p, r = pred == int(value), target == int(value)
        tp = int(np.count_nonzero(p & r))
        fp_fn = int(np.count_nonzero(p ^ r))
        d = float("nan") if tp + fp_fn == 0 else 2 * tp / (2 * tp + fp_fn)
        out[f"{name}/dice"] = d
        if hd95:
            out[f"{name}/hd95"] = _hd95(p, r, spacing)
        dices.append(d)
    if regions:
        dices = []
        for name, members in regions.items():
            p, r = np.isin(pred, list(members)), np.isin(target, list(members))
            tp, fp_fn = int(np.count_nonzero(p & r)), int(np.count_nonzero(p ^ r))
            d = float("nan") if tp + fp_fn == 0 else 2 * tp / (2 * tp + fp_fn)
            out[f"region {name}/dice"] = d
            if hd95:
                out[f"region {name}/hd95"] = _hd95(p, r, spacing)
            dices.append(d)
    finite = [d for d in dices if not np.isnan(d)]
    out["mean/dice"] = float(np.mean(finite)) if finite else float("nan")
    return out


class LabelMetric(CaseMetric):
    """Per-case Dice (and HD95) of every foreground label of a dataset, accumulated over a run.

    Args:
        labels: ``{value: name}`` (background included or not); ``None``: given later by :meth:`bind_labels`, which
            ``segzoo fit`` calls with the datamodule's labels (``label_names``).
        hd95: also compute the 95th-percentile Hausdorff distance (mm), MONAI's.
    """

    def __init__(self, labels: dict[int, str] | None = None, hd95: bool = True) -> None:
        super().__init__()
        self.labels = None if labels is None else {int(k): str(v) for k, v in labels.items()}
        self.hd95 = bool(hd95)
        self.region_members: dict[str, list[int]] | None = None

    def bind_regions(self, regions: Mapping[str, Sequence[int]]) -> None:
        """Also score nnU-Net regions (``{name: values}``); ``mean/dice`` becomes their mean."""
        self.region_members = {str(k): [int(v) for v in m] for k, m in regions.items()}

    def regions(self) -> dict[str, tuple[int, ...]]:
        """The bound nnU-Net regions (``{name: values}``), for the dead-class check."""
        return {k: tuple(v) for k, v in (self.region_members or {}).items()}

    def bind_labels(self, labels: Mapping[int, str]) -> None:
        """Adopt the dataset's labels unless the config gave some."""
        if self.labels is None:
            self.labels = {int(k): str(v) for k, v in labels.items()}

    def class_names(self) -> tuple[str, ...]:
        """Names of the label values 1, 2, ... (the class indices); a value without a name gets ``""``."""
        if not self.labels:
            return ()
        return tuple(self.labels.get(k, "") for k in range(1, max(self.labels) + 1))

    def score_case(
        self, pred: np.ndarray, target: np.ndarray, spacing: Sequence[float] | None = None
    ) -> dict[str, float]:
        labels = self.labels
        if labels is None:  # no dataset bound: every value seen
            values = sorted(set(np.unique(pred).tolist()) | set(np.unique(target).tolist()))
            labels = {int(v): f"label_{int(v)}" for v in values}
        return label_scores(pred, target, labels, spacing, self.hd95, self.region_members)
