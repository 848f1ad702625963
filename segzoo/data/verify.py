"""``segzoo verify``: the integrity check of a dataset before anything is written, one line per problem and case.

What it checks follows nnU-Net v2's ``verify_dataset_integrity`` (and accepts what it accepts): the cases listed or
found match ``numTraining``; every case has each declared channel; channels and label share a shape and voxel
spacing (another origin or direction only warns, as in nnU-Net); label values are declared (dataset.json, the
datalist, or the fixed labels of a KiTS19 / BraTS / CHAOS layout) and the declared values are consecutive (0, 1, 2,
...); no NaN. segzoo also refuses infinite intensities and unreadable or
truncated files, and names the file in every line. The same check runs at the start of ``segzoo fit`` on a generic
dataset (:class:`segzoo.data.datamodule.PatchDataModule`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from segzoo.data.io import DataError, load_nifti
from segzoo.data.sources import DatasetSource, ImageCase, open_source
from segzoo.data.sources.base import grid_difference

__all__ = ["VerifyReport", "labels_declared_by", "verify_case", "verify_dataset", "verify_source"]


@dataclass
class VerifyReport:
    """Errors (the dataset cannot be trained on as it is) and warnings, one line each naming the file."""

    source: DatasetSource | None
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    cases_checked: int = 0

    @property
    def ok(self) -> bool:
        return not self.errors

    def raise_if_bad(self) -> None:
        """One :class:`DataError`: the first error and how many more (``segzoo verify`` lists them)."""
        if self.errors:
            root = self.source.root if self.source is not None else "the dataset"
            more = (
                f" (+{len(self.errors) - 1} more; `segzoo verify {root}` lists every one)"
                if len(self.errors) > 1
                else ""
            )
            raise DataError(self.errors[0] + more)


def verify_case(case: ImageCase, labels_declared_by: str = "dataset.json") -> tuple[list[str], list[str]]:
    """``(errors, warnings)`` of one case: every file read, grids compared, label values checked.

    Args:
        case: the case.
        labels_declared_by: what declares ``case.label_values``, as an undeclared value's line names it
            (:func:`labels_declared_by`).
    """
    errors: list[str] = []
    warnings: list[str] = []
    if type(case).load_image is not ImageCase.load_image:  # not NIfTI (CHAOS: DICOM + PNG): its own reader checks it
        try:
            label = case.load()[1]
        except DataError as e:
            return [str(e)], []
        if label is not None and not label.any():
            warnings.append(f"{case.label}: only background (0); intentional? (nnU-Net warns too)")
        return errors, warnings
    ref = None
    if case.four_d:
        try:
            image, affine = case.load_image()
        except DataError as e:
            return [str(e)], []
        ref = (image.shape[1:], affine, case.image)
    else:
        for i, path in enumerate(case.images):
            try:
                data, affine = load_nifti(path, dtype=np.float32)
            except DataError as e:
                errors.append(str(e))
                continue
            if data.ndim != 3:
                errors.append(f"{path}: channel {i} of case '{case.case_id}': expected a 3D volume, got {data.shape}")
                continue
            if ref is None:
                ref = (data.shape, affine, path)
                continue
            err, warn = grid_difference(ref[0], ref[1], data.shape, affine)
            if err:
                errors.append(f"{path}: channel {i} of case '{case.case_id}': {err} of {ref[2].name}")
            if warn:
                warnings.append(f"{path}: channel {i} of case '{case.case_id}': {warn} of {ref[2].name}")
    if case.label is None:
        return errors, warnings
    try:
        label, label_affine = load_nifti(case.label)
    except DataError as e:
        return [*errors, str(e)], warnings
    if ref is not None:
        err, warn = grid_difference(ref[0], ref[1], label.shape, label_affine)
        if err:
            errors.append(f"{case.label}: label of case '{case.case_id}': {err} of its image")
        if warn:
            warnings.append(f"{case.label}: label of case '{case.case_id}': {warn} of its image")
    if not np.issubdtype(label.dtype, np.integer) and not np.array_equal(label, np.round(label)):
        errors.append(f"{case.label}: non-integer label values; expected class indices")
        return errors, warnings
    values = sorted(int(v) for v in np.unique(label))
    if case.label_values is not None:
        extra = [v for v in values if v not in case.label_values]
        if extra:
            errors.append(
                f"{case.label}: label values {extra} not declared in {labels_declared_by} {list(case.label_values)}"
            )
    if values == [0]:
        warnings.append(f"{case.label}: only background (0); intentional? (nnU-Net warns too)")
    return errors, warnings


def verify_source(source: DatasetSource, num_workers: int = 0, cases: list[ImageCase] | None = None) -> VerifyReport:
    """Check a listed dataset; ``cases`` (default: training and test cases) limits the per-case checks."""
    report = VerifyReport(source, errors=list(source.problems))
    # a case the reader dropped has its own problem line; it still counts as found, as in nnU-Net
    found = len(source.training) + len(source.dropped_training)
    if source.num_training is not None and source.num_training != found:
        report.errors.append(
            f"{_meta_file(source)}: numTraining is {source.num_training} but {found} training cases were found"
        )
    values = sorted(source.labels)
    if values != list(range(len(values))):
        report.errors.append(
            f"{_meta_file(source)}: label values {values} are not consecutive 0, 1, 2, ... (nnU-Net requires it)"
        )
    if not source.training:
        report.errors.append(f"{source.root}: no labelled training case found")
    todo = list(source.training) + list(source.test) if cases is None else list(cases)
    declared_by = labels_declared_by(source)
    if num_workers > 0 and len(todo) > 1:
        from segzoo.utils import spawn_pool

        with spawn_pool(min(num_workers, len(todo))) as pool:
            results = list(pool.map(verify_case, todo, [declared_by] * len(todo)))
    else:
        results = [verify_case(c, declared_by) for c in todo]
    for errs, warns in results:
        report.errors += errs
        report.warnings += warns
    report.cases_checked = len(todo)
    return report


def labels_declared_by(source: DatasetSource) -> str:
    """What declares a source's label values, as a problem line names it: the reader's ``labels_declared_by``
    (``"the BraTS labels"``), else its metadata file (``dataset.json``, the datalist's name)."""
    return source.labels_declared_by or _meta_file(source).name


def _meta_file(source: DatasetSource) -> Path:
    return source.root if source.root.is_file() else source.root / "dataset.json"


def verify_dataset(path: str | os.PathLike, num_workers: int = 0) -> VerifyReport:
    """Open the dataset at ``path`` (any layout of :func:`segzoo.data.sources.open_source`) and check it.

    A dataset that cannot even be listed (no dataset.json, invalid JSON) gives a report with that one error.
    """
    try:
        source = open_source(path)
    except DataError as e:
        return VerifyReport(None, errors=[str(e)])
    return verify_source(source, num_workers=num_workers)
