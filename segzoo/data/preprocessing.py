"""CT dataset fingerprint, preprocessing (clip, z-score, resample) and the on-disk preprocessing cache.

Reference: Zhao et al., "Multi Scale Supervised 3D U-Net for Kidney and Tumor Segmentation" (KiTS19), section 2.1:
clip CT intensities to the 0.5 / 99.5 percentiles of foreground voxels, z-score with the global foreground mean and
std, resample every case to one voxel spacing. The fingerprint follows nnU-Net (Isensee et al., Nature Methods 2021):
foreground = label > 0 of the training cases, up to 10,000 voxels sampled per case with a seeded generator.

Choices where the paper is silent (see ``docs/data/kits19.md``):
- z-score first, then resample (nnU-Net's order); images resample trilinear (``image_order=1``, torch
  ``F.interpolate``, fast) or cubic (``image_order=3``, ``scipy.ndimage.zoom``, ~10x slower); labels nearest
  (``nearest-exact``); ``restore`` resamples class probabilities linearly back to the original grid, then argmax.
- Every case is first brought to the training orientation (the fingerprint's ``orientation``, the most frequent axis
  codes of the training images) by an exact axis permutation/flip (``segzoo.data.geometry``), so cases stored RAS,
  LPS, slices first or last all reach the net the same way; ``restore`` output is mapped back with the inverse.
- The cache stores ``<case_id>_img.npy`` (float32 ``(1, D, H, W)``), ``<case_id>_seg.npy`` (uint8 ``(1, D, H, W)``)
  and ``<case_id>_properties.json``; ``manifest.json`` maps each case to a hash of the preprocessing parameters and
  the source files' size and mtime, so changed parameters or replaced data re-preprocess exactly the affected cases.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import zlib
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from segzoo.data.geometry import Reorientation, axis_codes, check_axis_codes, majority_codes, spacing_from_affine
from segzoo.data.io import DataError
from segzoo.data.kits19 import KiTS19Case, load_kits19_case
from segzoo.utils import atomic_path, atomic_write_text

FINGERPRINT_VERSION = 2  # 2: the training orientation (axis codes); spacings and shapes in that axis order
CACHE_VERSION = 2  # 2: cached arrays in the preprocessor's orientation
PAPER_TARGET_SPACING = (3.0, 0.78125, 0.78125)


# ----------------------------------------------------------------------------------------------------------- helpers
def atomic_save_npy(path: str | os.PathLike, array: np.ndarray) -> Path:
    """``np.save`` through a temporary file in the same folder and ``os.replace``."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)
    return Path(path)


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise DataError(f"{path}: {what} not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: {what} is not valid JSON ({e})") from None


def _case_rng(seed: int, case_id: str, *extra: int) -> np.random.Generator:
    # per-case stream: independent of case order and of which other cases are present
    return np.random.default_rng([seed, zlib.crc32(case_id.encode()), *extra])


# ------------------------------------------------------------------------------------------------------- fingerprint
def _stored_codes(case: KiTS19Case) -> tuple[str, ...]:
    """Axis codes of a case's image, from its header alone (no voxel is read)."""
    import nibabel as nib

    try:
        return axis_codes(nib.load(str(case.image)).affine)
    except Exception as e:
        raise DataError(f"{case.image}: cannot read the NIfTI header ({type(e).__name__}: {e})") from None


def _case_fingerprint(
    case: KiTS19Case, samples_per_case: int, seed: int, orientation: Sequence[str] | None = None
) -> tuple[str, list, list, np.ndarray, list]:
    image, label, affine = load_kits19_case(case)
    if label is None:
        raise DataError(
            f"{case.image.parent}: no {case.image.parent / 'segmentation.nii.gz'}; "
            "the fingerprint needs labelled (training) cases"
        )
    # in the training orientation, so the sampled voxels do not depend on how the case happens to be stored
    r = Reorientation.to_codes(affine, image.shape, orientation, name=case.image)
    image, label = r.apply(image), r.apply(label)
    fg = image[label > 0]
    if fg.size > samples_per_case:
        fg = _case_rng(seed, case.case_id).choice(fg, samples_per_case, replace=False)
    spacing = r.apply_spacing(spacing_from_affine(affine))
    return case.case_id, list(spacing), list(image.shape), fg.astype(np.float64), list(r.source)


def _pool(num_workers: int) -> ProcessPoolExecutor:
    # spawn: safe after CUDA/threads were initialised in the parent (Lightning prepare_data)
    return ProcessPoolExecutor(max_workers=num_workers, mp_context=multiprocessing.get_context("spawn"))


def compute_fingerprint(
    cases: Sequence[KiTS19Case], samples_per_case: int = 10_000, seed: int = 0, num_workers: int = 0
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
        (population std), ``min``, ``max``, ``num_samples``.
    """
    cases = list(cases)
    if not cases:
        raise DataError("compute_fingerprint: no training cases given; expected at least one labelled case")
    orientation = majority_codes([_stored_codes(c) for c in cases])
    n = len(cases)
    if num_workers > 0:
        with _pool(num_workers) as pool:
            results = list(pool.map(_case_fingerprint, cases, [samples_per_case] * n, [seed] * n, [orientation] * n))
    else:
        results = [_case_fingerprint(c, samples_per_case, seed, orientation) for c in cases]
    samples = np.concatenate([r[3] for r in results])
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
        "foreground": {
            "percentile_00_5": float(np.percentile(samples, 0.5)),
            "percentile_99_5": float(np.percentile(samples, 99.5)),
            "mean": float(samples.mean()),
            "std": float(samples.std()),
            "min": float(samples.min()),
            "max": float(samples.max()),
            "num_samples": int(samples.size),
        },
    }


def save_fingerprint(fingerprint: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write the fingerprint as JSON, atomically."""
    return atomic_write_text(path, json.dumps(fingerprint, indent=2))


def load_fingerprint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a fingerprint written by :func:`save_fingerprint`; :class:`DataError` if missing or malformed."""
    path = Path(path)
    fp = _read_json(path, "dataset fingerprint")
    missing = [k for k in ("median_spacing", "foreground") if k not in fp]
    if missing:
        raise DataError(f"{path}: fingerprint lacks keys {missing}; expected the output of compute_fingerprint")
    return fp


# ------------------------------------------------------------------------------------------------------ preprocessor
def _resample_linear(array: np.ndarray | torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Trilinear resampling of ``(C, *spatial)`` to ``(C, *shape)`` (pixel centres aligned: align_corners=False)."""
    t = torch.as_tensor(array)
    if not t.is_floating_point():
        t = t.float()
    if tuple(t.shape[1:]) == tuple(shape):
        return t
    return F.interpolate(t[None], size=tuple(int(s) for s in shape), mode="trilinear", align_corners=False)[0]


class CTPreprocessor:
    """Clip to the foreground percentiles, z-score with the foreground mean/std, resample to ``target_spacing``.

    Args:
        clip_low: lower clip bound (fingerprint foreground 0.5 percentile), HU.
        clip_high: upper clip bound (fingerprint foreground 99.5 percentile), HU.
        mean: global foreground mean, HU.
        std: global foreground std, HU; values below 1e-8 are treated as 1e-8 (constant-intensity guard).
        target_spacing: voxel size to resample to, mm, in array axis order (slice axis first for KiTS19).
        image_order: image interpolation: 1 trilinear (torch, default), 3 cubic (scipy), 0 nearest.
        orientation: axis codes of the training data (the fingerprint's ``orientation``, e.g. ``("I", "P", "L")``):
            every image is brought to it by an exact permutation/flip before :meth:`preprocess` (see
            :meth:`reorientation`) and its prediction mapped back; ``None`` keeps arrays as stored (checkpoints
            written before orientation was recorded).
    """

    def __init__(
        self,
        clip_low: float,
        clip_high: float,
        mean: float,
        std: float,
        target_spacing: Sequence[float] = PAPER_TARGET_SPACING,
        image_order: int = 1,
        orientation: Sequence[str] | None = None,
    ) -> None:
        if clip_high < clip_low:
            raise ValueError(f"clip_high={clip_high} < clip_low={clip_low}")
        if image_order not in (0, 1, 3):
            raise ValueError(f"image_order={image_order}: expected 0 (nearest), 1 (linear) or 3 (cubic)")
        if len(target_spacing) != 3 or min(target_spacing) <= 0:
            raise ValueError(f"target_spacing={tuple(target_spacing)}: expected 3 positive voxel sizes in mm")
        self.clip_low = float(clip_low)
        self.clip_high = float(clip_high)
        self.mean = float(mean)
        self.std = float(std)
        self.target_spacing = tuple(float(s) for s in target_spacing)
        self.image_order = int(image_order)
        self.orientation = None if orientation is None else check_axis_codes(orientation)

    @classmethod
    def from_fingerprint(
        cls,
        fingerprint: dict[str, Any],
        target_spacing: Sequence[float] | None = PAPER_TARGET_SPACING,
        image_order: int = 1,
    ) -> CTPreprocessor:
        """Build from a fingerprint (with its training ``orientation``); ``target_spacing=None`` takes the
        fingerprint's median spacing."""
        fg = fingerprint["foreground"]
        spacing = fingerprint["median_spacing"] if target_spacing is None else target_spacing
        orientation = fingerprint.get("orientation")
        return cls(
            fg["percentile_00_5"], fg["percentile_99_5"], fg["mean"], fg["std"], spacing, image_order, orientation
        )

    # -- serialisation
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON dict of the parameters (stored in checkpoints and ``preprocessor.json``)."""
        return {
            "clip_low": self.clip_low,
            "clip_high": self.clip_high,
            "mean": self.mean,
            "std": self.std,
            "target_spacing": list(self.target_spacing),
            "image_order": self.image_order,
            "label_order": 0,
            "orientation": None if self.orientation is None else list(self.orientation),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CTPreprocessor:
        """Inverse of :meth:`to_dict`; a dict without ``orientation`` (older checkpoints) keeps arrays as stored."""
        try:
            return cls(
                d["clip_low"],
                d["clip_high"],
                d["mean"],
                d["std"],
                d["target_spacing"],
                d["image_order"],
                d.get("orientation"),
            )
        except KeyError as e:
            raise DataError(
                f"preprocessor state lacks key {e}; expected the output of CTPreprocessor.to_dict"
            ) from None

    def params_hash(self) -> str:
        """Stable hash of the parameters (keys the preprocessing cache)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    def __repr__(self) -> str:
        return f"CTPreprocessor({', '.join(f'{k}={v}' for k, v in self.to_dict().items())})"

    # -- forward
    def reorientation(self, affine: np.ndarray, shape: Sequence[int], name: object = "image") -> Reorientation:
        """The exact permutation/flip from an image's stored array (``affine``, spatial ``shape``) to the training
        orientation; apply it before :meth:`preprocess` and undo it on the label map :meth:`restore` returns."""
        return Reorientation.to_codes(affine, shape, self.orientation, name=name)

    def new_shape(self, shape: Sequence[int], spacing: Sequence[float]) -> tuple[int, ...]:
        """Shape after resampling ``shape`` at ``spacing`` to the target spacing: ``round(shape * spacing / target)``."""
        return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, self.target_spacing, strict=True))

    def normalize(self, image: np.ndarray) -> np.ndarray:
        """Clip to ``[clip_low, clip_high]`` and z-score; float32, same shape."""
        out = np.clip(np.asarray(image, dtype=np.float32), self.clip_low, self.clip_high)
        out -= np.float32(self.mean)
        out /= np.float32(max(self.std, 1e-8))
        return out

    def preprocess(self, image: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
        """Normalise and resample one image.

        Args:
            image: ``(*spatial)`` raw intensities (HU).
            spacing: voxel size of ``image`` in mm, per array axis.

        Returns:
            float32 ``(1, *new_shape)`` with ``new_shape = self.new_shape(image.shape, spacing)``.
        """
        image = np.asarray(image)
        if image.ndim != 3:
            raise ValueError(f"image: expected a 3D array (*spatial), got shape {image.shape}")
        shape = self.new_shape(image.shape, spacing)
        x = self.normalize(image)[None]
        if shape == image.shape:
            return x
        if self.image_order == 1:
            return _resample_linear(torch.from_numpy(x), shape).numpy()
        if self.image_order == 0:
            return _resample_nearest(x, shape).astype(np.float32)
        from scipy import ndimage

        zoom = [n / o for n, o in zip(shape, image.shape)]
        return ndimage.zoom(x[0], zoom, order=3, mode="nearest", grid_mode=True, output=np.float32)[None]

    def preprocess_label(self, label: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
        """Resample a label map with nearest neighbour; uint8 ``(1, *new_shape)``."""
        label = np.asarray(label)
        shape = self.new_shape(label.shape, spacing)
        return _resample_nearest(label.astype(np.uint8, copy=False)[None], shape)

    def restore(self, probabilities: np.ndarray | torch.Tensor, original_shape: Sequence[int]) -> np.ndarray:
        """Map class probabilities (or logits) on the preprocessed grid back to a label map on the original grid.

        Args:
            probabilities: ``(K, *pre_shape)`` per-class scores (any device; resampled where they are).
            original_shape: ``(*spatial)`` of the raw image.

        Returns:
            uint8 label map of shape ``original_shape``: argmax after linear resampling of each class channel.

        The channels are resampled one at a time with a running maximum, so the original grid holds two score maps
        (and the labels) at any moment rather than ``K``: a 512x512x600 CT with 3 classes needs 1.3 GiB instead of
        2.5 GiB on the device. Ties go to the lower class, as with ``argmax``.
        """
        p = torch.as_tensor(probabilities)
        if p.ndim != len(original_shape) + 1:
            raise ValueError(
                f"probabilities: expected (K, *spatial) with {len(original_shape)} spatial axes, got {tuple(p.shape)}"
            )
        if p.dtype == torch.float16 and p.device.type == "cpu":
            p = p.float()
        best = _resample_linear(p[0:1], original_shape)[0]
        if tuple(p.shape[1:]) == tuple(original_shape):
            best = best.clone()  # no resampling: a view of the input, which must not be overwritten
        labels = torch.zeros(best.shape, dtype=torch.uint8, device=best.device)
        for k in range(1, p.shape[0]):
            score = _resample_linear(p[k : k + 1], original_shape)[0]
            labels[score > best] = k
            torch.maximum(best, score, out=best)
            del score
        return labels.cpu().numpy()


def _resample_nearest(array: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Nearest-neighbour resampling of ``(C, *spatial)`` (pixel-centre mapping), keeping the dtype."""
    if tuple(array.shape[1:]) == tuple(shape):
        return np.ascontiguousarray(array)
    t = torch.from_numpy(np.ascontiguousarray(array)).float()[None]
    out = F.interpolate(t, size=tuple(int(s) for s in shape), mode="nearest-exact")[0]
    return out.numpy().astype(array.dtype)


# ------------------------------------------------------------------------------------------------------------- cache
def cache_paths(cache_dir: str | os.PathLike, case_id: str) -> dict[str, Path]:
    """Paths of one cached case: ``image`` (``_img.npy``), ``label`` (``_seg.npy``), ``properties`` (``.json``)."""
    cache_dir = Path(cache_dir)
    return {
        "image": cache_dir / f"{case_id}_img.npy",
        "label": cache_dir / f"{case_id}_seg.npy",
        "properties": cache_dir / f"{case_id}_properties.json",
    }


def _case_key(case: KiTS19Case, preprocessor: CTPreprocessor, foreground_samples: int, seed: int) -> str:
    files = []
    for p in (case.image, case.label):
        if p is not None:
            st = Path(p).stat()
            files.append([str(p.name), st.st_size, st.st_mtime_ns])
    blob = json.dumps(
        {"v": CACHE_VERSION, "pre": preprocessor.to_dict(), "files": files, "n": foreground_samples, "seed": seed},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _preprocess_case(
    case: KiTS19Case, cache_dir: str, pre: dict[str, Any], key: str, foreground_samples: int, seed: int
) -> dict[str, Any]:
    preprocessor = CTPreprocessor.from_dict(pre)
    image, label, affine = load_kits19_case(case)
    original_shape = image.shape
    r = preprocessor.reorientation(affine, image.shape, name=case.image)
    image = r.apply(image)
    label = None if label is None else r.apply(label)
    spacing = r.apply_spacing(spacing_from_affine(affine))
    img = preprocessor.preprocess(image, spacing)
    paths = cache_paths(cache_dir, case.case_id)
    locations: dict[str, list] = {}
    if label is not None:
        seg = preprocessor.preprocess_label(label, spacing)
        for c in (1, 2):
            coords = np.argwhere(seg[0] == c)
            if len(coords) > foreground_samples:
                idx = _case_rng(seed, case.case_id, c).choice(len(coords), foreground_samples, replace=False)
                coords = coords[np.sort(idx)]
            locations[str(c)] = coords.astype(int).tolist()
        atomic_save_npy(paths["label"], seg)
    atomic_save_npy(paths["image"], img)
    props = {
        "case_id": case.case_id,
        "source_image": str(case.image),
        "original_shape": list(original_shape),
        "oriented_shape": list(image.shape),
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
    return _read_json(cache_paths(cache_dir, case_id)["properties"], f"preprocessed properties of {case_id}")


def preprocess_dataset(
    cases: Sequence[KiTS19Case],
    cache_dir: str | os.PathLike,
    preprocessor: CTPreprocessor,
    num_workers: int = 0,
    foreground_samples: int = 10_000,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, dict[str, Any]]:
    """Preprocess ``cases`` into ``cache_dir`` (skipping cases already cached with the same parameters).

    Args:
        cases: labelled and/or unlabelled cases.
        cache_dir: output folder (created).
        preprocessor: the preprocessing to apply.
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
    pre = preprocessor.to_dict()
    bar = tqdm(total=len(todo), desc="preprocess KiTS19", disable=not progress or not todo, unit="case")

    def done(props: dict[str, Any]) -> None:
        known[props["case_id"]] = props["cache_key"]
        atomic_write_text(manifest_path, json.dumps(manifest, indent=1))
        bar.update(1)

    try:
        if num_workers > 0 and len(todo) > 1:
            with _pool(min(num_workers, len(todo))) as pool:
                futures = [
                    pool.submit(_preprocess_case, c, str(cache_dir), pre, keys[c.case_id], foreground_samples, seed)
                    for c in todo
                ]
                for f in as_completed(futures):
                    done(f.result())
        else:
            for c in todo:
                done(_preprocess_case(c, str(cache_dir), pre, keys[c.case_id], foreground_samples, seed))
    finally:
        bar.close()
    return {c.case_id: load_properties(cache_dir, c.case_id) for c in cases}
