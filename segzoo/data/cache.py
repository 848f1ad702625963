"""The on-disk preprocessing cache: every case preprocessed once, re-done exactly when its inputs change.

The cache stores ``<case_id>_img.npy`` (float32 ``(C, D, H, W)``), ``<case_id>_seg.npy`` (uint8 ``(1, D, H, W)``) and
``<case_id>_properties.json`` (shapes, spacing, orientation transform, and the coordinates of up to
``foreground_samples`` voxels of every foreground class present, for oversampling); ``manifest.json`` maps each case
to a hash of the preprocessing parameters and the source files' size and mtime, so changed parameters or replaced
data re-preprocess exactly the affected cases. It works on any :class:`segzoo.data.io.Case` and any preprocessor with
``to_dict``, ``params_hash``, ``reorientation``, ``preprocess``, ``preprocess_label`` and ``target_spacing`` (as
:class:`segzoo.data.preprocessor.CTPreprocessor`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from concurrent.futures import as_completed
from pathlib import Path
from typing import Any

import numpy as np

from segzoo.data.geometry import spacing_from_affine
from segzoo.data.io import Case, read_json
from segzoo.data.sampling import case_rng
from segzoo.utils import atomic_path, atomic_write_text, spawn_pool

__all__ = ["CACHE_VERSION", "atomic_save_npy", "cache_paths", "load_properties", "preprocess_dataset"]

CACHE_VERSION = 2  # 2: cached arrays in the preprocessor's orientation


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray) -> Path:
    """``np.save`` through a temporary file in the same folder and ``os.replace``."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)
    return Path(path)


def cache_paths(cache_dir: str | os.PathLike, case_id: str) -> dict[str, Path]:
    """Paths of one cached case: ``image`` (``_img.npy``), ``label`` (``_seg.npy``), ``properties`` (``.json``)."""
    cache_dir = Path(cache_dir)
    return {
        "image": cache_dir / f"{case_id}_img.npy",
        "label": cache_dir / f"{case_id}_seg.npy",
        "properties": cache_dir / f"{case_id}_properties.json",
    }


def _case_key(case: Case, preprocessor: Any, foreground_samples: int, seed: int) -> str:
    files = []
    for p in getattr(case, "files", (case.image, case.label)):  # every channel file of a multi-channel case
        if p is not None:
            st = Path(p).stat()
            files.append([str(p.name), st.st_size, st.st_mtime_ns])
    blob = json.dumps(
        {"v": CACHE_VERSION, "pre": preprocessor.to_dict(), "files": files, "n": foreground_samples, "seed": seed},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _preprocess_case(
    case: Case, cache_dir: str, preprocessor: Any, key: str, foreground_samples: int, seed: int
) -> dict[str, Any]:
    image, label, affine = case.load()
    first = image.ndim - 3  # (*spatial) or (C, *spatial)
    original_shape = image.shape[first:]
    r = preprocessor.reorientation(affine, original_shape, name=case.image)
    image = r.apply(image, first_axis=first)
    label = None if label is None else r.apply(label)
    spacing = r.apply_spacing(spacing_from_affine(affine))
    img = preprocessor.preprocess(image, spacing)
    paths = cache_paths(cache_dir, case.case_id)
    locations: dict[str, list] = {}
    if label is not None:
        seg = preprocessor.preprocess_label(label, spacing)
        for c in (int(v) for v in np.unique(seg) if v > 0):  # every foreground class the case holds
            coords = np.argwhere(seg[0] == c)
            if len(coords) > foreground_samples:
                idx = case_rng(seed, case.case_id, c).choice(len(coords), foreground_samples, replace=False)
                coords = coords[np.sort(idx)]
            locations[str(c)] = coords.astype(int).tolist()
        atomic_save_npy(paths["label"], seg)
    atomic_save_npy(paths["image"], img)
    props = {
        "case_id": case.case_id,
        "source_image": str(case.image),
        "original_shape": list(original_shape),
        "oriented_shape": list(image.shape[first:]),
        "orientation_transform": r.transform.astype(int).tolist(),
        "original_spacing": list(spacing),
        "affine": np.asarray(affine).tolist(),
        "preprocessed_shape": list(img.shape[1:]),
        "target_spacing": list(preprocessor.target_spacing),
        "has_label": label is not None,
        "image_min": float(img.min()),
        "class_locations": locations,
        "cache_key": key,
        "params_hash": preprocessor.params_hash(),
    }
    atomic_write_text(paths["properties"], json.dumps(props))
    return props


def load_properties(cache_dir: str | os.PathLike, case_id: str) -> dict[str, Any]:
    """Read ``<cache_dir>/<case_id>_properties.json``."""
    return read_json(cache_paths(cache_dir, case_id)["properties"], f"preprocessed properties of {case_id}")


def preprocess_dataset(
    cases: Sequence[Case],
    cache_dir: str | os.PathLike,
    preprocessor: Any,
    num_workers: int = 0,
    foreground_samples: int = 10_000,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, dict[str, Any]]:
    """Preprocess ``cases`` into ``cache_dir`` (skipping cases already cached with the same parameters).

    Args:
        cases: labelled and/or unlabelled cases.
        cache_dir: output folder (created).
        preprocessor: the preprocessing to apply (e.g. a :class:`~segzoo.data.preprocessor.CTPreprocessor`).
        num_workers: worker processes (0 = in this process).
        foreground_samples: voxel coordinates stored per foreground class for oversampling.
        seed: seed of the coordinate sampling.
        progress: show a tqdm bar.

    Returns:
        ``{case_id: properties}`` for all ``cases``.
    """
    from tqdm.auto import tqdm

    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = cache_dir / "manifest.json"
    manifest = {"version": CACHE_VERSION, "cases": {}}
    if manifest_path.is_file():
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            pass  # a damaged manifest only costs a re-run
    known = manifest.setdefault("cases", {})
    keys = {c.case_id: _case_key(c, preprocessor, foreground_samples, seed) for c in cases}
    todo = []
    for c in cases:
        paths = cache_paths(cache_dir, c.case_id)
        needed = [paths["image"], paths["properties"]] + ([paths["label"]] if c.label is not None else [])
        if known.get(c.case_id) != keys[c.case_id] or not all(p.is_file() for p in needed):
            todo.append(c)
    bar = tqdm(total=len(todo), desc="preprocess", disable=not progress or not todo, unit="case")

    def done(props: dict[str, Any]) -> None:
        known[props["case_id"]] = props["cache_key"]
        atomic_write_text(manifest_path, json.dumps(manifest, indent=1))
        bar.update(1)

    try:
        if num_workers > 0 and len(todo) > 1:
            with spawn_pool(min(num_workers, len(todo))) as pool:
                futures = [
                    pool.submit(
                        _preprocess_case, c, str(cache_dir), preprocessor, keys[c.case_id], foreground_samples, seed
                    )
                    for c in todo
                ]
                for f in as_completed(futures):
                    done(f.result())
        else:
            for c in todo:
                done(_preprocess_case(c, str(cache_dir), preprocessor, keys[c.case_id], foreground_samples, seed))
    finally:
        bar.close()
    return {c.case_id: load_properties(cache_dir, c.case_id) for c in cases}
