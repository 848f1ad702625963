"""A DICOM series (a CT from a hospital system) as a case to predict: :class:`DicomSeriesCase`.

The series is read by :func:`segzoo.data.dicom_series.load_dicom_series` (true geometry, refusals of what is no
volume); the label map is written on its grid ``(columns, rows, slices)`` and, for a DICOM Segmentation, as frames on
its slices in volume order.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segzoo.data.sources.base import CaseOutput, ImageCase

__all__ = ["DicomSeriesCase", "series_output_name"]


def series_output_name(folder: str | os.PathLike, series_uid: str | None = None) -> str:
    """``<folder name>`` (``<folder name>_<UID>`` for a series picked from a study folder)."""
    return Path(folder).resolve().name + (f"_{series_uid}" if series_uid else "")


@dataclass(frozen=True)
class DicomSeriesCase(ImageCase):
    """One DICOM series, read once (:meth:`read`); ``images`` is its folder."""

    series: Any = field(default=None, compare=False, repr=False)

    @classmethod
    def read(cls, folder: str | os.PathLike, series_uid: str | None = None) -> DicomSeriesCase:
        """Read the series in ``folder`` (or the one ``series_uid`` picks from a study folder).

        Raises:
            DataError: one line (a study folder without ``series_uid`` lists its series below it) for what cannot be
                read as a volume; see :func:`~segzoo.data.dicom_series.load_dicom_series`.
        """
        from segzoo.data.dicom_series import load_dicom_series

        series = load_dicom_series(folder, series_uid)
        return cls(series_output_name(folder, series_uid), (Path(folder),), series=series)

    @property
    def is_dicom(self) -> bool:
        return True

    @property
    def files(self) -> tuple[Path, ...]:
        return tuple(self.series.files)

    def load_image(self) -> tuple[np.ndarray, np.ndarray]:
        """``(image float32 (1, columns, rows, slices), affine)``."""
        return self.series.image[None], self.series.affine

    def prediction_output(self, labels: np.ndarray, affine: np.ndarray, dicom_seg: bool = False) -> CaseOutput:
        frames = np.asarray(labels).transpose(2, 1, 0)  # (columns, rows, slices) -> frames (slices, rows, columns)
        return CaseOutput(labels, affine, None, frames, self.series.headers, tuple(self.series.files))
