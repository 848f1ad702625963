"""Dataset fingerprint: foreground intensity statistics, spacings, shapes and the training orientation.

The fingerprint follows nnU-Net (Isensee et al., Nature Methods 2021): foreground = label > 0 of the training cases,
up to 10,000 voxels sampled per case with a seeded generator. It works on any :class:`segzoo.data.io.Case` (the
dataset's reader is the case's ``load``). Every case is first brought to the training orientation (the most frequent
axis codes of the training images) by an exact axis permutation/flip (``segzoo.data.geometry``), so cases stored RAS,
LPS, slices first or last are sampled the same way.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from segzoo.data.geometry import Reorientation, axis_codes, majority_codes, spacing_from_affine
from segzoo.data.io import Case, DataError, read_json
from segzoo.data.sampling import case_rng
from segzoo.utils import atomic_write_text, spawn_pool

__all__ = ["FINGERPRINT_VERSION", "compute_fingerprint", "load_fingerprint", "save_fingerprint"]

FINGERPRINT_VERSION = 2  # 2: the training orientation (axis codes); spacings and shapes in that axis order


def _stored_codes(case: Case) -> tuple[str, ...]:
    """Axis codes of a case's image, from its NIfTI header alone (no voxel is read; a DICOM case is read once)."""
    from segzoo.data.planning import case_geometry

    return axis_codes(case_geometry(case)[0])


def _case_fingerprint(
    case: Case, samples_per_case: int, seed: int, orientation: Sequence[str] | None = None
) -> tuple[str, list, list, np.ndarray, list]:
    image, label, affine = case.load()
    if label is None:
        raise DataError(
            f"{case.image}: case {case.case_id} has no label; the fingerprint needs labelled (training) cases"
        )
    # in the training orientation, so the sampled voxels do not depend on how the case happens to be stored
    first = image.ndim - 3  # (*spatial) or (C, *spatial)
    r = Reorientation.to_codes(affine, image.shape[first:], orientation, name=case.image)
    image, label = r.apply(image, first_axis=first), r.apply(label)
    if first == 0:
        fg = image[label > 0]
        if fg.size > samples_per_case:
            fg = case_rng(seed, case.case_id).choice(fg, samples_per_case, replace=False)
        fg = fg[None]
    else:  # the same sampled voxels in every channel
        fg = image[:, label > 0]
        if fg.shape[1] > samples_per_case:
            idx = case_rng(seed, case.case_id).choice(fg.shape[1], samples_per_case, replace=False)
            fg = fg[:, idx]
    spacing = r.apply_spacing(spacing_from_affine(affine))
    return case.case_id, list(spacing), list(image.shape[first:]), fg.astype(np.float64), list(r.source)


def _stats(samples: np.ndarray) -> dict[str, float]:
    return {
        "percentile_00_5": float(np.percentile(samples, 0.5)),
        "percentile_99_5": float(np.percentile(samples, 99.5)),
        "mean": float(samples.mean()),
        "std": float(samples.std()),
        "min": float(samples.min()),
        "max": float(samples.max()),
        "num_samples": int(samples.size),
    }


def compute_fingerprint(
    cases: Sequence[Case], samples_per_case: int = 10_000, seed: int = 0, num_workers: int = 0
) -> dict[str, Any]:
    """Dataset fingerprint from the TRAINING cases (label > 0 = foreground).

    Args:
        cases: labelled training cases.
        samples_per_case: foreground voxels sampled per case (all of them when a case has fewer).
        seed: seed of the per-case sampling (a case's sample depends only on ``seed`` and its id).
        num_workers: worker processes (0 = in this process).

    The training orientation is the most frequent axis codes of the training images (:func:`majority_codes`); every
    case is brought to it (exact permutation/flip) before sampling, and spacings and shapes are in its axis order.

    Returns:
        JSON-serialisable dict: ``orientation`` (axis codes, e.g. ``["I", "P", "L"]`` for KiTS19), per-case
        ``orientations`` (as stored), ``train_cases``, per-case ``spacings`` and ``shapes`` (training axis order),
        ``median_spacing``, and ``foreground`` with ``percentile_00_5``, ``percentile_99_5``, ``mean``, ``std``
        (population std), ``min``, ``max``, ``num_samples`` of channel 0; ``channels``: the same per channel (a case's
        image may be ``(*spatial)`` or ``(C, *spatial)``; one set of voxels is sampled for all its channels).
    """
    cases = list(cases)
    if not cases:
        raise DataError("compute_fingerprint: no training cases given; expected at least one labelled case")
    orientation = majority_codes([_stored_codes(c) for c in cases])
    n = len(cases)
    if num_workers > 0:
        with spawn_pool(num_workers) as pool:
            results = list(pool.map(_case_fingerprint, cases, [samples_per_case] * n, [seed] * n, [orientation] * n))
    else:
        results = [_case_fingerprint(c, samples_per_case, seed, orientation) for c in cases]
    channels = {r[3].shape[0] for r in results}
    if len(channels) != 1:
        raise DataError(f"compute_fingerprint: the training cases have different channel counts {sorted(channels)}")
    samples = np.concatenate([r[3] for r in results], axis=1)
    if samples.size == 0:
        raise DataError("compute_fingerprint: the training cases contain no foreground (label > 0) voxels")
    spacings = {r[0]: r[1] for r in results}
    return {
        "version": FINGERPRINT_VERSION,
        "orientation": list(orientation),
        "orientations": {r[0]: r[4] for r in results},
        "train_cases": [r[0] for r in results],
        "samples_per_case": samples_per_case,
        "seed": seed,
        "spacings": spacings,
        "shapes": {r[0]: r[2] for r in results},
        "median_spacing": [float(v) for v in np.median(np.array(list(spacings.values())), axis=0)],
        "foreground": _stats(samples[0]),  # channel 0 (the CT of a one-channel dataset)
        "channels": [_stats(c) for c in samples],  # every channel, for per-channel normalisation
    }


def save_fingerprint(fingerprint: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write the fingerprint as JSON, atomically."""
    return atomic_write_text(path, json.dumps(fingerprint, indent=2))


def load_fingerprint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a fingerprint written by :func:`save_fingerprint`; :class:`DataError` if missing or malformed."""
    path = Path(path)
    fp = read_json(path, "dataset fingerprint")
    missing = [k for k in ("median_spacing", "foreground") if k not in fp]
    if missing:
        raise DataError(f"{path}: fingerprint lacks keys {missing}; expected the output of compute_fingerprint")
    return fp
