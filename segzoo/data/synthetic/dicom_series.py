"""Write a known volume as a single-frame DICOM CT series, as a scanner export would hold it.

Used by the tests of :mod:`segzoo.data.dicom_series` and ``segzoo infer`` on DICOM: the geometry comes from a NIfTI
(RAS) affine of a ``(columns, rows, slices)`` array, so what a reader gives back can be checked voxel for voxel. File
names can be shuffled (``IM`` + a random number, no ``.dcm`` suffix), as hospital exports name them, and the pixel
data compressed with any transfer syntax pydicom encodes (RLE Lossless natively, JPEG 2000 / JPEG-LS with pylibjpeg or
pyjpegls) or deflated.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def _uid(*parts: object) -> str:
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=["segzoo-dicom-series", *map(str, parts)])


def write_ct_series(
    folder: str | os.PathLike,
    hu: np.ndarray,
    affine: np.ndarray,
    *,
    seed: int = 0,
    series: str = "1",
    description: str = "segzoo synthetic CT",
    patient_position: str = "HFS",
    transfer_syntax: str | None = None,
    shuffle_names: bool = False,
    rescale_intercept: float = -1024.0,
    rescale_slope: float = 1.0,
) -> list[Path]:
    """Write ``hu`` (Hounsfield units, ``(columns, rows, slices)``) as one CT series into ``folder``.

    Args:
        folder: where the slice files go (created).
        hu: the volume; stored as ``uint16`` ``(hu - rescale_intercept) / rescale_slope`` (must be exact integers in
            ``0..65535``).
        affine: NIfTI (RAS) affine of ``hu``; its first two columns give ``ImageOrientationPatient`` and
            ``PixelSpacing``, slice ``k`` sits at ``affine @ (0, 0, k, 1)``. Columns need not be orthogonal (a sheared
            third column writes a gantry-tilted series).
        seed: with ``series``, makes the UIDs (study, series, frame of reference, instances) and shuffled names.
        series: a name that makes a different ``SeriesInstanceUID`` (several series in one study folder).
        description: ``SeriesDescription``.
        patient_position: ``PatientPosition`` (``HFS``, ``FFS``, ...); informational, the geometry is in ``affine``.
        transfer_syntax: a transfer syntax UID to compress or deflate with; ``None``: explicit VR little endian.
        shuffle_names: name files ``IM<random>`` without suffix, in an order unrelated to the slice order;
            otherwise ``slice_000.dcm``, ...
        rescale_intercept, rescale_slope: ``RescaleIntercept`` / ``RescaleSlope``.

    Returns:
        The files written, in slice order (``hu[..., k]`` is file ``k``).
    """
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stored = (np.asarray(hu, dtype=np.float64) - rescale_intercept) / rescale_slope
    if not np.array_equal(stored, np.rint(stored)) or stored.min() < 0 or stored.max() > 65535:
        raise ValueError("hu must map to integers in 0..65535 with the given rescale slope and intercept")
    stored = stored.astype(np.uint16)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(affine, dtype=np.float64)
    col_mm, row_mm = np.linalg.norm(lps[:3, :2], axis=0)  # along a row (between columns), down a column
    orientation = np.concatenate([lps[:3, 0] / col_mm, lps[:3, 1] / row_mm])
    rng = np.random.default_rng([seed, len(series)])
    n = stored.shape[2]
    names = (
        [f"IM{v:08d}" for v in rng.choice(10**8, size=n, replace=False)]
        if shuffle_names
        else [f"slice_{k:03d}.dcm" for k in range(n)]
    )
    study, series_uid, frame = _uid(seed, "study"), _uid(seed, series), _uid(seed, "frame")
    written = []
    for k in range(n):
        sop_uid = _uid(seed, series, k)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / names[k]
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = CT_IMAGE_STORAGE
        ds.SOPInstanceUID = sop_uid
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame
        ds.Modality = "CT"
        ds.Manufacturer = "segzoo synthetic"
        ds.PatientName = "Synthetic^Phantom"
        ds.PatientID = f"SEGZOO-{seed}"
        ds.StudyID = "1"
        ds.StudyDate = ds.SeriesDate = "20260101"
        ds.StudyTime = ds.SeriesTime = "120000"
        ds.AccessionNumber = ""
        ds.ReferringPhysicianName = ""
        ds.PatientBirthDate = ""
        ds.PatientSex = "O"
        ds.SeriesNumber = 1 + sum(map(ord, series)) % 100
        ds.SeriesDescription = description
        ds.InstanceNumber = k + 1
        ds.PatientPosition = patient_position
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in lps[:3, 3] + k * lps[:3, 2]]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in orientation]
        ds.PixelSpacing = [f"{row_mm:.6f}", f"{col_mm:.6f}"]
        ds.SliceThickness = f"{abs(np.dot(lps[:3, 2], np.cross(orientation[:3], orientation[3:]))):.6f}"
        ds.KVP = "120"
        ds.RescaleIntercept = f"{rescale_intercept:g}"
        ds.RescaleSlope = f"{rescale_slope:g}"
        ds.RescaleType = "HU"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Columns, ds.Rows = stored.shape[:2]
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T, dtype="<u2").tobytes()  # (rows, columns)
        if transfer_syntax is not None and UID(transfer_syntax) == DeflatedExplicitVRLittleEndian:
            ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
        elif transfer_syntax is not None:
            ds.compress(transfer_syntax)
        ds.save_as(path, enforce_file_format=True)
        written.append(path)
    return written
