"""segzoo.metrics: per-case challenge metrics (KiTS19, CHAOS, BraTS) on top of :class:`CaseMetric`."""

from segzoo.metrics.base import CaseMetric
from segzoo.metrics.brats import BraTSMetric, brats_scores
from segzoo.metrics.chaos import CHAOSMetric, chaos_scores
from segzoo.metrics.kits19 import KiTS19Metric, kits19_scores
from segzoo.metrics.labels import LabelMetric, label_scores

__all__ = [
    "BraTSMetric",
    "CHAOSMetric",
    "CaseMetric",
    "KiTS19Metric",
    "LabelMetric",
    "brats_scores",
    "chaos_scores",
    "kits19_scores",
    "label_scores",
]
