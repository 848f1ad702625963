"""Per-case outputs of `segzoo infer`: label statistics against hand computations, the stats files, the DICOM-SEG
builder (segment codes, label values that are not 1..N, empty predictions, sources lacking type-2 attributes)."""

from __future__ import annotations

import copy
import csv
import json

import highdicom as hd
import numpy as np
import pydicom
import pytest

from segzoo.data.dicom_series import load_dicom_series
from segzoo.data.io import DataError, load_nifti
from segzoo.data.synthetic.dicom_series import write_ct_series
from segzoo.inference.dicom_seg import build_dicom_seg, segment_codes, write_dicom_seg
from segzoo.inference.outputs import CaseWriter, label_stats, voxel_volume_ml


def test_voxel_volume_of_an_oblique_permuted_affine():
    rot = np.array([[0, np.cos(0.3), -np.sin(0.3)], [0, np.sin(0.3), np.cos(0.3)], [-1, 0, 0]])  # axes permuted too
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([0.5, 2.0, 3.0])
    assert voxel_volume_ml(affine) == pytest.approx(0.5 * 2.0 * 3.0 / 1000)


def test_label_stats_by_hand():
    labels = np.zeros((4, 5, 6), dtype=np.uint8)
    labels[0, :2, :3] = 1  # 6 voxels
    labels[3, 4, 5] = 7  # a value the model does not name: listed after the known ones
    affine = np.diag([2.0, 2.0, 2.5, 1.0])  # 10 mm^3 = 0.01 ml per voxel
    rows = label_stats(labels, affine, [1, 2], ["kidney", "tumour"])
    assert rows == [
        {"label": 1, "name": "kidney", "voxels": 6, "volume_ml": 0.06},
        {"label": 2, "name": "tumour", "voxels": 0, "volume_ml": 0.0},
        {"label": 7, "name": "label_7", "voxels": 1, "volume_ml": 0.01},
    ]


def test_writer_writes_nifti_and_stats_atomically(tmp_path):
    writer = CaseWriter(tmp_path, label_values=[1, 2], label_names=["a", "b"], stats=True)
    labels = np.zeros((3, 3, 3), dtype=np.uint8)
    labels[1, 1, :] = 2
    affine = np.diag([1.0, 2.0, 3.0, 1.0])
    assert writer.write("case_b", labels, affine) == [tmp_path / "case_b.nii.gz"]
    writer.write("case_a", labels * 0, affine)
    writer.write_stats()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case_a.nii.gz", "case_b.nii.gz", "stats.csv", "stats.json"]
    np.testing.assert_array_equal(load_nifti(tmp_path / "case_b.nii.gz")[0], labels)
    doc = json.loads((tmp_path / "stats.json").read_text())
    assert [c["case"] for c in doc["cases"]] == ["case_a", "case_b"]  # sorted by case
    assert doc["cases"][1]["labels"][1] == {"label": 2, "name": "b", "voxels": 3, "volume_ml": 0.018}
    rows = list(csv.reader((tmp_path / "stats.csv").open()))
    assert rows[0] == ["case", "label", "name", "voxels", "volume_ml"] and len(rows) == 5
    assert rows[4] == ["case_b", "2", "b", "3", "0.018"]
    assert writer.finished("case_b") and not writer.finished("case_c")
    # a NIfTI input cannot give a DICOM-SEG
    seg_writer = CaseWriter(tmp_path / "seg", output_format="dicom-seg", label_values=[1], label_names=["x"])
    with pytest.raises(DataError, match="case_x: not read from DICOM"):
        seg_writer.write("case_x", labels, affine)
    assert not (tmp_path / "seg").exists()
    with pytest.raises(ValueError, match="2 label values but 1 label names"):
        CaseWriter(tmp_path, label_values=[1, 2], label_names=["x"])


@pytest.mark.parametrize(
    "name, category, kind, side",
    [
        ("kidney", "91723000", "64033007", None),
        ("Right kidney", "91723000", "64033007", "24028007"),
        ("left-kidney", "91723000", "64033007", "7771000"),
        ("tumour", "49755003", "108369006", None),
        ("liver", "91723000", "10200004", None),
        ("spleen", "91723000", "78961009", None),
        ("necrotic_core", "49755003", "6574001", None),
        ("label_3", "85756007", "85756007", None),  # unknown: generic Tissue
    ],
)
def test_segment_codes(name, category, kind, side):
    c, t, m = segment_codes(name)
    assert (c.value, t.value, c.scheme_designator, t.scheme_designator) == (category, kind, "SCT", "SCT")
    assert (m.value if m is not None else None) == side


@pytest.fixture(scope="module")
def ct(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ct")
    hu = np.zeros((20, 16, 5))
    write_ct_series(folder, hu, np.diag([-0.9, -0.9, 3.0, 1.0]), shuffle_names=True)
    return load_dicom_series(folder)


def test_label_values_that_are_not_1_to_n(ct, tmp_path):
    """BraTS labels 1, 2, 4 become segments 1, 2, 3; reading back by segment gives the values' voxels."""
    frames = np.zeros((5, 16, 20), dtype=np.uint8)
    frames[1, 2:5, 3:9] = 4
    frames[2, 6:8, :] = 1
    frames[3, 0, 0] = 2
    path = write_dicom_seg(
        tmp_path / "x.dcm", frames, ct.headers, [1, 2, 4], ["necrotic_core", "edema", "enhancing_tumor"]
    )
    assert [p.name for p in tmp_path.iterdir()] == ["x.dcm"]  # no temporary file left
    seg = hd.seg.segread(path)
    uids = [h.SOPInstanceUID for h in ct.headers]
    got = seg.get_pixels_by_source_instance(uids, combine_segments=True)
    np.testing.assert_array_equal(got, np.array([0, 1, 2, 0, 3], dtype=np.uint8)[frames])
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["necrotic_core", "edema", "enhancing_tumor"]
    with pytest.raises(DataError, match=r"label values \[3\] in the prediction are not labels of the model"):
        build_dicom_seg(np.full((5, 16, 20), 3, dtype=np.uint8), ct.headers, [1, 2, 4], ["a", "b", "c"])
    with pytest.raises(DataError, match=r"\(4, 16, 20\) label frames for 5 source slices of 16x20"):
        build_dicom_seg(frames[:4], ct.headers, [1, 2, 4], ["a", "b", "c"])


def test_empty_prediction_and_sources_without_type2_attributes(ct, tmp_path):
    headers = copy.deepcopy(ct.headers)
    for h in headers:
        for keyword in ("PatientBirthDate", "AccessionNumber", "StudyID", "ReferringPhysicianName"):
            delattr(h, keyword)
    path = write_dicom_seg(
        tmp_path / "empty.dcm", np.zeros((5, 16, 20), np.uint8), headers, [1, 2], ["kidney", "tumour"]
    )
    seg = pydicom.dcmread(path)
    assert seg.NumberOfFrames == 10 and not seg.pixel_array.any()  # every frame of both segments, all empty
    assert seg.PatientBirthDate == "" and seg.PatientID == ct.headers[0].PatientID
    assert "PatientBirthDate" not in headers[0]  # the caller's headers are left as they were
    broken = copy.deepcopy(ct.headers)
    del broken[0].FrameOfReferenceUID
    with pytest.raises(DataError, match="no FrameOfReferenceUID"):
        build_dicom_seg(np.zeros((5, 16, 20), np.uint8), broken, [1], ["kidney"])
