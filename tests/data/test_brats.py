"""BraTS: synthetic NIfTI generator, reader (layouts, co-registration, labels, errors) and the 2D DataModule."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage

from segzoo.data.brats import BRATS_MODALITIES, find_brats_cases, load_brats_case
from segzoo.data.datamodule_2d import BraTSDataModule, fit_slices, select_slices
from segzoo.data.io import DataError, save_nifti
from segzoo.data.synthetic import write_synthetic
from segzoo.data.synthetic.brats import write_brats

SHAPE = (96, 96, 48)
AFFINE = np.array([[-2.5, 0, 0, 0], [0, -2.5, 0, 237.5], [0, 0, 3.25, 0], [0, 0, 0, 1]])


@pytest.fixture(scope="module")
def flat_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("brats_flat")
    write_synthetic("brats", root, cases=3, seed=0)
    return root


@pytest.fixture(scope="module")
def root_2018(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("brats_2018")
    write_brats(root, cases=2, seed=1, layout="2018")
    return root


@pytest.fixture
def case_copy(flat_root, tmp_path) -> Path:
    dst = tmp_path / "BraTS2021_00000"
    shutil.copytree(flat_root / "BraTS2021_00000", dst)
    return dst


def _seg(case: Path) -> np.ndarray:
    return np.asarray(nib.load(case / f"{case.name}_seg.nii.gz").dataobj)


# ------------------------------------------------------------------------------------------------ generator
def test_layouts_shapes_and_dtypes(flat_root, root_2018):
    assert sorted(p.name for p in flat_root.iterdir()) == ["BraTS2021_00000", "BraTS2021_00002", "BraTS2021_00003"]
    assert sorted(p.relative_to(root_2018).as_posix() for p in root_2018.glob("*/*")) == [
        "HGG/Brats18_2013_0_1",
        "LGG/Brats18_CBICA_AAB_1",
    ]
    for case in [*flat_root.iterdir(), *root_2018.glob("*/*")]:
        names = sorted(p.name for p in case.iterdir())
        assert names == sorted(f"{case.name}_{m}.nii.gz" for m in (*BRATS_MODALITIES, "seg"))
        for m in BRATS_MODALITIES:
            img = nib.load(case / f"{case.name}_{m}.nii.gz")
            assert img.shape == SHAPE and img.get_data_dtype() == np.int16
            np.testing.assert_allclose(img.affine, AFFINE)
        seg = nib.load(case / f"{case.name}_seg.nii.gz")
        assert seg.get_data_dtype() == np.uint8 and seg.shape == SHAPE
    assert set(np.unique(_seg(root_2018 / "HGG/Brats18_2013_0_1")).tolist()) == {0, 1, 2, 4}
    assert set(np.unique(_seg(root_2018 / "LGG/Brats18_CBICA_AAB_1")).tolist()) == {0, 1, 2}  # no enhancing


@pytest.mark.parametrize("case_name", ["BraTS2021_00000", "BraTS2021_00002", "BraTS2021_00003"])
def test_labels_nested(flat_root, case_name):
    seg = _seg(flat_root / case_name)
    enhancing = (seg == 4).any()

    def touching(value: int) -> set[int]:  # label values 6-adjacent to the region `value`
        mask = seg == value
        return set(np.unique(seg[ndimage.binary_dilation(mask) & ~mask]).tolist())

    assert touching(1) <= ({1, 4} if enhancing else {1, 2})  # necrosis inside the rim (or the oedema)
    if enhancing:
        assert touching(4) <= {1, 2, 4} and 2 in touching(4)  # rim surrounded by oedema, never background
    assert 0 in touching(2)  # oedema is the outer layer
    # one tumour: the whole tumour is one connected component
    assert ndimage.label(seg > 0)[1] == 1


def test_modality_contrast(flat_root):
    case = flat_root / "BraTS2021_00000"
    seg = _seg(case)
    img = {m: np.asarray(nib.load(case / f"{case.name}_{m}.nii.gz").dataobj).astype(float) for m in BRATS_MODALITIES}
    brain = (img["t1"] > 0) & (seg == 0)

    def mean(m: str, mask: np.ndarray) -> float:
        return float(img[m][mask].mean())

    assert mean("t1ce", seg == 4) > 1.4 * mean("t1ce", brain)  # enhancing rim bright on t1ce only
    assert mean("t1ce", seg == 4) > 1.4 * mean("t1", seg == 4)
    assert mean("flair", seg == 2) > 1.5 * mean("flair", brain)  # oedema bright on flair
    assert mean("t2", seg == 2) > 1.5 * mean("t2", brain) and mean("t2", seg == 1) > 1.5 * mean("t2", brain)
    assert mean("t1", seg == 1) < 0.7 * mean("t1", brain)
    for m in BRATS_MODALITIES:  # skull-stripped: exactly zero outside the brain
        assert img[m][0, 0, 0] == 0 and 0.1 < (img[m] > 0).mean() < 0.3  # real BraTS: ~16 %


def test_deterministic_per_seed(tmp_path, flat_root, root_2018):
    again = write_brats(tmp_path, cases=1, seed=0)[0]  # the fixture's first case, seed 0
    other = root_2018 / "HGG" / "Brats18_2013_0_1"  # first case of seed 1
    for m in (*BRATS_MODALITIES, "seg"):
        arr = [np.asarray(nib.load(x / f"{x.name}_{m}.nii.gz").dataobj) for x in (flat_root / again.name, again)]
        np.testing.assert_array_equal(arr[0], arr[1])
        assert not np.array_equal(arr[0], np.asarray(nib.load(other / f"{other.name}_{m}.nii.gz").dataobj))


# ------------------------------------------------------------------------------------------------ reader
def test_find_both_layouts_and_plain_nii(flat_root, root_2018, tmp_path):
    assert [p.name for p in find_brats_cases(flat_root)] == ["BraTS2021_00000", "BraTS2021_00002", "BraTS2021_00003"]
    assert [p.parent.name for p in find_brats_cases(root_2018)] == ["HGG", "LGG"]
    # uncompressed .nii files are accepted
    case = tmp_path / "nii" / "BraTS2021_00000"
    case.mkdir(parents=True)
    for p in (flat_root / "BraTS2021_00000").iterdir():
        (case / p.name.removesuffix(".gz")).write_bytes(gzip.decompress(p.read_bytes()))
    assert find_brats_cases(tmp_path / "nii") == [case]
    loaded, reference = load_brats_case(case), load_brats_case(flat_root / "BraTS2021_00000")
    np.testing.assert_array_equal(loaded.image, reference.image)
    # the same case twice (e.g. under HGG and LGG) is an error
    shutil.copytree(root_2018 / "HGG" / "Brats18_2013_0_1", root_2018.parent / "dup" / "LGG" / "Brats18_2013_0_1")
    shutil.copytree(root_2018 / "HGG", root_2018.parent / "dup" / "HGG")
    with pytest.raises(DataError, match="Brats18_2013_0_1 also found"):
        find_brats_cases(root_2018.parent / "dup")
    with pytest.raises(DataError, match="no BraTS cases found"):
        find_brats_cases(tmp_path / "nii" / "BraTS2021_00000")


def test_load_case(flat_root):
    case_dir = flat_root / "BraTS2021_00002"
    case = load_brats_case(case_dir)
    assert case.image.shape == (4, *SHAPE) and case.image.dtype == np.float32
    for i, m in enumerate(BRATS_MODALITIES):  # modality order t1, t1ce, t2, flair
        np.testing.assert_array_equal(case.image[i], nib.load(case_dir / f"{case_dir.name}_{m}.nii.gz").get_fdata())
    np.testing.assert_array_equal(case.label, _seg(case_dir))
    assert case.label.dtype == np.uint8 and case.spacing == (2.5, 2.5, 3.25) and case.case_id == case_dir.name
    np.testing.assert_allclose(case.affine, AFFINE)


def test_error_bad_label_and_brats2023_convention(case_copy):
    seg_path = case_copy / f"{case_copy.name}_seg.nii.gz"
    seg = _seg(case_copy).copy()
    seg[seg == 4] = 3  # BraTS 2023 writes enhancing tumour as 3
    save_nifti(seg, AFFINE, seg_path)
    with pytest.raises(DataError, match=r"_seg\.nii\.gz: unexpected label values \[3\]"):
        load_brats_case(case_copy)
    loaded = load_brats_case(case_copy, et_label=3)
    np.testing.assert_array_equal(loaded.label, np.where(seg == 3, 4, seg))
    seg[0, 0, 0] = 7
    save_nifti(seg, AFFINE, seg_path)
    with pytest.raises(DataError, match=r"unexpected label values \[7\]"):
        load_brats_case(case_copy, et_label=3)


def test_error_geometry_mismatch(case_copy):
    flair = case_copy / f"{case_copy.name}_flair.nii.gz"
    save_nifti(np.zeros((96, 96, 40), dtype=np.int16), AFFINE, flair)
    with pytest.raises(DataError, match=r"_flair\.nii\.gz: shape \(96, 96, 40\) differs from .*_t1\.nii\.gz"):
        load_brats_case(case_copy)
    shifted = AFFINE.copy()
    shifted[0, 3] = 5.0
    save_nifti(np.zeros(SHAPE, dtype=np.int16), shifted, flair)
    with pytest.raises(DataError, match=r"_flair\.nii\.gz: affine differs"):
        load_brats_case(case_copy)
    shutil.copy(case_copy / f"{case_copy.name}_t1.nii.gz", flair)
    save_nifti(np.zeros((96, 96, 47), dtype=np.uint8), AFFINE, case_copy / f"{case_copy.name}_seg.nii.gz")
    with pytest.raises(DataError, match=r"_seg\.nii\.gz: label shape"):
        load_brats_case(case_copy)


def test_error_missing_and_corrupt(case_copy):
    t2 = case_copy / f"{case_copy.name}_t2.nii.gz"
    t2.write_bytes(t2.read_bytes()[:1000])
    with pytest.raises(DataError, match=r"_t2\.nii\.gz: cannot read NIfTI"):
        load_brats_case(case_copy)
    t2.unlink()
    with pytest.raises(DataError, match=r"_t2\.nii\.gz: file not found"):
        load_brats_case(case_copy)


# ------------------------------------------------------------------------------------------------ slices
def test_select_slices_largest2_by_hand():
    label = np.zeros((6, 4, 4), dtype=np.uint8)
    label[1, :2, :2] = 1  # area 4
    label[2, :3, :3] = 2  # area 9
    label[4, :1, :3] = 3  # area 3
    label[5, :2, :2] = 1  # area 4, tie with slice 1
    np.testing.assert_array_equal(select_slices(label, "largest2"), [1, 2])  # ties go to the lower index
    np.testing.assert_array_equal(select_slices(label, "largest1"), [2])
    np.testing.assert_array_equal(select_slices(label, "largest9"), [1, 2, 4, 5])  # never an empty slice
    np.testing.assert_array_equal(select_slices(label, "lesion"), [1, 2, 4, 5])
    np.testing.assert_array_equal(select_slices(label, "all"), np.arange(6))
    with pytest.raises(ValueError, match="slice_selection"):
        select_slices(label, "largest0")


def test_fit_slices_pad_and_resize():
    image = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).reshape(2, 3, 4, 6)
    label = torch.ones(3, 4, 6, dtype=torch.uint8)
    img, lab, factor = fit_slices(image, label, (8, 8), "pad")
    assert img.shape == (2, 3, 8, 8) and factor == (1.0, 1.0)
    torch.testing.assert_close(img[:, :, 2:6, 1:7], image)  # centred
    assert lab.sum() == label.sum() and img[:, :, :2].abs().sum() == 0
    img, lab, factor = fit_slices(image, label, (8, 12), "resize")
    assert img.shape == (2, 3, 8, 12) and lab.shape == (3, 8, 12) and factor == (0.5, 0.5)
    assert lab.dtype == torch.uint8 and bool((lab == 1).all())
    with pytest.raises(DataError, match="do not fit"):
        fit_slices(image, label, (2, 8), "pad")


# ------------------------------------------------------------------------------------------------ datamodule
def test_datamodule_largest2(flat_root):
    root = flat_root
    dm = BraTSDataModule(data_dir=str(root), image_size=(128, 128), batch_size=3, synthetic_cases=5)
    assert (dm.num_classes, dm.in_channels, dm.class_names[3]) == (4, 4, "enhancing_tumor")
    dm.prepare_data()  # data present: nothing generated
    dm.setup("fit")
    assert len(dm.train_case_ids) == 2 and len(dm.val_case_ids) == 1  # round(0.6 * 3)
    assert len(dm.train_dataset()) == 4  # two slices per training case

    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (3, 4, 128, 128) and batch["label"].shape == (3, 1, 128, 128)
    assert batch["label"].dtype == torch.int64 and 0 <= batch["label"].min() and batch["label"].max() <= 3

    assert len(list(root.iterdir())) == 3
    for b in dm.val_dataloader():
        assert b["image"].shape == (1, 4, 2, 128, 128) and b["label"].shape == (1, 1, 2, 128, 128)
        # (z, x, y), pad keeps it; the two slices are not neighbours: no slice spacing (NaN, per-slice metrics)
        torch.testing.assert_close(b["spacing"], torch.tensor([[float("nan"), 2.5, 2.5]]), equal_nan=True)
        seg = _seg(root / b["case_id"][0])
        area = (seg > 0).sum(axis=(0, 1))
        top2 = np.sort(np.argsort(-area, kind="stable")[:2])
        expected = np.transpose(seg[:, :, top2], (2, 0, 1))  # the two largest lesion slices as (S, X, Y)
        expected = np.where(expected == 4, 3, expected)
        np.testing.assert_array_equal(b["label"][0, 0, :, 16:112, 16:112].numpy(), expected)  # centred padding
        image = b["image"][0]
        assert image[:, :, :16].abs().sum() == 0  # zero padding, zero background kept by the brain z-score
        brain = image[0] != 0
        assert abs(float(image[0][brain].mean())) < 1.0

    resized = BraTSDataModule(data_dir=str(root), image_size=(64, 64), resize_mode="resize", slice_selection="all")
    resized.setup("test")
    item = resized.eval_dataset()[0]
    assert item["image"].shape == (4, 48, 64, 64)
    torch.testing.assert_close(item["spacing"], torch.tensor([3.25, 3.75, 3.75]))
