"""CHAOS: synthetic DICOM+PNG generator, reader (layout, tags, grey ranges, errors) and the 2D DataModule."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from PIL import Image

from segzoo.data.chaos import CHAOS_SEQUENCES, find_chaos_cases, grey_to_label, load_chaos_case
from segzoo.data.datamodule_2d import CHAOSDataModule, split_case_ids
from segzoo.data.io import DataError
from segzoo.data.synthetic import write_synthetic
from segzoo.data.synthetic.chaos import write_chaos

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
SERIES = {
    "T1DUAL_InPhase": ("T1DUAL/DICOM_anon/InPhase", "T1DUAL/Ground"),
    "T1DUAL_OutPhase": ("T1DUAL/DICOM_anon/OutPhase", "T1DUAL/Ground"),
    "T2SPIR": ("T2SPIR/DICOM_anon", "T2SPIR/Ground"),
}


@pytest.fixture(scope="module")
def chaos_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("chaos")
    write_synthetic("chaos", root, cases=3, seed=0)
    return root


@pytest.fixture
def case_copy(chaos_root, tmp_path) -> Path:
    """A private copy of case 1 that a test may damage."""
    dst = tmp_path / "Train_Sets" / "MR" / "1"
    shutil.copytree(chaos_root / "Train_Sets" / "MR" / "1", dst)
    return dst


def _files(folder: Path, ext: str) -> list[Path]:
    return sorted(folder.glob(f"*.{ext}"))


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}


# ------------------------------------------------------------------------------------------------ generator
def test_layout_and_dicom_tags(chaos_root):
    mr = chaos_root / "Train_Sets" / "MR"
    assert sorted(p.name for p in mr.iterdir()) == ["1", "2", "3"]  # the real ids start 1, 2, 3, 5, 8
    case = mr / "1"
    series_uids = {}
    for seq, (dicom_rel, ground_rel) in SERIES.items():
        dcms, pngs = _files(case / dicom_rel, "dcm"), _files(case / ground_rel, "png")
        assert len(dcms) >= 12 and len(pngs) == len(dcms)
        datasets = [pydicom.dcmread(p) for p in dcms]
        ds = datasets[0]
        assert ds.file_meta.MediaStorageSOPClassUID == MR_IMAGE_STORAGE == ds.SOPClassUID
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.Modality == "MR" and ds.PhotometricInterpretation == "MONOCHROME2"
        assert ds.pixel_array.dtype == np.uint16 and ds.pixel_array.shape == (ds.Rows, ds.Columns) == (128, 128)
        assert [float(v) for v in ds.PixelSpacing] == [3.0, 3.0]
        assert float(ds.SliceThickness) == float(ds.SpacingBetweenSlices) == 8.0
        assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
        # file-name order is slice order: instance numbers count up, positions step by the slice spacing
        assert [int(d.InstanceNumber) for d in datasets] == list(range(1, len(dcms) + 1))
        z = np.array([float(d.ImagePositionPatient[2]) for d in datasets])
        np.testing.assert_allclose(np.abs(np.diff(z)), 8.0, atol=1e-3)
        assert len({d.SeriesInstanceUID for d in datasets}) == 1
        assert len({d.SOPInstanceUID for d in datasets}) == len(datasets)
        series_uids[seq] = (ds.SeriesInstanceUID, float(ds.EchoTime))
        for p in pngs:
            with Image.open(p) as im:
                assert im.mode == "L" and im.size == (128, 128)
    assert len({uid for uid, _ in series_uids.values()}) == 3
    assert series_uids["T1DUAL_InPhase"][1] != series_uids["T1DUAL_OutPhase"][1]
    # like the real files: out-phase has the odd image numbers, in-phase the even ones
    assert _files(case / SERIES["T1DUAL_OutPhase"][0], "dcm")[0].name == "IMG-0004-00001.dcm"
    assert _files(case / SERIES["T1DUAL_InPhase"][0], "dcm")[0].name == "IMG-0004-00002.dcm"


def test_ground_truth_grey_values_and_anatomy(chaos_root):
    case = chaos_root / "Train_Sets" / "MR" / "2"
    for _dicom_rel, ground_rel in SERIES.values():
        grey = np.stack([np.asarray(Image.open(p)) for p in _files(case / ground_rel, "png")])
        assert grey.dtype == np.uint8
        assert set(np.unique(grey).tolist()) == {0, 63, 126, 189, 252}
        # liver and right kidney on the image left (patient right), spleen and left kidney on the image right
        cols = {v: np.nonzero(grey == v)[2].mean() for v in (63, 126, 189, 252)}
        assert cols[63] < 64 and cols[126] < 64 and cols[189] > 64 and cols[252] > 64
    t1 = {
        seq: np.stack([pydicom.dcmread(p).pixel_array for p in _files(case / SERIES[seq][0], "dcm")]).astype(float)
        for seq in CHAOS_SEQUENCES
    }
    lab_t1 = load_chaos_case(case, "T1DUAL_InPhase").label
    lab_t2 = load_chaos_case(case, "T2SPIR").label
    inph, outph, t2 = t1["T1DUAL_InPhase"], t1["T1DUAL_OutPhase"], t1["T2SPIR"]
    # sequence-specific contrast: liver brighter than spleen on T1, spleen and kidneys brighter on T2-SPIR
    assert inph[lab_t1 == 1].mean() > 1.1 * inph[lab_t1 == 4].mean()
    assert t2[lab_t2 == 4].mean() > 2 * t2[lab_t2 == 1].mean()
    assert t2[lab_t2 == 2].mean() > 2 * t2[lab_t2 == 1].mean()
    # out-phase: the fat-water cancellation makes it darker, most at the body outline
    body = inph > 0.3 * inph.max()
    ratio = outph[body] / np.maximum(inph[body], 1)
    assert np.median(ratio) < 0.97 and np.quantile(ratio, 0.02) < 0.5


def test_deterministic_per_seed(tmp_path, chaos_root):
    again = write_chaos(tmp_path / "a", cases=1, seed=0)[0]
    other = write_chaos(tmp_path / "b", cases=1, seed=4)[0]
    assert _tree_digest(again) == _tree_digest(chaos_root / "Train_Sets" / "MR" / "1")  # byte-identical
    first = "T2SPIR/DICOM_anon/IMG-0002-00001.dcm"
    assert _tree_digest(again)[first] != _tree_digest(other)[first]
    assert not list((tmp_path / "a" / "Train_Sets" / "MR").glob(".*"))  # no temporary folders left behind


# ------------------------------------------------------------------------------------------------ reader
@pytest.mark.parametrize("sequence", CHAOS_SEQUENCES)
def test_load_case_matches_files(chaos_root, sequence):
    cases = find_chaos_cases(chaos_root, sequence)
    assert [p.name for p in cases] == ["1", "2", "3"]
    assert find_chaos_cases(chaos_root / "Train_Sets" / "MR", sequence) == cases
    case = load_chaos_case(cases[0], sequence)
    dicom_rel, ground_rel = SERIES[sequence]
    dcms, pngs = _files(cases[0] / dicom_rel, "dcm"), _files(cases[0] / ground_rel, "png")
    assert case.image.shape == (len(dcms), 128, 128) and case.image.dtype == np.float32
    assert case.label.shape == case.image.shape and case.label.dtype == np.uint8
    k = len(dcms) // 2
    np.testing.assert_array_equal(case.image[k], pydicom.dcmread(dcms[k]).pixel_array.astype(np.float32))
    np.testing.assert_array_equal(case.label[k], np.asarray(Image.open(pngs[k])) // 63)
    assert case.spacing == (8.0, 3.0, 3.0) and case.case_id == "1"


def test_grey_ranges():
    grey = np.array([[0, 55, 63, 70, 110, 126, 135, 175, 189, 200, 240, 252, 255]], dtype=np.uint8)
    np.testing.assert_array_equal(grey_to_label(grey), [[0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]])
    bad = np.array([[0, 100, 63]], dtype=np.uint8)
    with pytest.raises(DataError, match=r"mask\.png: grey values \[100\]"):
        grey_to_label(bad, "mask.png")
    with pytest.warns(UserWarning, match="mapped to background"):
        np.testing.assert_array_equal(grey_to_label(bad, strict=False), [[0, 0, 1]])


def test_slice_spacing_from_positions_then_tags(case_copy):
    dcm_dir = case_copy / "T2SPIR" / "DICOM_anon"
    for p in _files(dcm_dir, "dcm"):
        ds = pydicom.dcmread(p)
        ds.SpacingBetweenSlices = 5.0  # positions win over the tag
        ds.save_as(p)
    assert load_chaos_case(case_copy, "T2SPIR").spacing == (8.0, 3.0, 3.0)
    for p in _files(dcm_dir, "dcm"):
        ds = pydicom.dcmread(p)
        del ds.ImagePositionPatient
        ds.save_as(p)
    assert load_chaos_case(case_copy, "T2SPIR").spacing == (5.0, 3.0, 3.0)


def test_error_missing_ground(case_copy):
    shutil.rmtree(case_copy / "T2SPIR" / "Ground")
    with pytest.raises(DataError, match=r"T2SPIR/Ground: missing Ground folder"):
        load_chaos_case(case_copy, "T2SPIR")
    load_chaos_case(case_copy, "T1DUAL_InPhase")  # the other sequence has its own Ground


def test_error_missing_dicom(case_copy):
    shutil.rmtree(case_copy / "T1DUAL" / "DICOM_anon" / "OutPhase")
    with pytest.raises(DataError, match=r"OutPhase: missing DICOM folder"):
        load_chaos_case(case_copy, "T1DUAL_OutPhase")


def test_error_png_count(case_copy):
    _files(case_copy / "T1DUAL" / "Ground", "png")[-1].unlink()
    with pytest.raises(DataError, match=r"Ground: \d+ PNG masks for \d+ DICOM slices"):
        load_chaos_case(case_copy, "T1DUAL_InPhase")


def test_error_corrupt_dicom(case_copy):
    victim = _files(case_copy / "T2SPIR" / "DICOM_anon", "dcm")[3]
    victim.write_bytes(victim.read_bytes()[:600])  # truncated inside the header / pixel data
    with pytest.raises(DataError, match=rf"{victim.name}: cannot read DICOM"):
        load_chaos_case(case_copy, "T2SPIR")
    victim.write_bytes(b"not a dicom file at all")
    with pytest.raises(DataError, match=rf"{victim.name}: cannot read DICOM"):
        load_chaos_case(case_copy, "T2SPIR")


def test_error_png_size_and_values(case_copy):
    png = _files(case_copy / "T2SPIR" / "Ground", "png")[2]
    Image.fromarray(np.zeros((64, 64), dtype=np.uint8)).save(png)
    with pytest.raises(DataError, match=rf"{png.name}: mask size \(64, 64\) .* DICOM slice size \(128, 128\)"):
        load_chaos_case(case_copy, "T2SPIR")
    Image.fromarray(np.full((128, 128), 100, dtype=np.uint8)).save(png)
    with pytest.raises(DataError, match=rf"{png.name}: grey values \[100\]"):
        load_chaos_case(case_copy, "T2SPIR")


def test_find_errors(tmp_path, case_copy):
    with pytest.raises(DataError, match="no CHAOS MR cases found"):
        find_chaos_cases(tmp_path / "Train_Sets" / "MR" / "1" / "T2SPIR")
    with pytest.raises(DataError, match="not found"):
        find_chaos_cases(tmp_path / "nothing")
    with pytest.raises(ValueError, match="sequence must be one of"):
        find_chaos_cases(tmp_path, "T1")
    shutil.rmtree(case_copy / "T1DUAL")
    with pytest.raises(DataError, match=r"1/T1DUAL: missing T1DUAL folder"):
        find_chaos_cases(tmp_path, "T1DUAL_InPhase")


# ------------------------------------------------------------------------------------------------ datamodule
def test_split_case_ids():
    ids = [str(i) for i in range(10)]
    train, test = split_case_ids(ids, 0.6, seed=1)
    assert len(train) == 6 and len(test) == 4 and sorted(train + test) == sorted(ids)
    assert split_case_ids(ids[::-1], 0.6, seed=1) == (train, test)  # independent of the listing order
    assert any(split_case_ids(ids, 0.6, seed=s)[0] != train for s in range(2, 6))
    with pytest.raises(DataError, match="at least 2 cases"):
        split_case_ids(["1"], 0.6, 0)


@pytest.mark.slow
def test_datamodule_batches_split_and_cache(tmp_path, monkeypatch):
    import segzoo.data.datamodule_2d as dm2d

    calls = []
    real_load = dm2d.load_chaos_case
    monkeypatch.setattr(dm2d, "load_chaos_case", lambda *a, **k: calls.append(a[0]) or real_load(*a, **k))
    dm = CHAOSDataModule(
        data_dir=str(tmp_path / "chaos"), sequence="T1DUAL_OutPhase", image_size=(64, 64), batch_size=4,
        synthetic_cases=5, synthetic_seed=1,
    )  # fmt: skip
    assert (dm.num_classes, dm.in_channels, dm.class_names[1]) == (5, 1, "liver")
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.train_case_ids) == 3 and len(dm.val_case_ids) == 2
    assert set(dm.train_case_ids).isdisjoint(dm.val_case_ids)
    assert sorted(dm.train_case_ids + dm.val_case_ids, key=int) == ["1", "2", "3", "5", "8"]

    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 1, 64, 64) and batch["image"].dtype == torch.float32
    assert batch["label"].shape == (4, 1, 64, 64) and batch["label"].dtype == torch.int64
    assert 0 <= batch["label"].min() and batch["label"].max() <= 4 and len(batch["case_id"]) == 4
    n_slices = sum(len(_files(tmp_path / "chaos/Train_Sets/MR" / c / "T1DUAL/DICOM_anon/OutPhase", "dcm"))
                   for c in dm.train_case_ids)  # fmt: skip
    assert len(dm.train_dataloader().dataset) == n_slices

    val = list(dm.val_dataloader())
    assert [b["case_id"][0] for b in val] == dm.val_case_ids
    for b in val:
        s = b["image"].shape[2]
        assert b["image"].shape == (1, 1, s, 64, 64) and b["label"].shape == (1, 1, s, 64, 64)
        torch.testing.assert_close(b["spacing"], torch.tensor([[8.0, 6.0, 6.0]]))  # 3 mm * 128 / 64
        assert set(b["label"].unique().tolist()) == {0, 1, 2, 3, 4}
    list(dm.test_dataloader())
    assert len(calls) == 5  # every case read once, whatever the number of loaders

    again = CHAOSDataModule(data_dir=str(tmp_path / "chaos"), sequence="T1DUAL_OutPhase")
    again.setup("fit")
    assert again.train_case_ids == dm.train_case_ids  # same split seed, same split


def test_datamodule_normalisation_and_empty_dir(chaos_root, tmp_path):
    raw = CHAOSDataModule(data_dir=str(chaos_root), image_size=(128, 128), normalize="none")
    z = CHAOSDataModule(data_dir=str(chaos_root), image_size=(128, 128), normalize="zscore")
    raw.setup("test")
    z.setup("test")
    case_raw, case_z = raw.eval_dataset()[0], z.eval_dataset()[0]
    expected = load_chaos_case(chaos_root / "Train_Sets" / "MR" / case_raw["case_id"], "T2SPIR")
    np.testing.assert_array_equal(case_raw["image"][0].numpy(), expected.image)  # no resize, raw values
    assert abs(float(case_z["image"].mean())) < 1e-4 and abs(float(case_z["image"].std()) - 1) < 1e-3
    with pytest.raises(DataError, match="data folder missing or empty"):
        CHAOSDataModule(data_dir=str(tmp_path / "empty")).setup("fit")
    with pytest.raises(ValueError, match="normalize must be one of"):
        CHAOSDataModule(data_dir=str(tmp_path), normalize="minmax")
