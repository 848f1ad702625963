"""BraTS 2018-2021 folders as a source: four MR channels per case and the tumour labels.

Dataset: Menze et al., IEEE TMI 2015; Bakas et al., arXiv:1811.02629. The layout is :mod:`segzoo.data.brats`'s::

    <root>/<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz          (2019-2021; .nii too, any letter case)
    <root>/{HGG,LGG}/<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz  (2018)

The seg files hold 0/1/2/4 (:data:`~segzoo.data.brats.BRATS_LABELS`); :meth:`BratsImageCase.load` returns class
indices 0/1/2/3 (enhancing tumour 4 -> 3), the classes the nets train on and what the source's ``labels`` declare:
as nnU-Net's BraTS conversion, so the declared values are consecutive (``segzoo verify``) and one output channel
per class holds every value. ``segzoo verify`` checks the seg files' own values against 0/1/2/4.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segzoo.data.brats import (
    BRATS_CLASS_NAMES,
    BRATS_LABELS,
    BRATS_MODALITIES,
    brats_file,
    brats_label_to_index,
    find_brats_cases,
)
from segzoo.data.sources.base import DatasetSource, ImageCase

__all__ = ["BRATS_CHANNEL_NAMES", "BratsImageCase", "brats_cases", "is_brats", "read_brats"]

# one name per modality of BRATS_MODALITIES; none is "CT", so planning z-scores each per case (normalization_for)
BRATS_CHANNEL_NAMES = ("T1", "T1ce", "T2", "FLAIR")


@dataclass(frozen=True)
class BratsImageCase(ImageCase):
    """A BraTS case: the four modality files and the seg file (0/1/2/4 on disk, checked against ``label_values``);
    :meth:`load_label` returns class indices 0..3."""

    @property
    def output_name(self) -> str:
        """``<case>_seg``, the name of a BraTS case's label file."""
        return f"{self.case_id}_seg"

    def load_label(self, shape: Sequence[int], affine: np.ndarray) -> np.ndarray:
        """The seg checked as any label map (grid, integer values in 0/1/2/4), as class indices 0..3, uint8."""
        return brats_label_to_index(super().load_label(shape, affine))


def _candidates(root: Path) -> list[Path]:
    """The folders at depth 1 and 2 (flat layout, 2018's HGG/LGG), as :func:`find_brats_cases` searches them."""
    top = [d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")]
    return top + [d for parent in top for d in parent.iterdir() if d.is_dir() and not d.name.startswith(".")]


def is_brats(root: str | os.PathLike) -> bool:
    """Whether ``root`` holds a BraTS case folder (``<case>/<case>_flair.nii[.gz]``, also under ``HGG/``/``LGG/``)."""
    root = Path(root)
    return root.is_dir() and any(brats_file(d, "flair") is not None for d in _candidates(root))


def read_brats(root: str | os.PathLike) -> DatasetSource:
    """A BraTS folder as a source (no voxel is read; a case lacking a modality file is a ``problems`` line).

    Channels ``T1, T1ce, T2, FLAIR`` (z-scored per case by the planner), labels background / necrotic core / edema /
    enhancing tumour as class indices 0..3; cases without a seg file are the test cases.

    Raises:
        DataError: ``root`` missing, no case folder, or a case name twice (e.g. under HGG and LGG).
    """
    root = Path(root)
    problems: list[str] = []
    dropped: list[str] = []  # training cases (a seg file) left out
    training, test = [], []
    cases = find_brats_cases(root)
    # find_brats_cases knows a case by its flair file: a folder with the other files but no flair is a case lacking it
    found = {d.resolve() for d in cases}
    for d in _candidates(root):
        if d.resolve() not in found and any(brats_file(d, s) is not None for s in (*BRATS_MODALITIES, "seg")):
            problems.append(
                f"{d / f'{d.name}_flair.nii.gz'}: missing (nor .nii); case '{d.name}' lacks channel(s) ['FLAIR'] of the "
                "4 BraTS modalities"
            )
            if brats_file(d, "seg") is not None:
                dropped.append(d.name)
    for case_dir in cases:
        name = case_dir.name
        files = [brats_file(case_dir, m) for m in BRATS_MODALITIES]
        missing = [m for m, f in zip(BRATS_MODALITIES, files) if f is None]
        if missing:
            problems.append(
                f"{case_dir / f'{name}_{missing[0]}.nii.gz'}: missing (nor .nii); case '{name}' lacks channel(s) "
                f"{[BRATS_CHANNEL_NAMES[BRATS_MODALITIES.index(m)] for m in missing]} of the 4 BraTS modalities"
            )
            if brats_file(case_dir, "seg") is not None:
                dropped.append(name)
            continue
        case = BratsImageCase(
            name, tuple(files), brats_file(case_dir, "seg"), tuple(BRATS_LABELS), num_channels=len(files)
        )
        (test if case.label is None else training).append(case)
    return DatasetSource(
        root=root,
        kind="brats",
        name="BraTS",
        channel_names=list(BRATS_CHANNEL_NAMES),
        labels=dict(enumerate(BRATS_CLASS_NAMES)),
        training=training,
        test=test,
        problems=problems,
        dropped_training=dropped,
        labels_declared_by="the BraTS labels",  # the seg files' own values, before load_label maps 4 -> 3
    )


def brats_cases(root: str | os.PathLike) -> tuple[list[BratsImageCase], list[str]]:
    """The BraTS cases to predict under ``root`` and one line per case that cannot be: ``root`` itself when it is a
    case folder (``<case>/<case>_flair.nii.gz``), else every case of :func:`read_brats` (with or without a seg file).

    Raises:
        DataError: no BraTS case folder under ``root``.
    """
    root = Path(root)
    if brats_file(root, "flair") is None:
        source = read_brats(root)
        return [*source.training, *source.test], list(source.problems)
    files = [brats_file(root, m) for m in BRATS_MODALITIES]
    missing = [m for m, f in zip(BRATS_MODALITIES, files) if f is None]
    if missing:
        problem = f"{root / f'{root.name}_{missing[0]}.nii.gz'}: missing (nor .nii); a BraTS case needs " + ", ".join(
            BRATS_MODALITIES
        )
        return [], [problem]
    return [BratsImageCase(root.name, tuple(files), None, tuple(BRATS_LABELS), num_channels=len(files))], []
