"""nnU-Net v2 raw datasets: ``DatasetXXX_Name/{dataset.json, imagesTr, labelsTr, imagesTs}``.

Reference: nnU-Net v2 ``documentation/dataset_format.md``. ``dataset.json`` holds ``channel_names`` (``{"0": "CT"}``;
nnU-Net's older ``modality`` is read too), ``labels`` (``{"background": 0, "kidney": 1}``; a list value is a region,
``{"whole tumour": [1, 2, 3]}``, with ``regions_class_order``), ``numTraining`` and ``file_ending``, and optionally
``dataset`` (``{case: {"images": [...], "label": ...}}``, paths relative to the dataset folder) instead of the
folders. Channel files are ``imagesTr/{case}_{XXXX}{file_ending}`` (XXXX = the 4-digit channel index), labels
``labelsTr/{case}{file_ending}``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from segzoo.data.io import DataError, read_json
from segzoo.data.sources.base import DatasetSource, ImageCase

__all__ = ["read_nnunet", "is_nnunet_json", "group_channel_files", "parse_labels"]

_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


def is_nnunet_json(meta: dict[str, Any]) -> bool:
    """nnU-Net v2's dataset.json (``channel_names`` + ``file_ending``), as opposed to the Decathlon's."""
    return "channel_names" in meta or ("file_ending" in meta and "training" not in meta)


def parse_labels(path: Path, labels: Any) -> tuple[dict[int, str], dict[str, list[int]] | None]:
    """``({value: name}, regions or None)`` from nnU-Net's ``{name: value | [values]}``.

    As nnU-Net's ``LabelManager``: once one label is a list of several values, every foreground label is a region (an
    int = a one-value region), in the order dataset.json lists them (``regions_class_order`` follows that order).
    Every value a label map may hold gets a name; a value that only occurs inside regions is named after the smallest
    region that holds it.
    """
    if not isinstance(labels, dict) or not labels:
        raise DataError(f"{path}: 'labels' must be a non-empty {{name: value}} mapping")
    members: dict[str, list[int]] = {}
    for name, value in labels.items():
        if isinstance(value, list | tuple):
            if not value or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
                raise DataError(f"{path}: label '{name}': a region must be a non-empty list of integer values")
            members[str(name)] = [int(v) for v in value]
        elif isinstance(value, int) and not isinstance(value, bool):
            members[str(name)] = [int(value)]
        else:
            raise DataError(f"{path}: label '{name}' = {value!r}; expected an integer value or a list (region)")
    values: dict[int, str] = {m[0]: name for name, m in members.items() if len(m) == 1}
    if 0 not in values:
        raise DataError(f"{path}: 'labels' must declare the background as value 0 (nnU-Net's convention)")
    if not any(len(m) > 1 for m in members.values()):
        return dict(sorted(values.items())), None
    regions = {name: m for name, m in members.items() if m != [0]}
    for name, m in sorted(regions.items(), key=lambda kv: len(kv[1])):
        for v in m:
            values.setdefault(v, name)
    return dict(sorted(values.items())), regions


def group_channel_files(folder: Path, file_ending: str) -> tuple[dict[str, dict[int, Path]], list[Path]]:
    """``({case: {channel: path}}, files that do not follow {case}_{XXXX}{file_ending})`` of a folder.

    macOS ``._`` resource files and hidden files are ignored.
    """
    cases: dict[str, dict[int, Path]] = {}
    odd = []
    for p in sorted(folder.iterdir()):
        if not p.is_file() or p.name.startswith("."):
            continue
        if not p.name.endswith(file_ending):
            continue
        m = _CHANNEL.match(p.name[: -len(file_ending)])
        if m is None:
            odd.append(p)
            continue
        cases.setdefault(m["case"], {})[int(m["channel"])] = p
    return cases, odd


def _channel_cases(
    folder: Path,
    file_ending: str,
    channels: int,
    labels_dir: Path | None,
    label_values,
    problems: list[str],
    dropped: list[str] | None = None,
) -> list[ImageCase]:
    """The cases of an images folder; a case left out gets its ``problems`` line and, in a training folder
    (``labels_dir`` given), its id in ``dropped``."""
    grouped, odd = group_channel_files(folder, file_ending) if folder.is_dir() else ({}, [])
    for p in odd:
        problems.append(f"{p}: not named {{case}}_{{XXXX}}{file_ending} (XXXX = the 4-digit channel index)")
    ids = set(grouped)
    if labels_dir is not None and labels_dir.is_dir():
        for p in sorted(labels_dir.iterdir()):
            if p.is_file() and not p.name.startswith(".") and p.name.endswith(file_ending):
                case = p.name[: -len(file_ending)]
                if case not in ids:
                    problems.append(f"{p}: label of case '{case}' has no image {folder}/{case}_0000{file_ending}")
    cases = []
    for case in sorted(grouped):
        files = grouped[case]
        missing = [c for c in range(channels) if c not in files]
        extra = [c for c in files if c >= channels]
        if missing:
            problems.append(
                f"{folder / f'{case}_{missing[0]:04d}{file_ending}'}: case '{case}' lacks channel(s) {missing} "
                f"of the {channels} dataset.json declares"
            )
            if labels_dir is not None and dropped is not None:
                dropped.append(case)
            continue
        if extra:
            problems.append(
                f"{files[extra[0]]}: case '{case}' has channel {extra[0]}; dataset.json declares {channels}"
            )
        label = None
        if labels_dir is not None:
            label = labels_dir / f"{case}{file_ending}"
            if not label.is_file():
                problems.append(f"{label}: missing; case '{case}' has images in {folder.name} but no label")
                if dropped is not None:
                    dropped.append(case)
                continue
        images = tuple(files[c] for c in range(channels))
        cases.append(ImageCase(case, images, label, label_values, num_channels=channels))
    return cases


def read_nnunet(root: str | Path) -> DatasetSource:
    """Read an nnU-Net v2 raw dataset folder (no voxel is read; problems are listed in ``source.problems``).

    Raises:
        DataError: no or invalid dataset.json, or one without ``channel_names`` / ``labels``.
    """
    root = Path(root)
    meta_path = root / "dataset.json"
    meta = read_json(meta_path, "nnU-Net dataset.json")
    if not isinstance(meta, dict):
        raise DataError(f"{meta_path}: expected a JSON object")
    channel_map = meta.get("channel_names", meta.get("modality"))
    if not isinstance(channel_map, dict) or not channel_map:
        raise DataError(f'{meta_path}: \'channel_names\' missing; expected e.g. {{"0": "CT"}}')
    try:
        channel_names = [str(channel_map[k]) for k in sorted(channel_map, key=int)]
    except ValueError:
        raise DataError(f"{meta_path}: 'channel_names' keys must be channel indices '0', '1', ...") from None
    if "labels" not in meta:
        raise DataError(f'{meta_path}: \'labels\' missing; expected e.g. {{"background": 0, "organ": 1}}')
    labels, regions = parse_labels(meta_path, meta["labels"])
    file_ending = str(meta.get("file_ending", ".nii.gz"))
    if file_ending.lower() not in (".nii.gz", ".nii"):
        raise DataError(f"{meta_path}: file_ending {file_ending!r}: segzoo reads NIfTI (.nii.gz, .nii)")
    values = tuple(sorted(labels))
    problems: list[str] = []
    dropped: list[str] = []
    n = len(channel_names)
    if isinstance(meta.get("dataset"), dict):
        training = []
        for case, entry in sorted(meta["dataset"].items()):
            images = tuple(_under(root, p) for p in entry.get("images", []))
            label = _under(root, entry["label"]) if entry.get("label") else None
            if len(images) != n:
                problems.append(f"{meta_path}: case '{case}' lists {len(images)} images; {n} channels declared")
                dropped.append(str(case))
                continue
            missing = [p for p in (*images, label) if p is not None and not p.is_file()]
            if missing:
                problems.append(f"{missing[0]}: missing (listed for case '{case}' in {meta_path.name})")
                dropped.append(str(case))
                continue
            training.append(ImageCase(str(case), images, label, values, num_channels=n))
    else:
        training = _channel_cases(root / "imagesTr", file_ending, n, root / "labelsTr", values, problems, dropped)
        if not (root / "imagesTr").is_dir():
            problems.append(f"{root / 'imagesTr'}: missing; an nnU-Net raw dataset keeps its training images there")
    test = (
        _channel_cases(root / "imagesTs", file_ending, n, None, values, problems)
        if (root / "imagesTs").is_dir()
        else []
    )
    order = meta.get("regions_class_order")
    num_training = meta.get("numTraining")
    if regions and order is None:
        problems.append(f"{meta_path}: region labels need 'regions_class_order' (nnU-Net's convention)")
    return DatasetSource(
        root=root,
        kind="nnunet",
        name=str(meta.get("name", root.name)),
        channel_names=channel_names,
        labels=labels,
        training=training,
        test=test,
        num_training=int(num_training) if isinstance(num_training, int) else None,
        file_ending=file_ending,
        regions=regions,
        regions_class_order=[int(v) for v in order] if order else None,
        problems=problems,
        dropped_training=dropped,
    )


def _under(root: Path, path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else root / p
