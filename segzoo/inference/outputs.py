"""What ``segzoo infer`` writes per case: the NIfTI label map, the DICOM Segmentation, and per-label statistics.

:class:`CaseWriter` takes one case's label map with its grid (and, for DICOM inputs, the source slices) and writes the
outputs ``--output-format`` asks for, each atomically: ``OUT/<case>.nii.gz`` and/or ``OUT/<case>.dcm``. With ``stats``
it records, per label of the model, the voxel count and the volume in ml (count x voxel volume, the absolute
determinant of the affine), and :meth:`CaseWriter.write_stats` writes them for every case as ``OUT/stats.json`` and
``OUT/stats.csv``.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segzoo.data.io import DataError, save_nifti
from segzoo.utils import atomic_write_text

OUTPUT_FORMATS = ("nifti", "dicom-seg", "both")
CHAOS_PNG_STEP = 63  # Ground grey value of class k is 63 * k (liver 63, right kidney 126, left kidney 189, spleen 252)
STATS_FIELDS = ("case", "label", "name", "voxels", "volume_ml")


def voxel_volume_ml(affine: np.ndarray) -> float:
    """Volume of one voxel in ml: ``|det(affine[:3, :3])|`` mm^3 / 1000 (any axis order, oblique or not)."""
    return abs(float(np.linalg.det(np.asarray(affine, dtype=np.float64)[:3, :3]))) / 1000.0


def label_stats(
    labels: np.ndarray, affine: np.ndarray, label_values: Sequence[int], label_names: Sequence[str]
) -> list[dict[str, Any]]:
    """Voxel count and volume in ml of every label value (absent ones with 0), in ``label_values`` order.

    A value in ``labels`` that is not in ``label_values`` (nor 0) is listed after them as ``label_<value>``.
    """
    counts = np.bincount(np.asarray(labels, dtype=np.int64).ravel())
    ml = voxel_volume_ml(affine)
    values = [int(v) for v in label_values]
    names = list(label_names)
    for v in np.flatnonzero(counts).tolist():
        if v != 0 and v not in values:
            values.append(v)
            names.append(f"label_{v}")
    rows = []
    for v, name in zip(values, names):
        n = int(counts[v]) if v < len(counts) else 0
        rows.append({"label": v, "name": name, "voxels": n, "volume_ml": round(n * ml, 6)})
    return rows


def default_label_names(label_values: Sequence[int], known: dict[int, str] | None = None) -> list[str]:
    """``known[v]`` for each label value where known, else ``label_<v>``."""
    known = known or {}
    return [known.get(int(v), f"label_{int(v)}") for v in label_values]


@dataclass
class CaseWriter:
    """Writes each case's outputs into ``out_dir`` and collects the statistics.

    Args:
        out_dir: the output folder.
        output_format: ``"nifti"`` (``<case>.nii.gz``), ``"dicom-seg"`` (``<case>.dcm``) or ``"both"``.
        label_values: the model's label values, background excluded (e.g. ``(1, 2)``; BraTS ``(1, 2, 4)``).
        label_names: one name per label value (statistics, DICOM-SEG segment labels and codes).
        stats: collect per-label statistics (:meth:`write_stats`).
        model_name: how the DICOM-SEG names the algorithm (the checkpoint's name).
    """

    out_dir: Path
    output_format: str = "nifti"
    label_values: Sequence[int] = ()
    label_names: Sequence[str] = ()
    stats: bool = False
    model_name: str = "segzoo"
    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.output_format not in OUTPUT_FORMATS:
            raise ValueError(f"output_format must be one of {OUTPUT_FORMATS}, got {self.output_format!r}")
        if len(self.label_values) != len(self.label_names):
            raise ValueError(f"{len(self.label_values)} label values but {len(self.label_names)} label names")
        self.out_dir = Path(self.out_dir)

    @property
    def nifti(self) -> bool:
        return self.output_format in ("nifti", "both")

    @property
    def dicom_seg(self) -> bool:
        return self.output_format in ("dicom-seg", "both")

    def paths(self, name: str) -> list[Path]:
        """The files case ``name`` gets, NIfTI first."""
        return [self.out_dir / f"{name}.nii.gz"] * self.nifti + [self.out_dir / f"{name}.dcm"] * self.dicom_seg

    def finished(self, name: str) -> bool:
        """True when every output of ``name`` exists and reads back (``segzoo infer --continue`` skips it). With
        ``stats`` and no NIfTI output, never: the statistics of a skipped case are read from its NIfTI."""
        if self.stats and not self.nifti:
            return False
        return all(_readable(p) for p in self.paths(name))

    def write(
        self,
        name: str,
        labels: np.ndarray,
        affine: np.ndarray,
        *,
        header: Any | None = None,
        seg_frames: np.ndarray | None = None,
        seg_sources: Sequence[Any] | None = None,
    ) -> list[Path]:
        """Write case ``name``: ``labels`` (uint8, the array of ``affine`` / ``header``) as NIfTI, and as DICOM-SEG
        ``seg_frames`` (the same labels as ``(slices, rows, columns)`` frames, ``seg_frames[k]`` on ``seg_sources[k]``).
        The DICOM-SEG is written first, so a case that fails leaves no NIfTI either. Returns the files written."""
        written = []
        if self.dicom_seg:
            if seg_sources is None or seg_frames is None:
                raise DataError(
                    f"{name}: not read from DICOM; a DICOM Segmentation needs the DICOM source images "
                    "(use --output-format nifti)"
                )
            from segzoo.inference.dicom_seg import write_dicom_seg

            written.append(
                write_dicom_seg(
                    self.out_dir / f"{name}.dcm",
                    seg_frames,
                    seg_sources,
                    self.label_values,
                    self.label_names,
                    model_name=self.model_name,
                )
            )
        if self.nifti:
            path = self.out_dir / f"{name}.nii.gz"
            written.insert(0, save_nifti(labels, None if header is not None else affine, path, header=header))
        if self.stats:
            self.rows[name] = label_stats(labels, affine, self.label_values, self.label_names)
        return written

    def add_existing(self, name: str) -> None:
        """Record the statistics of a case finished by an earlier run, from its NIfTI output."""
        if not self.stats:
            return
        from segzoo.data.io import load_nifti

        labels, affine = load_nifti(self.out_dir / f"{name}.nii.gz")
        self.rows[name] = label_stats(labels, affine, self.label_values, self.label_names)

    def write_stats(self) -> tuple[Path, Path]:
        """Write ``stats.json`` and ``stats.csv`` (every recorded case, by name) atomically; returns both paths."""
        cases = [{"case": name, "labels": self.rows[name]} for name in sorted(self.rows)]
        document = {
            "units": {"voxels": "count", "volume_ml": "ml (voxel count x voxel volume)"},
            "labels": {str(v): n for v, n in zip(self.label_values, self.label_names)},
            "cases": cases,
        }
        buffer = io.StringIO()
        table = csv.DictWriter(buffer, fieldnames=STATS_FIELDS, lineterminator="\n")
        table.writeheader()
        for case in cases:
            for row in case["labels"]:
                table.writerow({"case": case["case"], **row})
        out_json = atomic_write_text(self.out_dir / "stats.json", json.dumps(document, indent=2) + "\n")
        out_csv = atomic_write_text(self.out_dir / "stats.csv", buffer.getvalue())
        return out_json, out_csv


def write_ground_pngs(folder: Path, frames: np.ndarray, slice_files: Sequence[Path]) -> list[Path]:
    """CHAOS Ground-style PNGs: one 8-bit grey PNG per frame of ``frames`` ``(S, H, W)`` (class k -> grey 63 k),
    named after its DICOM slice file, in ``folder``; each written atomically. Returns the files written."""
    from PIL import Image

    from segzoo.utils import atomic_path

    if len(frames) != len(slice_files):
        raise DataError(f"{folder}: {len(frames)} frames for {len(slice_files)} slice files")
    written = []
    for frame, source in zip(frames, slice_files):
        grey = (np.asarray(frame).astype(np.uint16) * CHAOS_PNG_STEP).astype(np.uint8)
        path = Path(folder) / f"{Path(source).stem}.png"
        with atomic_path(path, suffix=".tmp.png") as tmp:
            Image.fromarray(grey).save(tmp)  # uint8 (H, W): an 8-bit grey PNG
        written.append(path)
    return written


def _readable(path: Path) -> bool:
    """True when ``path`` exists and reads back: a NIfTI's header and data, a DICOM file's header."""
    if not path.is_file():
        return False
    if path.suffix.lower() == ".dcm":
        import pydicom

        try:
            return pydicom.dcmread(path, stop_before_pixels=True).get("Modality") == "SEG"
        except Exception:  # truncated or not DICOM: not finished
            return False
    from segzoo.data.io import load_nifti

    try:
        load_nifti(path)
    except DataError:
        return False
    return True
