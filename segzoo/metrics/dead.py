"""Dead classes: a class or region that an evaluation never saw predicted, or whose Dice stayed 0 in every case
whose reference holds it.

A net can lose a class without any mean score saying so loudly (issue 25: the KiTS19 demo recipe stopped predicting
the tumour on data it was not tuned on, and the fit summary was silent). These pure functions (numpy only, no
Lightning) name such classes in one warning line; ``SegmentationTask`` calls them at the end of every validation and
test, and an evaluation command can call them the same way::

    counter = DeadClassCounter(label_regions(num_classes, metric.class_names(), metric.regions()))
    for pred, target in cases:  # label maps of class indices, (*spatial)
        counter.update(pred, target)
    message = counter.warning("validation")  # None when every class is alive

Definitions, per class or region ``r`` over the ``N`` cases of one evaluation (our choice, see
``docs/losses_metrics.md``):

* **never predicted**: no case's prediction holds ``r`` (reported also when no reference holds it: the evaluation
  then cannot tell whether the net would find it);
* **Dice 0 wherever present**: ``r`` is predicted somewhere and present in at least one reference, and its Dice is
  exactly 0 in every case whose reference holds it (no overlap at all; a case without ``r`` in its reference has no
  Dice evidence and is left out).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

__all__ = [
    "DeadClassCounter",
    "confusion",
    "dead_class_warning",
    "dead_classes",
    "dice_from_counts",
    "label_regions",
    "region_counts",
]


def label_regions(
    num_classes: int, class_names: Sequence[str] = (), regions: Mapping[str, Sequence[int]] | None = None
) -> dict[str, tuple[int, ...]]:
    """What to check: display name -> class indices.

    Args:
        num_classes: classes including the background (index 0), e.g. the net's output channels.
        class_names: names of the foreground classes 1, 2, ... (shorter than ``num_classes - 1``: the rest unnamed).
        regions: regions of several classes that a metric scores (``{"WT": (1, 2, 3)}``); a region with the class
            set of a single class is left out (the class names it), as is one holding a class ``>= num_classes``.

    Returns:
        ``{"class 1 'kidney'": (1,), "class 2 'tumour'": (2,), "region 'kidney' (classes 1, 2)": (1, 2)}``: every
        foreground class first, then the regions.
    """
    out: dict[str, tuple[int, ...]] = {}
    for k in range(1, int(num_classes)):
        name = class_names[k - 1] if k - 1 < len(class_names) else None
        out[f"class {k} '{name}'" if name else f"class {k}"] = (k,)
    for name, classes in (regions or {}).items():
        classes = tuple(sorted({int(c) for c in classes}))
        if len(classes) < 2 or max(classes) >= num_classes or classes in out.values():
            continue
        out[f"region '{name}' (classes {', '.join(map(str, classes))})"] = classes
    return out


def confusion(pred: np.ndarray, target: np.ndarray, num_classes: int) -> np.ndarray:
    """Voxel counts ``(K, K)`` of one case, ``[reference class, predicted class]``, for class-index maps of one shape.

    ``K`` is ``num_classes`` or more when a map holds a larger index (that class then simply counts as well).
    """
    pred, target = np.asarray(pred), np.asarray(target)
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {target.shape}")
    pred, target = pred.astype(np.int64, copy=False).ravel(), target.astype(np.int64, copy=False).ravel()
    if pred.size and min(pred.min(), target.min()) < 0:
        raise ValueError("class-index maps must not hold negative values")
    k = max(int(num_classes), int(pred.max()) + 1 if pred.size else 0, int(target.max()) + 1 if target.size else 0)
    return np.bincount(target * k + pred, minlength=k * k).reshape(k, k)


def region_counts(conf: np.ndarray, regions: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Predicted, reference and overlapping voxels ``(R,)`` of each region (a set of classes) from a confusion matrix."""
    conf = np.asarray(conf)
    pred, ref, both = [], [], []
    for classes in regions:
        idx = [c for c in classes if c < conf.shape[0]]
        pred.append(int(conf[:, idx].sum()))
        ref.append(int(conf[idx, :].sum()))
        both.append(int(conf[np.ix_(idx, idx)].sum()))
    return np.asarray(pred, dtype=np.int64), np.asarray(ref, dtype=np.int64), np.asarray(both, dtype=np.int64)


def dice_from_counts(pred: np.ndarray, ref: np.ndarray, overlap: np.ndarray) -> np.ndarray:
    """``2 |P & R| / (|P| + |R|)`` elementwise; NaN where prediction and reference are both empty."""
    pred, ref, overlap = (np.asarray(a, dtype=np.float64) for a in (pred, ref, overlap))
    total = pred + ref
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, 2.0 * overlap / np.where(total > 0, total, 1.0), np.nan)


def _as_table(values: Sequence[Sequence[float]] | np.ndarray, n: int, what: str) -> np.ndarray:
    table = np.asarray(values, dtype=np.float64)
    if table.size == 0:
        table = table.reshape(0, n)
    if table.ndim != 2 or table.shape[1] != n:
        raise ValueError(f"{what} must be (cases, {n}), one column per name; got shape {table.shape}")
    return table


def _dead(
    pred_counts: Sequence[Sequence[int]] | np.ndarray,
    gt_counts: Sequence[Sequence[int]] | np.ndarray,
    dice: Sequence[Sequence[float]] | np.ndarray,
    names: Sequence[str],
) -> list[tuple[str, str]]:
    """``(name, phrase)`` of every dead class or region, in the order of ``names``."""
    n = len(names)
    pred = _as_table(pred_counts, n, "per_case_pred_counts")
    ref = _as_table(gt_counts, n, "per_case_gt_counts")
    dice = _as_table(dice, n, "per_case_dice")
    if not pred.shape[0] == ref.shape[0] == dice.shape[0]:
        raise ValueError(f"one row per case in each table; got {pred.shape[0]}, {ref.shape[0]}, {dice.shape[0]} rows")
    out: list[tuple[str, str]] = []
    if pred.shape[0] == 0:
        return out
    for r, name in enumerate(names):
        present = ref[:, r] > 0
        predicted = int((pred[:, r] > 0).sum())
        if predicted == 0:
            out.append((name, f"{name} was never predicted (present in {int(present.sum()) or 'none'})"))
            continue
        evidence = dice[present, r]
        evidence = evidence[~np.isnan(evidence)]
        if evidence.size and np.all(evidence == 0.0):
            cases = "the case" if evidence.size == 1 else f"all {evidence.size} cases"
            out.append((name, f"{name} has Dice 0 in {cases} that hold it (predicted in {predicted})"))
    return out


def dead_classes(
    per_case_pred_counts: Sequence[Sequence[int]] | np.ndarray,
    per_case_gt_counts: Sequence[Sequence[int]] | np.ndarray,
    per_case_dice: Sequence[Sequence[float]] | np.ndarray,
    names: Sequence[str],
) -> list[str]:
    """One phrase per dead class or region, in the order of ``names``.

    Args:
        per_case_pred_counts: ``(cases, R)`` predicted voxels of each class or region per case.
        per_case_gt_counts: ``(cases, R)`` reference voxels.
        per_case_dice: ``(cases, R)`` Dice; NaN (no evidence) is ignored.
        names: ``R`` display names (see :func:`label_regions`).

    Returns:
        e.g. ``["class 2 'tumour' was never predicted (present in 3)", "class 1 'liver' has Dice 0 in all 2 cases
        that hold it (predicted in 1)"]``; empty when there are no cases or no dead class.
    """
    return [phrase for _, phrase in _dead(per_case_pred_counts, per_case_gt_counts, per_case_dice, names)]


def dead_class_warning(
    per_case_pred_counts: Sequence[Sequence[int]] | np.ndarray,
    per_case_gt_counts: Sequence[Sequence[int]] | np.ndarray,
    per_case_dice: Sequence[Sequence[float]] | np.ndarray,
    names: Sequence[str],
    where: str = "validation",
) -> str | None:
    """The one warning line naming every dead class (:func:`dead_classes`), or ``None`` when there is none.

    Example: ``segzoo: dead class on 3 validation cases: class 2 'tumour' was never predicted (present in 3)``.
    """
    dead = dead_classes(per_case_pred_counts, per_case_gt_counts, per_case_dice, names)
    if not dead:
        return None
    n = np.asarray(per_case_pred_counts).shape[0]
    noun = "class" if len(dead) == 1 else "classes"
    return f"segzoo: dead {noun} on {n} {where} case{'s' if n != 1 else ''}: {'; '.join(dead)}"


class DeadClassCounter:
    """Accumulates per-case voxel counts of each class or region and names the dead ones.

    Args:
        regions: display name -> class indices, as :func:`label_regions` gives.
    """

    def __init__(self, regions: Mapping[str, Sequence[int]]) -> None:
        self.names = list(regions)
        self.classes = [tuple(int(c) for c in v) for v in regions.values()]
        self.num_classes = 1 + max((c for v in self.classes for c in v), default=0)
        self.pred: list[np.ndarray] = []
        self.ref: list[np.ndarray] = []
        self.overlap: list[np.ndarray] = []

    def add_confusion(self, conf: np.ndarray) -> None:
        """Add one case given by its :func:`confusion` matrix."""
        pred, ref, both = region_counts(conf, self.classes)
        self.pred.append(pred)
        self.ref.append(ref)
        self.overlap.append(both)

    def update(self, pred: np.ndarray, target: np.ndarray) -> None:
        """Add one case given by its predicted and reference class-index maps ``(*spatial)``."""
        self.add_confusion(confusion(pred, target, self.num_classes))

    def tables(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(cases, R)`` predicted voxels, reference voxels and Dice."""
        n = len(self.names)
        pred = np.asarray(self.pred, dtype=np.int64).reshape(-1, n)
        ref = np.asarray(self.ref, dtype=np.int64).reshape(-1, n)
        both = np.asarray(self.overlap, dtype=np.int64).reshape(-1, n)
        return pred, ref, dice_from_counts(pred, ref, both)

    def dead(self) -> list[str]:
        """The phrases of :func:`dead_classes`."""
        return dead_classes(*self.tables(), self.names)

    def dead_names(self) -> list[str]:
        """The names of the dead classes and regions alone (to tell whether the set changed)."""
        return [name for name, _ in _dead(*self.tables(), self.names)]

    def warning(self, where: str = "validation") -> str | None:
        return dead_class_warning(*self.tables(), self.names, where=where)
