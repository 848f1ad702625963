"""Cross-validation scores from out-of-fold predictions, and the post-processing decided on them (nnU-Net's way).

Each fold's validation writes its cases' label maps before post-processing, with their references
(``SegmentationTask(prediction_dir=...)``: ``RUN/fold_k/validation/<case>.npz``, on the original grid where the
datamodule scores there). :func:`score_out_of_fold` pools every fold's cases, scores each with the recipe's metric
under every subset of the recipe's post-processing steps, keeps each step only where it improves the mean score over
all folds (the rule :class:`SegmentationTask` applies to one validation split), and returns the summary that
``segzoo cv`` writes as ``RUN/cv_metrics.json``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from segzoo.data.io import DataError


def read_prediction(path: str | Path) -> dict[str, Any]:
    """One out-of-fold prediction file: ``prediction`` and ``reference`` label maps, ``spacing`` (or ``None``) and
    ``on_original_grid``. Plain arrays only (``allow_pickle=False``); a broken file is one line naming it."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            out = {k: data[k] for k in ("prediction", "reference", "spacing")}
            on_original = bool(data["on_original_grid"]) if "on_original_grid" in data else False
    except (OSError, ValueError, KeyError) as e:
        raise DataError(f"{path}: not an out-of-fold prediction file ({' '.join(str(e).split())})") from None
    if out["prediction"].shape != out["reference"].shape:
        raise DataError(f"{path}: prediction {out['prediction'].shape} and reference {out['reference'].shape} differ")
    spacing = [float(v) for v in out["spacing"]] or None
    return {**out, "spacing": spacing, "on_original_grid": on_original}


def _key(steps: Sequence[str]) -> str:
    return "+".join(steps) or "none"


def _mean(rows: list[dict[str, Any]]) -> dict[str, float]:
    keys = [k for k in (rows[0] if rows else {}) if k != "case_id"]
    out = {}
    for k in keys:
        vals = [r[k] for r in rows if r.get(k) is not None and not math.isnan(r[k])]
        out[k] = float(np.mean(vals)) if vals else float("nan")
    return out


def default_score(means: dict[str, float], score_key: str | None = None) -> float | None:
    """``means[score_key]``, or the mean of every ``*/dice`` (as :class:`SegmentationTask`'s ``val/score``)."""
    if score_key is not None:
        if score_key not in means:
            raise KeyError(f"score_key '{score_key}' is not a metric key; available: {sorted(means)}")
        return means[score_key]
    dice = [v for k, v in means.items() if k.endswith("/dice") and not math.isnan(v)]
    return float(sum(dice) / len(dice)) if dice else None


def score_out_of_fold(
    files: Sequence[str | Path],
    score_case: Callable[[np.ndarray, np.ndarray, Sequence[float] | None], dict[str, float]],
    postprocess: Any = None,
    score_key: str | None = None,
    tune: bool = True,
) -> dict[str, Any]:
    """Score out-of-fold predictions and decide the post-processing on them.

    Args:
        files: ``<case>.npz`` files of every fold's validation (:func:`read_prediction`).
        score_case: the metric, ``score_case(pred, reference, spacing) -> {"<label>/<metric>": value}``.
        postprocess: the recipe's post-processing. With switchable steps (``subsets``, ``apply_subsets``,
            ``decide``, as :class:`~segzoo.inference.postprocess.KiTSPostprocess`) and ``tune``, each step is kept
            only where it improves the mean score of all the cases; otherwise it is applied as it is.
        score_key: the metric key deciding (``None``: the mean of every ``*/dice``).
        tune: decide the steps (else apply ``postprocess`` unchanged).

    Returns:
        ``{"mean", "cases"}`` with the decided post-processing, ``"without_postprocess": {"mean", "cases"}``,
        ``"postprocess"`` (the decided object, or ``None``) and ``"scored_on"``.
    """
    if not files:
        raise DataError("no out-of-fold prediction to score")
    tunable = tune and postprocess is not None and hasattr(postprocess, "apply_subsets") and bool(postprocess.steps)
    rows: dict[str, list[dict[str, Any]]] = {}
    grids = set()
    for f in sorted(files, key=lambda p: Path(p).name):
        item = read_prediction(f)
        grids.add(item["on_original_grid"])
        raw = item["prediction"]
        if tunable:
            variants = {_key(k): v for k, v in postprocess.apply_subsets(raw).items()}
        else:
            variants = {"none": raw}
            if postprocess is not None:
                variants["post"] = np.asarray(postprocess(raw))
        case_id = Path(f).name[: -len(".npz")]
        for key, labels in variants.items():
            rows.setdefault(key, []).append(
                {"case_id": case_id, **score_case(labels, item["reference"], item["spacing"])}
            )
    decided = postprocess
    if tunable:
        scores = {s: default_score(_mean(rows[_key(s)]), score_key) for s in postprocess.subsets()}
        if any(v is None for v in scores.values()):
            raise KeyError("deciding the post-processing needs a score: set score_key or use a metric with */dice keys")
        decided = postprocess.decide(scores, num_cases=len(rows["none"]), metric=score_key or "mean dice")
        chosen = _key(decided.steps)
    else:
        chosen = "post" if postprocess is not None else "none"

    def summary(key: str) -> dict[str, Any]:
        mean = _mean(rows[key])
        score = default_score(mean, score_key)
        return {"mean": {**mean, **({"score": score} if score is not None else {})}, "cases": rows[key]}

    grid = {True: "original grid", False: "preprocessed grid"}
    return {
        **summary(chosen),
        "without_postprocess": summary("none"),
        "postprocess": decided,
        "scored_on": " and ".join(grid[g] for g in sorted(grids, reverse=True)),
    }
