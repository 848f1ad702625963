"""DICOM Segmentation (DICOM-SEG) output of ``segzoo infer``, written with highdicom.

One SEG object per case: one segment per label of the model (present or not), named after the label, with a coded
category and type (SNOMED CT, from DICOM's CID 7150 / 7151 through pydicom's code dictionary); the source series is
referenced, every frame names the source slice it was derived from, and the plane positions and orientation are the
source's, so a PACS or viewer (3D Slicer, OHIF) overlays it on the series it came from. Segments are binary
(``SegmentationType BINARY``, bit-packed); frames with no voxel of a segment are left out (highdicom's
``omit_empty_frames``), and highdicom orders the frames along the slice normal.

Names without a code of their own (``label_3``, a name we do not know) get the generic category and type
"Tissue" (SCT 85756007); the name itself is kept as the segment label.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from segzoo.data.io import DataError
from segzoo.utils import atomic_path

# segment name (lower case, "-" and " " as "_") -> (category keyword, type keyword, laterality keyword or None); the
# keywords are pydicom's SCT code keywords (pydicom.sr.codedict.codes.SCT.<keyword>)
_ORGAN = "AnatomicalStructure"
_ABNORMAL = "MorphologicallyAbnormalStructure"
SEGMENT_CODES: dict[str, tuple[str, str, str | None]] = {
    "kidney": (_ORGAN, "Kidney", None),
    "right_kidney": (_ORGAN, "Kidney", "Right"),
    "left_kidney": (_ORGAN, "Kidney", "Left"),
    "liver": (_ORGAN, "Liver", None),
    "spleen": (_ORGAN, "Spleen", None),
    "pancreas": (_ORGAN, "Pancreas", None),
    "stomach": (_ORGAN, "Stomach", None),
    "gallbladder": (_ORGAN, "Gallbladder", None),
    "esophagus": (_ORGAN, "Esophagus", None),
    "duodenum": (_ORGAN, "Duodenum", None),
    "colon": (_ORGAN, "Colon", None),
    "aorta": (_ORGAN, "Aorta", None),
    "adrenal_gland": (_ORGAN, "AdrenalGland", None),
    "bladder": (_ORGAN, "Bladder", None),
    "prostate": (_ORGAN, "Prostate", None),
    "lung": (_ORGAN, "Lung", None),
    "heart": (_ORGAN, "Heart", None),
    "brain": (_ORGAN, "Brain", None),
    "trachea": (_ORGAN, "Trachea", None),
    "bone": (_ORGAN, "Bone", None),
    "vertebra": (_ORGAN, "Vertebra", None),
    "lymph_node": (_ORGAN, "LymphNode", None),
    "tumour": (_ABNORMAL, "Tumor", None),
    "tumor": (_ABNORMAL, "Tumor", None),
    "kidney_tumour": (_ABNORMAL, "Tumor", None),
    "kidney_tumor": (_ABNORMAL, "Tumor", None),
    "neoplasm": (_ABNORMAL, "Neoplasm", None),
    "enhancing_tumour": (_ABNORMAL, "Tumor", None),
    "enhancing_tumor": (_ABNORMAL, "Tumor", None),
    "necrotic_core": (_ABNORMAL, "Necrosis", None),
    "necrosis": (_ABNORMAL, "Necrosis", None),
    "edema": (_ABNORMAL, "Edema", None),
    "oedema": (_ABNORMAL, "Edema", None),
    "lesion": (_ABNORMAL, "Lesion", None),
    "mass": (_ABNORMAL, "Mass", None),
    "cyst": (_ABNORMAL, "Cyst", None),
}
GENERIC_CODE = ("Tissue", "Tissue", None)
# SCT qualifier values for laterality (CID 244), not in pydicom's keyword dictionary under these names
_LATERALITY = {"Right": ("24028007", "Right"), "Left": ("7771000", "Left")}


def segment_codes(name: str) -> tuple[Any, Any, Any | None]:
    """``(category, type, laterality modifier or None)`` codes of a segment named ``name`` (generic "Tissue" for
    names not in :data:`SEGMENT_CODES`)."""
    from highdicom.sr import CodedConcept
    from pydicom.sr.codedict import codes

    key = name.strip().lower().replace("-", "_").replace(" ", "_")
    category, kind, side = SEGMENT_CODES.get(key, GENERIC_CODE)
    modifier = None if side is None else CodedConcept(_LATERALITY[side][0], "SCT", _LATERALITY[side][1])
    return getattr(codes.SCT, category), getattr(codes.SCT, kind), modifier


def build_dicom_seg(
    frames: np.ndarray,
    sources: Sequence[Any],
    label_values: Sequence[int],
    label_names: Sequence[str],
    *,
    model_name: str = "segzoo",
) -> Any:
    """The ``highdicom.seg.Segmentation`` of a label map on the grid of ``sources``.

    Args:
        frames: ``(slices, rows, columns)`` label values; ``frames[k]`` was predicted on ``sources[k]``.
        sources: the source slices' pydicom datasets (pixel data not needed), one per frame.
        label_values: the label values of the model, background (0) excluded; segment ``i + 1`` is
            ``label_values[i]``. A value in ``frames`` missing from them is an error.
        label_names: one name per label value (the segment labels).
        model_name: the ``ManufacturerModelName`` and algorithm name (e.g. the checkpoint's file name).

    Raises:
        DataError: frames and sources disagree in number or size, or unknown label values.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    import segzoo

    frames = np.asarray(frames)
    if len(label_values) != len(label_names):
        raise ValueError(f"{len(label_values)} label values but {len(label_names)} names")
    first = sources[0]
    where = getattr(first, "filename", None) or "the source series"
    if frames.ndim != 3 or frames.shape[0] != len(sources) or frames.shape[1:] != (int(first.Rows), int(first.Columns)):
        raise DataError(
            f"{where}: {frames.shape} label frames for {len(sources)} source slices of "
            f"{int(first.Rows)}x{int(first.Columns)}"
        )
    lut = np.zeros(max([*label_values, int(frames.max(initial=0))]) + 1, dtype=np.uint8)
    for i, v in enumerate(label_values):
        lut[int(v)] = i + 1
    unknown = sorted(set(np.unique(frames).tolist()) - {0, *map(int, label_values)})
    if unknown:
        raise DataError(
            f"{where}: label values {unknown} in the prediction are not labels of the model {list(label_values)}"
        )
    algorithm = hd.AlgorithmIdentificationSequence(
        name=model_name[:64], family=codes.DCM.ArtificialIntelligence, version=segzoo.__version__
    )
    descriptions = []
    for i, name in enumerate(label_names):
        category, kind, modifier = segment_codes(name)
        description = hd.seg.SegmentDescription(
            segment_number=i + 1,
            segment_label=name[:64],
            segmented_property_category=category,
            segmented_property_type=kind,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        if modifier is not None:
            description.SegmentedPropertyTypeModifierCodeSequence = [modifier]
        descriptions.append(description)
    series_number = int(first.get("SeriesNumber", 0) or 0)
    missing = [
        k for k in ("StudyInstanceUID", "SOPInstanceUID", "SOPClassUID", "FrameOfReferenceUID") if k not in first
    ]
    if missing:
        raise DataError(f"{where}: no {', '.join(missing)}; a DICOM Segmentation must reference them")
    try:
        return _segmentation(
            hd, [_with_type2(first), *sources[1:]], lut[frames], descriptions, series_number, model_name
        )
    except (ValueError, TypeError, AttributeError, KeyError) as e:  # what highdicom finds wrong with the sources
        reason = " ".join(f"{type(e).__name__}: {e}".split())
        raise DataError(f"{where}: cannot build a DICOM Segmentation on this series ({reason})") from None


# Patient and General Study attributes of type 2 (present, may be empty) that highdicom copies from the first source;
# anonymisers often drop them, and an empty value is what the standard asks for when they are unknown
_TYPE2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
)


def _with_type2(ds: Any) -> Any:
    """``ds``, or a copy with the missing :data:`_TYPE2` attributes present and empty."""
    missing = [k for k in _TYPE2 if k not in ds]
    if not missing:
        return ds
    import copy

    ds = copy.deepcopy(ds)  # Dataset.copy() shares the elements: setting one would change the caller's header
    for keyword in missing:
        setattr(ds, keyword, "")
    return ds


def _segmentation(hd, sources, pixels, descriptions, series_number: int, model_name: str):
    import segzoo

    return hd.seg.Segmentation(
        source_images=list(sources),
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=list(descriptions),
        series_instance_uid=hd.UID(),
        series_number=series_number + 1000 if 0 <= series_number < 2**31 - 1000 else 1000,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="segzoo",
        manufacturer_model_name=model_name[:64],
        software_versions=f"segzoo {segzoo.__version__}",
        device_serial_number="0",
        series_description=f"segzoo {model_name}"[:64],
        content_label="SEGZOO",
        content_description=f"Automatic segmentation by segzoo ({model_name})"[:64],
    )


def write_dicom_seg(
    path: str | os.PathLike,
    frames: np.ndarray,
    sources: Sequence[Any],
    label_values: Sequence[int],
    label_names: Sequence[str],
    *,
    model_name: str = "segzoo",
) -> Path:
    """Write :func:`build_dicom_seg` to ``path`` atomically (``.dcm``); returns ``path``."""
    seg = build_dicom_seg(frames, sources, label_values, label_names, model_name=model_name)
    path = Path(path)
    with atomic_path(path, suffix=".tmp.dcm") as tmp:
        seg.save_as(tmp, enforce_file_format=True)
    return path
