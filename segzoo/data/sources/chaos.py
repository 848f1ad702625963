"""The CHAOS MR training set as a source: one MR sequence per case, DICOM series + PNG masks.

Dataset: Kavur et al., "CHAOS Challenge - combined (CT-MR) healthy abdominal organ segmentation", MedIA 2021. The
layout is :mod:`segzoo.data.chaos`'s (``root`` may hold ``Train_Sets``, be it, or be its ``MR`` folder)::

    Train_Sets/MR/<id>/T1DUAL/DICOM_anon/{InPhase,OutPhase}/*.dcm   T1DUAL/Ground/*.png
    Train_Sets/MR/<id>/T2SPIR/DICOM_anon/*.dcm                      T2SPIR/Ground/*.png

The files are not NIfTI, so a case is a :class:`ChaosImageCase` that reads them through
:func:`~segzoo.data.chaos.load_chaos_series` and :func:`~segzoo.data.chaos.load_chaos_case`: ``load()`` gives the
``(1, S, H, W)`` series with its DICOM-derived affine and the masks as class indices 0..4, like every other source.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segzoo.data.chaos import (
    CHAOS_CLASS_NAMES,
    CHAOS_SEQUENCES,
    _sequence_dirs,  # the one spelling of the sequence -> folders layout
    find_chaos_cases,
    load_chaos_case,
    load_chaos_series,
    natural_key,
    series_files,
)
from segzoo.data.io import DataError
from segzoo.data.sources.base import CaseOutput, DatasetSource, ImageCase

__all__ = ["ChaosImageCase", "chaos_series_cases", "is_chaos", "read_chaos"]


@dataclass(frozen=True)
class ChaosImageCase(ImageCase):
    """One sequence of one CHAOS case: ``images`` is its DICOM folder, ``label`` its ``Ground`` folder (``None``:
    a test case).

    Args:
        case_dir: the case folder ``.../MR/<id>``.
        sequence: ``"T2SPIR"``, ``"T1DUAL_InPhase"`` or ``"T1DUAL_OutPhase"``.
    """

    case_dir: Path | None = None
    sequence: str = "T2SPIR"

    @property
    def files(self) -> tuple[Path, ...]:
        """The slice files and masks (the preprocessing cache keys a case by their size and mtime)."""
        out = []
        for folder, suffix in ((self.images[0], ".dcm"), (self.label, ".png")):
            if folder is not None and folder.is_dir():
                out += sorted(
                    (p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == suffix), key=natural_key
                )
        return tuple(out)

    @property
    def output_name(self) -> str:
        """``<case>_<sequence>`` (a bare series folder: its own name, already ``<case>_<sequence>`` when it can be)."""
        return self.case_id if self.case_dir is None else f"{self.case_id}_{self.sequence}"

    @property
    def is_dicom(self) -> bool:
        return True

    @property
    def slice_files(self) -> tuple[Path, ...]:
        """The series' slice files in the order :func:`~segzoo.data.chaos.load_chaos_series` stacks them."""
        return tuple(series_files(self.images[0]))

    def prediction_output(self, labels: np.ndarray, affine: np.ndarray, dicom_seg: bool = False) -> CaseOutput:
        """``labels`` ``(S, H, W)`` as written: the NIfTI volume ``(columns, rows, slices)`` with its affine, as
        dcm2niix writes a DICOM series; the frames ``(S, H, W)`` on the slice files in file-name order (DICOM-SEG,
        Ground-style PNGs)."""
        files = self.slice_files
        sources = None
        if dicom_seg:
            import pydicom

            sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
        volume = np.ascontiguousarray(np.asarray(labels).transpose(2, 1, 0))
        return CaseOutput(volume, np.asarray(affine)[:, [2, 1, 0, 3]], None, labels, sources, files)

    def geometry(self) -> tuple[np.ndarray, tuple[int, ...]]:
        """``(affine, (S, H, W))`` of :meth:`load_image`'s volume from the slice headers alone (planning)."""
        from segzoo.data.chaos import chaos_series_geometry

        return chaos_series_geometry(self.images[0])

    def load_image(self) -> tuple[np.ndarray, np.ndarray]:
        """``(image float32 (1, S, H, W), affine)``: the series in file-name order, its affine from the DICOM tags."""
        series = load_chaos_series(self.images[0])
        return series.image[None], series.affine

    def load_label(self, shape: Sequence[int], affine: np.ndarray) -> np.ndarray:
        """The masks as class indices 0..4, uint8 ``(S, H, W)``, one per slice of the series.

        :func:`load_chaos_case` checks the mask count and sizes against the series (it reads the series once more:
        it keeps no affine, and the masks alone cannot be matched to their slices).
        """
        assert self.case_dir is not None and self.label is not None
        label = load_chaos_case(self.case_dir, self.sequence).label
        if label.shape != tuple(shape):
            raise DataError(f"{self.label}: masks of shape {label.shape} differ from the series {tuple(shape)}")
        return label


def is_chaos(root: str | os.PathLike) -> bool:
    """Whether ``root`` is in the CHAOS MR layout (``Train_Sets/MR/<id>/``, ``MR/<id>/`` or ``<id>/`` holding
    ``T1DUAL/`` or ``T2SPIR/``), as :func:`~segzoo.data.chaos.find_chaos_cases` accepts it."""
    root = Path(root)
    for mr in (root / "Train_Sets" / "MR", root / "MR", root):
        if mr.is_dir() and any(
            d.is_dir() and ((d / "T1DUAL").is_dir() or (d / "T2SPIR").is_dir()) for d in mr.iterdir()
        ):
            return True
    return False


def read_chaos(root: str | os.PathLike, sequence: str = "T2SPIR") -> DatasetSource:
    """A CHAOS MR folder as a source of one sequence (no voxel is read; a case without the sequence's DICOM folder is
    a ``problems`` line). One ``MR`` channel (z-scored per case), labels background / liver / right kidney / left
    kidney / spleen; a case without a ``Ground`` folder is a test case.

    Raises:
        ValueError: an unknown ``sequence``.
        DataError: ``root`` missing or holding no case, or a case folder without the sequence's ``T1DUAL`` /
            ``T2SPIR`` folder (:func:`~segzoo.data.chaos.find_chaos_cases`).
    """
    root = Path(root)
    problems: list[str] = []
    dropped: list[str] = []  # training cases (a Ground folder) left out
    training, test = [], []
    for case_dir in find_chaos_cases(root, sequence):
        dicom_dir, ground_dir = _sequence_dirs(case_dir, sequence)
        if not dicom_dir.is_dir():
            problems.append(f"{dicom_dir}: missing; case '{case_dir.name}' has no DICOM series for {sequence}")
            if ground_dir.is_dir():
                dropped.append(case_dir.name)
            continue
        label = ground_dir if ground_dir.is_dir() else None
        case = ChaosImageCase(
            case_dir.name,
            (dicom_dir,),
            label,
            tuple(range(len(CHAOS_CLASS_NAMES))),
            case_dir=case_dir,
            sequence=sequence,
        )
        (test if label is None else training).append(case)
    return DatasetSource(
        root=root,
        kind="chaos",
        name=f"CHAOS MR {sequence}",
        channel_names=["MR"],
        labels=dict(enumerate(CHAOS_CLASS_NAMES)),
        training=training,
        test=test,
        file_ending=".dcm",
        problems=problems,
        dropped_training=dropped,
        labels_declared_by="the CHAOS labels",
    )


def _series_name(folder: Path) -> str:
    """``<case>_<sequence>`` for a series folder in the CHAOS layout (``<id>/T2SPIR/DICOM_anon``,
    ``<id>/T1DUAL/DICOM_anon/InPhase``), else the folder name."""
    parts = folder.resolve().parts
    if len(parts) >= 3 and parts[-1] == "DICOM_anon" and parts[-2] in ("T1DUAL", "T2SPIR"):
        return f"{parts[-3]}_{parts[-2]}"
    if len(parts) >= 4 and parts[-2] == "DICOM_anon" and parts[-3] == "T1DUAL":
        return f"{parts[-4]}_T1DUAL_{parts[-1]}"
    return folder.name


def _has_dicom(folder: Path) -> bool:
    return folder.is_dir() and any(p.is_file() and p.suffix.lower() == ".dcm" for p in folder.iterdir())


def chaos_series_cases(root: str | os.PathLike, sequence: str | None = None) -> list[ChaosImageCase]:
    """The series to predict under ``root``: a DICOM series folder (``*.dcm``), or every case of a CHAOS
    ``Train_Sets`` / ``Test_Sets`` tree (its ``MR`` folder, or a folder of case folders) for ``sequence`` (``None``:
    every sequence found). Output names ``<case>_<sequence>`` (with ``Train_Sets_`` / ``Test_Sets_`` in front when
    ``root`` holds both). Returns ``[]`` when ``root`` holds none of these."""
    root = Path(root)
    if _has_dicom(root):
        return [ChaosImageCase(_series_name(root), (root,))]
    sequences = [sequence] if sequence in CHAOS_SEQUENCES else list(CHAOS_SEQUENCES)

    def cases_in(mr: Path) -> list[Path]:
        return [c for c in mr.iterdir() if c.is_dir() and ((c / "T1DUAL").is_dir() or (c / "T2SPIR").is_dir())]

    if cases_in(root):
        mr_folders = [root]
    else:
        mr_folders = [d for d in (root / "Train_Sets" / "MR", root / "Test_Sets" / "MR", root / "MR") if d.is_dir()]
        mr_folders = [d for d in mr_folders if cases_in(d)]
    found = []
    for mr in mr_folders:
        prefix = f"{mr.parent.name}_" if len(mr_folders) > 1 else ""  # Train_Sets_1_T2SPIR vs Test_Sets_1_T2SPIR
        for case_dir in sorted(cases_in(mr), key=natural_key):
            for seq in sequences:
                dicom_dir = _sequence_dirs(case_dir, seq)[0]
                if _has_dicom(dicom_dir):
                    found.append(
                        ChaosImageCase(f"{prefix}{case_dir.name}", (dicom_dir,), case_dir=case_dir, sequence=seq)
                    )
    return found
