"""KiTS19 reader (layout, one clear error per bad input) and KiTS19DataModule (splits, batches, oversampling)."""

from __future__ import annotations

import gzip
import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch

from segzoo.data.datamodule import KiTS19DataModule, PatchDataset, split_cases
from segzoo.data.geometry import spacing_from_affine
from segzoo.data.io import DataError, save_nifti
from segzoo.data.kits19 import find_kits19_cases, load_kits19_case
from segzoo.data.synthetic.kits19 import kits19_affine, write_kits19

pytestmark = pytest.mark.usefixtures("one_thread")


def _case(folder, image, label=None, affine=None, label_affine=None):
    affine = kits19_affine((3.0, 0.8, 0.8)) if affine is None else affine
    save_nifti(image, affine, folder / "imaging.nii.gz")
    if label is not None:
        save_nifti(label, affine if label_affine is None else label_affine, folder / "segmentation.nii.gz")
    return folder


# ------------------------------------------------------------------------------------------------------------ reader
def test_find_cases_layout(tmp_path):
    write_kits19(tmp_path, cases=3, seed=0, unlabelled=1)
    (tmp_path / "notes.txt").write_text("ignored")
    (tmp_path / "other").mkdir()
    cases = find_kits19_cases(tmp_path)
    assert [c.case_id for c in cases] == ["case_00000", "case_00001", "case_00002"]
    assert cases[0].image == tmp_path / "case_00000" / "imaging.nii.gz"
    assert cases[0].label == tmp_path / "case_00000" / "segmentation.nii.gz"
    assert cases[2].label is None  # inference-only case
    image, label, affine = load_kits19_case(cases[0])
    assert image.dtype == np.float32 and label.dtype == np.uint8 and image.shape == label.shape
    assert load_kits19_case(cases[2])[1] is None


def test_spacing_from_affine():
    assert spacing_from_affine(kits19_affine((3.0, 0.78, 0.79))) == pytest.approx((3.0, 0.78, 0.79))
    rot = np.eye(4)
    c, s = np.cos(0.3), np.sin(0.3)
    rot[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.diag([0.5, 2.0, 5.0])
    assert spacing_from_affine(rot) == pytest.approx((0.5, 2.0, 5.0))


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(DataError, match="not found") as e:
        find_kits19_cases(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(e.value)
    with pytest.raises(DataError, match="no case_XXXXX"):
        find_kits19_cases(tmp_path)
    (tmp_path / "case_00000").mkdir()
    with pytest.raises(DataError, match="imaging.nii.gz: missing") as e:
        find_kits19_cases(tmp_path)
    assert str(tmp_path / "case_00000" / "imaging.nii.gz") in str(e.value)


def _bad(tmp_path, kind):
    img = np.zeros((4, 6, 6), np.int16)
    lab = np.zeros((4, 6, 6), np.uint8)
    folder = tmp_path / "case_00000"
    if kind == "truncated":
        _case(folder, img, lab)
        raw = (folder / "imaging.nii.gz").read_bytes()
        (folder / "imaging.nii.gz").write_bytes(raw[: len(raw) // 2])
        return folder / "imaging.nii.gz", "corrupt or truncated"
    if kind == "shape":
        _case(folder, img, np.zeros((4, 6, 5), np.uint8))
        return folder / "segmentation.nii.gz", "shape"
    if kind == "affine":
        _case(folder, img, lab, label_affine=kits19_affine((2.0, 0.8, 0.8)))
        return folder / "segmentation.nii.gz", "affine"
    if kind == "value3":
        lab[1, 2, 2] = 3
        _case(folder, img, lab)
        return folder / "segmentation.nii.gz", r"unexpected label values \[3\]"
    if kind == "nan":
        f = img.astype(np.float32)
        f[0, 0, 0] = np.nan
        _case(folder, f, lab)
        return folder / "imaging.nii.gz", "non-finite"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["truncated", "shape", "affine", "value3", "nan"])
def test_load_errors_name_the_file(tmp_path, kind):
    path, message = _bad(tmp_path, kind)
    (case,) = find_kits19_cases(tmp_path)
    with pytest.raises(DataError, match=message) as e:
        load_kits19_case(case)
    assert str(path) in str(e.value)


def test_corrupt_gzip_content(tmp_path):
    folder = _case(tmp_path / "case_00001", np.zeros((4, 6, 6), np.int16))
    path = folder / "imaging.nii.gz"
    with gzip.open(path, "wb") as f:
        f.write(b"this is not a nifti header" * 20)
    with pytest.raises(DataError, match="corrupt") as e:
        load_kits19_case(find_kits19_cases(tmp_path)[0])
    assert str(path) in str(e.value)


# ------------------------------------------------------------------------------------------------------- datamodule
def test_split_cases():
    ids = [f"case_{i:05d}" for i in range(10)]
    train, val = split_cases(ids, 3, split_seed=0)
    assert len(val) == 3 and len(train) == 7 and not set(train) & set(val) and sorted(train + val) == ids
    assert split_cases(ids, 3, split_seed=0) == (train, val)  # fixed seed -> fixed split
    assert split_cases(ids, 0.2)[1].__len__() == 2
    with pytest.raises(DataError, match="num_val_cases=10"):
        split_cases(ids, 10)
    with pytest.raises(DataError, match="fraction"):
        split_cases(ids, 1.5)


def test_split_train_val_test_disjoint():
    from segzoo.data.splits import split_train_val_test

    ids = [f"case_{i:05d}" for i in range(20)]
    train, val, test = split_train_val_test(ids, 3, 5, split_seed=1)
    assert (len(train), len(val), len(test)) == (12, 3, 5)
    assert sorted(train + val + test) == ids and not (set(train) & set(val) or set(val) & set(test))
    assert split_train_val_test(ids, 6, 5, split_seed=1)[2] == test  # the test set never depends on validation
    assert split_train_val_test(ids, 0.2, 0.25, split_seed=1)[1].__len__() == 3  # 20% of the 15 left
    assert split_train_val_test(ids, 3, 0, split_seed=1)[:2] == split_cases(ids, 3, split_seed=1)
    with pytest.raises(DataError, match="leave no training case"):
        split_train_val_test(ids, 10, 10)
    with pytest.raises(DataError, match="num_test_cases=-1"):
        split_train_val_test(ids, 1, -1)


@pytest.fixture(scope="module")
def dm(tmp_path_factory):
    root = tmp_path_factory.mktemp("dm")
    # data_dir missing: synthetic_cases writes 4 labelled cases there; the demo path
    dm = KiTS19DataModule(
        str(root / "kits19"),
        target_spacing=(3.0, 2.5, 2.5),
        patch_size=(16, 48, 48),
        batch_size=3,
        iterations_per_epoch=2,
        num_val_cases=1,
        num_workers=0,
        synthetic_cases=4,
    )
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_prepare_writes_fingerprint_from_train_split(dm):
    assert dm.cache_dir == dm.data_dir.parent / "kits19_preprocessed"
    assert (dm.cache_dir / "fingerprint.json").is_file()
    assert dm.fingerprint["train_cases"] == dm.train_cases
    assert len(dm.train_cases) == 3 and len(dm.val_cases) == 1 and dm.val_cases[0] not in dm.train_cases
    assert dm.preprocessor.target_spacing == (3.0, 2.5, 2.5)
    assert dm.preprocessor.mean == pytest.approx(dm.fingerprint["foreground"]["mean"])


def test_train_batches(dm):
    batches = list(dm.train_dataloader())
    assert len(batches) == 2  # iterations_per_epoch
    for b in batches:
        assert b["image"].shape == (3, 1, 16, 48, 48) and b["image"].dtype == torch.float32
        assert b["label"].shape == (3, 1, 16, 48, 48) and b["label"].dtype == torch.int64
        assert set(b["label"].unique().tolist()) <= {0, 1, 2}
        assert torch.isfinite(b["image"]).all()
        assert len(b["case_id"]) == 3 and set(b["case_id"]) <= set(dm.train_cases)


def test_foreground_oversampling_rate(dm):
    ds = PatchDataset(dm.cache_dir, dm.train_cases, (8, 24, 24), length=1, foreground_oversample=0.33)
    rng = np.random.default_rng(0)
    n, fg = 600, 0
    for _ in range(n):
        _, img, seg, centred = ds.sample(rng)
        assert img.shape == (1, 8, 24, 24) and seg.shape == (1, 8, 24, 24)
        if centred:
            fg += 1
            assert seg[0, 4, 12, 12] > 0  # the crop is centred on a foreground voxel
    assert abs(fg / n - 0.33) < 0.06
    always = PatchDataset(dm.cache_dir, dm.train_cases, (8, 24, 24), length=1, foreground_oversample=1.0)
    assert all(always.sample(rng)[2][0, 4, 12, 12] > 0 for _ in range(50))


def test_patches_are_a_function_of_seed_and_index(dm):
    ds = dm.train_dataset()
    torch.manual_seed(1)
    a = ds[5]
    torch.manual_seed(2)  # the global torch state plays no part
    again = dm.train_dataset()[5]
    assert torch.equal(a["image"], again["image"]) and torch.equal(a["label"], again["label"])
    assert not torch.equal(a["image"], ds[6]["image"])  # another index: another patch
    other_seed = PatchDataset(
        dm.cache_dir, dm.train_cases, dm.patch_size, length=1, transforms=dm.train_transforms(), seed=1
    )
    assert not torch.equal(a["image"], other_seed[5]["image"])


def _case_ids(loader):
    return [tuple(b["case_id"]) + (float(b["image"].sum()),) for b in loader]


def test_epochs_differ_and_workers_do_not_matter(dm):
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(0)
    epoch0 = _case_ids(loader)
    loader.sampler.set_epoch(1)
    epoch1 = _case_ids(loader)
    assert epoch0 != epoch1
    dm.hparams.num_workers = 2
    try:
        with_workers = dm.train_dataloader()
        with_workers.sampler.set_epoch(1)
        assert _case_ids(with_workers) == epoch1  # same patches in worker processes
    finally:
        dm.hparams.num_workers = 0


def test_val_and_predict_batches_are_whole_cases(dm):
    (batch,) = list(dm.val_dataloader())
    props = dm.case_properties(dm.val_cases[0])
    assert batch["case_id"] == dm.val_cases
    assert batch["image"].shape == (1, 1, *props["preprocessed_shape"])
    assert batch["label"].shape == batch["image"].shape and batch["label"].dtype == torch.int64
    torch.testing.assert_close(batch["spacing"], torch.tensor([[3.0, 2.5, 2.5]]))
    preds = list(dm.predict_dataloader())
    assert [p["case_id"][0] for p in preds] == sorted(dm.train_cases + dm.val_cases)
    assert preds[0]["original_shape"].shape == (1, 3) and preds[0]["affine"].shape == (1, 4, 4)
    # scoring on the original grid: the stored annotation and the geometry travel with the case
    seg = nib.load(dm.data_dir / dm.val_cases[0] / "segmentation.nii.gz")
    assert batch["original_label"].shape == (1, *seg.shape) and batch["original_shape"].tolist() == [list(seg.shape)]
    np.testing.assert_array_equal(batch["original_label"][0].numpy(), np.asarray(seg.dataobj))
    with pytest.raises(DataError, match="no test cases"):  # this datamodule holds none out
        dm.test_dataloader()


def test_state_dict_round_trip(dm, tmp_path):
    state = dm.state_dict()
    assert state["preprocessor"] == dm.preprocessor.to_dict()
    other = KiTS19DataModule(str(tmp_path / "x"))
    other.load_state_dict(state)
    assert other.preprocessor.to_dict() == dm.preprocessor.to_dict()


def test_setup_without_prepare_is_a_clear_error(dm, tmp_path):
    shutil.copytree(dm.data_dir, tmp_path / "data")
    fresh = KiTS19DataModule(str(tmp_path / "data"), num_val_cases=1)
    with pytest.raises(DataError, match="fingerprint"):
        fresh.setup("fit")


def test_three_disjoint_splits_and_test_batches_on_the_original_grid(dm, tmp_path):
    shutil.copytree(dm.data_dir, tmp_path / "data")
    three = KiTS19DataModule(
        str(tmp_path / "data"), target_spacing=(3.0, 2.5, 2.5), num_val_cases=1, num_test_cases=1, num_workers=0
    )
    three.prepare_data()
    three.setup("test")
    train, val, test = three.train_cases, three.val_cases, three.test_cases
    assert (len(train), len(val), len(test)) == (2, 1, 1) and not (
        set(train) & set(val) or set(test) & set(train + val)
    )
    assert three.fingerprint["train_cases"] == train  # statistics from the training cases only
    split = json.loads((three.cache_dir / "split.json").read_text())
    assert split == {"train": train, "val": val, "test": test}
    (batch,) = list(three.test_dataloader())
    assert batch["case_id"] == test
    seg = np.asarray(nib.load(tmp_path / "data" / test[0] / "segmentation.nii.gz").dataobj)
    np.testing.assert_array_equal(batch["original_label"][0].numpy(), seg)


def test_filling_an_empty_folder_is_announced(tmp_path, capsys):
    """A recipe that writes synthetic cases into an empty data folder says so in one line naming the folder and the
    count; the generic datamodule never fills a folder (an empty one is an error naming it)."""
    from segzoo.data.datamodule import PatchDataModule
    from segzoo.data.io import DataError

    data = tmp_path / "empty"
    data.mkdir()
    dm = KiTS19DataModule(
        str(data), synthetic_cases=2, target_spacing=[3.0, 4.0, 4.0], patch_size=[8, 32, 32], num_workers=0
    )
    dm.prepare_data()
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "synthetic" in line]
    assert len(lines) == 1 and str(data) in lines[0] and "writing 2 synthetic cases" in lines[0]
    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(DataError, match=str(other)):
        PatchDataModule(str(other))
    assert not any(other.iterdir())
