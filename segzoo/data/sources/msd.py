"""Medical Segmentation Decathlon tasks and MONAI datalists.

Decathlon (``TaskXX_Name/dataset.json``, Antonelli et al. 2022): ``modality`` (``{"0": "FLAIR", ...}``), ``labels``
(``{"0": "background", "1": "edema"}``: value -> name, the inverse of nnU-Net v2), ``numTraining``, ``training``
(``[{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}]``) and ``test`` (``["./imagesTs/x.nii.gz"]``);
a multi-modal image is one 4D NIfTI with the channels on its last axis. macOS ``._`` files (the tarballs hold them)
are ignored.

MONAI datalist (``monai.data.load_decathlon_datalist``): a JSON file with ``training`` (and optionally
``validation``, both labelled, and ``test``) lists of ``{"image": path or [paths, one per channel], "label": path}``,
paths relative to the file's folder (MONAI's default ``base_dir``) unless absolute. It may carry ``labels`` and
``modality`` / ``channel_names`` like a Decathlon dataset.json; without ``labels`` the label files are read once to
find the values (announced), without channel names each channel is ``"ch<i>"`` (per-case z-score).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from segzoo.data.io import DataError, read_json
from segzoo.data.sources.base import DatasetSource, ImageCase

__all__ = ["read_msd", "read_datalist"]

log = logging.getLogger(__name__)


def _channel_names(path: Path, meta: dict[str, Any]) -> list[str] | None:
    mapping = meta.get("channel_names", meta.get("modality"))
    if mapping is None:
        return None
    if not isinstance(mapping, dict) or not mapping:
        raise DataError(f"{path}: 'modality' must be a {{\"0\": name}} mapping")
    try:
        return [str(mapping[k]) for k in sorted(mapping, key=int)]
    except ValueError:
        raise DataError(f"{path}: 'modality' keys must be channel indices '0', '1', ...") from None


def _msd_labels(path: Path, labels: Any) -> dict[int, str]:
    if not isinstance(labels, dict) or not labels:
        raise DataError(f'{path}: \'labels\' must be a non-empty {{"0": "background", ...}} mapping')
    out = {}
    for k, v in labels.items():
        try:
            out[int(k)] = str(v)
        except ValueError:
            if isinstance(v, int):  # an nnU-Net style {name: value} mapping inside a datalist: accept it
                out[int(v)] = str(k)
            else:
                raise DataError(f"{path}: label key {k!r}: expected a label value ('0', '1', ...)") from None
    if 0 not in out:
        out[0] = "background"
    return dict(sorted(out.items()))


def _resolve(base: Path, entry: Any) -> tuple[Path, ...]:
    items = entry if isinstance(entry, list | tuple) else [entry]
    return tuple(Path(p) if Path(p).is_absolute() else (base / p) for p in items)


def _is_resource_fork(path: Path) -> bool:
    return path.name.startswith("._")


def _case_id(path: Path) -> str:
    from segzoo.data.io import strip_nifti_suffix

    return strip_nifti_suffix(path.name)


def _entries(
    path: Path,
    base: Path,
    items: Any,
    key: str,
    labelled: bool,
    n: int | None,
    four_d: bool,
    values,
    problems: list[str],
    dropped: list[str] | None = None,
) -> list[ImageCase]:
    """The cases a ``key`` list names; an entry left out gets its ``problems`` line and, when ``labelled``, its case
    id (``key[i]`` without an image) in ``dropped``."""

    def drop(case: str) -> None:
        if labelled and dropped is not None:
            dropped.append(case)

    if items is None:
        return []
    if not isinstance(items, list):
        raise DataError(f"{path}: '{key}' must be a list")
    cases, seen = [], set()
    for i, item in enumerate(items):
        if isinstance(item, str):
            item = {"image": item}
        if not isinstance(item, dict) or "image" not in item:
            problems.append(f"{path}: {key}[{i}] has no 'image'")
            drop(f"{key}[{i}]")
            continue
        images = _resolve(base, item["image"])
        if any(_is_resource_fork(p) for p in images):
            continue
        label = _resolve(base, item["label"])[0] if labelled and item.get("label") else None
        if labelled and label is None:
            problems.append(f"{path}: {key}[{i}] ({images[0].name}) has no 'label'")
            drop(_case_id(images[0]))
            continue
        missing = [p for p in (*images, label) if p is not None and not p.is_file()]
        if missing:
            problems.append(f"{missing[0]}: missing (listed in {path.name} '{key}'[{i}])")
            drop(_case_id(images[0]))
            continue
        case = _case_id(images[0])
        if case.endswith("_0000") and len(images) > 1:
            case = case[:-5]
        if case in seen:
            case = f"{case}_{i}"
        seen.add(case)
        channels = n if n is not None else (len(images) if not four_d else 1)
        if not four_d and n is not None and len(images) != n:
            problems.append(f"{images[0]}: {key}[{i}] lists {len(images)} channel files; {n} channels declared")
            drop(case)
            continue
        cases.append(ImageCase(case, images, label, values, four_d=four_d and len(images) == 1, num_channels=channels))
    return cases


def read_msd(root: str | Path) -> DatasetSource:
    """Read a Decathlon task folder (no voxel is read; listing problems in ``source.problems``)."""
    root = Path(root)
    meta_path = root / "dataset.json"
    meta = read_json(meta_path, "Decathlon dataset.json")
    if not isinstance(meta, dict):
        raise DataError(f"{meta_path}: expected a JSON object")
    names = _channel_names(meta_path, meta)
    if names is None:
        raise DataError(f'{meta_path}: \'modality\' missing; expected e.g. {{"0": "CT"}}')
    if "labels" not in meta:
        raise DataError(f"{meta_path}: 'labels' missing")
    labels = _msd_labels(meta_path, meta["labels"])
    values = tuple(sorted(labels))
    problems: list[str] = []
    dropped: list[str] = []
    training = _entries(
        meta_path, root, meta.get("training"), "training", True, len(names), True, values, problems, dropped
    )
    test = _entries(meta_path, root, meta.get("test"), "test", False, len(names), True, values, problems)
    num = meta.get("numTraining")
    return DatasetSource(
        root=root,
        kind="msd",
        name=str(meta.get("name", root.name)),
        channel_names=names,
        labels=labels,
        training=training,
        test=test,
        num_training=int(num) if isinstance(num, int) else None,
        problems=problems,
        dropped_training=dropped,
    )


def read_datalist(path: str | Path, base_dir: str | Path | None = None) -> DatasetSource:
    """Read a MONAI datalist JSON (``training`` / ``validation`` / ``test``); paths relative to ``base_dir``
    (default: the file's folder, as ``monai.data.load_decathlon_datalist``)."""
    path = Path(path)
    meta = read_json(path, "MONAI datalist")
    if not isinstance(meta, dict) or "training" not in meta:
        raise DataError(f'{path}: a MONAI datalist needs a \'training\' list of {{"image": ..., "label": ...}}')
    base = Path(base_dir) if base_dir is not None else path.parent
    names = _channel_names(path, meta)
    labels = _msd_labels(path, meta["labels"]) if "labels" in meta else None
    values = tuple(sorted(labels)) if labels else None
    problems: list[str] = []
    dropped: list[str] = []
    n = len(names) if names else None
    training = _entries(path, base, meta["training"], "training", True, n, True, values, problems, dropped)
    training += _entries(path, base, meta.get("validation"), "validation", True, n, True, values, problems, dropped)
    test = _entries(path, base, meta.get("test"), "test", False, n, True, values, problems)
    if names is None:
        first = training[0] if training else None
        count = first.num_channels if first is not None and not first.four_d else _header_channels(first)
        names = [f"ch{i}" for i in range(count)]
        training = [_with_channels(c, count) for c in training]
        test = [_with_channels(c, count) for c in test]
    if labels is None:
        labels = _scan_labels(path, training)
        training = [_with_values(c, tuple(sorted(labels))) for c in training]
    return DatasetSource(
        root=path,
        kind="datalist",
        name=str(meta.get("name", path.stem)),
        channel_names=names,
        labels=labels,
        training=training,
        test=test,
        problems=problems,
        dropped_training=dropped,
    )


def _header_channels(case: ImageCase | None) -> int:
    if case is None:
        return 1
    import nibabel as nib

    try:
        shape = nib.load(str(case.image)).shape
    except Exception as e:
        raise DataError(f"{case.image}: cannot read the NIfTI header ({type(e).__name__}: {e})") from None
    return int(shape[3]) if len(shape) > 3 else 1


def _with_channels(case: ImageCase, n: int) -> ImageCase:
    return ImageCase(case.case_id, case.images, case.label, case.label_values, case.four_d, n)


def _with_values(case: ImageCase, values: tuple[int, ...]) -> ImageCase:
    return ImageCase(case.case_id, case.images, case.label, values, case.four_d, case.num_channels)


def _scan_labels(path: Path, cases: list[ImageCase]) -> dict[int, str]:
    import numpy as np

    from segzoo.data.io import load_nifti

    log.warning(
        "%s: no 'labels' in the datalist; reading the %d label maps once to find their values", path, len(cases)
    )
    found: set[int] = {0}
    for c in cases:
        if c.label is not None:
            found |= {int(v) for v in np.unique(load_nifti(c.label)[0])}
    return {v: ("background" if v == 0 else f"label_{v}") for v in sorted(found)}
