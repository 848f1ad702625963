"""Per-case segmentation metrics that accumulate over a validation/test run (like nnU-Net's summary.json)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


class CaseMetric:
    """Base class: scores whole cases from label maps and keeps one row per case.

    Subclasses implement :meth:`score_case`, returning ``{"<class or region>/<metric>": value}``.
    ``update`` takes label maps ``(B, *spatial)`` or ``(B, 1, *spatial)`` (integer class indices in the
    dataset's own label values), ``compute`` returns the mean of every key over cases (NaN ignored).
    """

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def score_case(
        self, pred: np.ndarray, target: np.ndarray, spacing: Sequence[float] | None = None
    ) -> dict[str, float]:
        raise NotImplementedError

    def update(
        self,
        pred: torch.Tensor | np.ndarray,
        target: torch.Tensor | np.ndarray,
        case_ids: Sequence[str] | None = None,
        spacing: Sequence[Sequence[float]] | None = None,
    ) -> list[dict[str, Any]]:
        pred, target = _to_numpy(pred), _to_numpy(target)
        if pred.ndim == target.ndim and pred.ndim >= 3 and pred.shape[1] == 1:
            pred, target = pred[:, 0], target[:, 0]
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {pred.shape} differs from target shape {target.shape}")
        new = []
        for i in range(pred.shape[0]):
            sp = None if spacing is None else [float(s) for s in _to_numpy(spacing[i]).reshape(-1)]
            row = {
                "case_id": str(case_ids[i]) if case_ids is not None else str(len(self.rows)),
                **self.score_case(pred[i], target[i], sp),
            }
            self.rows.append(row)
            new.append(row)
        return new

    def class_names(self) -> tuple[str, ...]:
        """Names of the foreground class indices 1, 2, ... in messages (dead-class warnings); ``()``: unnamed."""
        return ()

    def regions(self) -> dict[str, tuple[int, ...]]:
        """Regions of several class indices that the metric scores (BraTS WT, KiTS19 kidney = classes 1 + 2), which
        the dead-class check (:mod:`segzoo.metrics.dead`) watches besides the single classes; ``{}``: none."""
        return {}

    def compute(self) -> dict[str, float]:
        keys = [k for k in (self.rows[0] if self.rows else {}) if k != "case_id"]
        out = {}
        for k in keys:
            vals = [r[k] for r in self.rows if r.get(k) is not None and not math.isnan(r[k])]
            out[k] = float(np.mean(vals)) if vals else float("nan")
        return out

    def per_case(self) -> list[dict[str, Any]]:
        return list(self.rows)

    def summary(self) -> dict[str, Any]:
        """``{"mean": {...}, "cases": [...]}``: what ``RUN/metrics.json`` holds."""
        return {"mean": self.compute(), "cases": self.per_case()}

    def reset(self) -> None:
        self.rows = []
