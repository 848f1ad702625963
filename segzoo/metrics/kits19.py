"""KiTS19 metrics: kidney (kidney + tumour) Dice, tumour Dice and their mean.

Reference: N. Heller et al., "The KiTS19 Challenge Data" (arXiv:1904.00445) and the official
``starter_code/evaluation.py`` of github.com/neheller/kits19: kidney Dice on ``label > 0``, tumour Dice on
``label > 1`` (= 2 for valid labels), challenge score = their mean.

Empty masks: the official code computes ``2*tp / (2*tp + fp + fn)`` with numpy, which gives NaN (not the
``ZeroDivisionError`` it tries to catch) when prediction and reference are both empty. We return
``empty_value`` (default 1.0, a perfect agreement) instead; see ``docs/losses_metrics.md``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from segzoo.metrics._common import check_label_maps, dice
from segzoo.metrics.base import CaseMetric


def kits19_scores(pred: np.ndarray, target: np.ndarray, empty_value: float = 1.0) -> dict[str, float]:
    """KiTS19 Dice scores of one case.

    Args:
        pred: ``(*spatial)`` 2D or 3D label map, 0 background, 1 kidney, 2 tumour.
        target: reference label map of the same shape and labels.
        empty_value: Dice when a region is empty in both prediction and reference.

    Returns:
        ``{"kidney/dice", "tumour/dice", "composite/dice"}``; kidney is ``label > 0`` (kidney + tumour), tumour is
        ``label == 2``, composite is their mean.
    """
    pred, target = check_label_maps(pred, target, max_label=2, name="KiTS19 metric")
    kidney = dice(pred > 0, target > 0, empty_value)
    tumour = dice(pred == 2, target == 2, empty_value)
    return {"kidney/dice": kidney, "tumour/dice": tumour, "composite/dice": (kidney + tumour) / 2.0}


class KiTS19Metric(CaseMetric):
    """Per-case KiTS19 Dice (kidney, tumour, composite), accumulated over a run.

    Args:
        empty_value: Dice when a region is empty in both prediction and reference (default 1.0).

    ``update(pred, target, case_ids, spacing)`` takes ``(B, *spatial)`` or ``(B, 1, *spatial)`` label maps; the
    spacing is accepted and ignored (Dice is not spacing-aware).
    """

    def __init__(self, empty_value: float = 1.0) -> None:
        super().__init__()
        self.empty_value = float(empty_value)

    def class_names(self) -> tuple[str, ...]:
        return ("kidney", "tumour")

    def regions(self) -> dict[str, tuple[int, ...]]:
        return {"kidney": (1, 2), "tumour": (2,)}

    def score_case(
        self, pred: np.ndarray, target: np.ndarray, spacing: Sequence[float] | None = None
    ) -> dict[str, float]:
        return kits19_scores(pred, target, self.empty_value)
