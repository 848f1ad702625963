"""Dataset sources: one reader per on-disk layout, each yielding :class:`ImageCase` objects in a
:class:`DatasetSource`. :func:`open_source` tells the layout from the path:

- a folder with an nnU-Net v2 ``dataset.json`` (``channel_names`` / ``file_ending``): :func:`read_nnunet`;
- a folder with a Decathlon ``dataset.json`` (``modality`` + ``training``): :func:`read_msd`;
- a ``.json`` file: a MONAI datalist, :func:`read_datalist`;
- a folder of ``case_XXXXX/imaging.nii.gz``: KiTS19, :func:`read_kits19`;
- a folder of BraTS case folders ``<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz`` (also under 2018's ``HGG/`` and
  ``LGG/``): :func:`read_brats`;
- the CHAOS MR layout ``Train_Sets/MR/<id>/{T1DUAL,T2SPIR}/`` (or ``MR/<id>/...``, ``<id>/...``; DICOM series + PNG
  masks): :func:`read_chaos`, its T2-SPIR sequence.
"""

from __future__ import annotations

import os
from pathlib import Path

from segzoo.data.io import DataError, read_json
from segzoo.data.sources.base import DatasetSource, ImageCase, check_same_grid
from segzoo.data.sources.brats import is_brats, read_brats
from segzoo.data.sources.chaos import is_chaos, read_chaos
from segzoo.data.sources.msd import read_datalist, read_msd
from segzoo.data.sources.nnunet import group_channel_files, is_nnunet_json, read_nnunet

__all__ = [
    "DatasetSource",
    "ImageCase",
    "check_same_grid",
    "group_channel_files",
    "open_source",
    "read_brats",
    "read_chaos",
    "read_datalist",
    "read_kits19",
    "read_msd",
    "read_nnunet",
]


def read_kits19(root: str | os.PathLike) -> DatasetSource:
    """A KiTS19 folder (``case_XXXXX/imaging.nii.gz`` + ``segmentation.nii.gz``) as a source: one CT channel,
    labels background / kidney / tumour; cases without a segmentation are its test cases."""
    from segzoo.data.kits19 import KITS19_LABELS, find_kits19_cases

    root = Path(root)
    values = tuple(sorted(KITS19_LABELS))
    cases = [ImageCase(c.case_id, (c.image,), c.label, values) for c in find_kits19_cases(root)]
    return DatasetSource(
        root=root,
        kind="kits19",
        name="KiTS19",
        channel_names=["CT"],
        labels=dict(KITS19_LABELS),
        training=[c for c in cases if c.label is not None],
        test=[c for c in cases if c.label is None],
        labels_declared_by="the KiTS19 labels",
    )


def open_source(path: str | os.PathLike) -> DatasetSource:
    """The dataset at ``path`` in whichever supported layout it is (see the module doc).

    Raises:
        DataError: no such path, or a path in none of the layouts (the message lists what was expected).
    """
    path = Path(path)
    if path.is_file():
        if path.suffix.lower() != ".json":
            raise DataError(f"{path}: expected a dataset folder or a MONAI datalist .json file")
        return read_datalist(path)
    if not path.is_dir():
        raise DataError(f"{path}: no such dataset folder or datalist file")
    meta_path = path / "dataset.json"
    if meta_path.is_file():
        meta = read_json(meta_path, "dataset.json")
        if isinstance(meta, dict) and is_nnunet_json(meta):
            return read_nnunet(path)
        if isinstance(meta, dict) and "training" in meta:
            return read_msd(path)
        raise DataError(
            f"{meta_path}: neither nnU-Net v2 (channel_names, labels, file_ending) nor Decathlon (modality, labels, "
            "training) dataset.json"
        )
    if any(p.is_dir() and p.name.startswith("case_") for p in path.iterdir()):
        return read_kits19(path)
    if is_brats(path):
        return read_brats(path)
    if is_chaos(path):
        return read_chaos(path)
    raise DataError(
        f"{path}: not a dataset: expected dataset.json (nnU-Net v2 raw or Decathlon), case_XXXXX/ folders (KiTS19), "
        "<case>/<case>_flair.nii.gz folders (BraTS, also under HGG/ and LGG/), Train_Sets/MR/<id>/T2SPIR/ (CHAOS), "
        "or pass a MONAI datalist .json file"
    )
