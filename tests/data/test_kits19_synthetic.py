"""Synthetic KiTS19 generator: official layout, dtypes, labels, affine convention, determinism, anatomy."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from segzoo.data.synthetic import write_synthetic
from segzoo.data.synthetic.kits19 import synth_kits19_case, write_kits19


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("kits19")
    folders = write_kits19(out, cases=3, seed=5, unlabelled=1)
    return out, folders


def test_layout_dtypes_labels(synth_dir):
    out, folders = synth_dir
    assert [f.name for f in folders] == ["case_00000", "case_00001", "case_00002"]
    assert sorted(p.name for p in out.iterdir()) == ["case_00000", "case_00001", "case_00002"]
    for i, folder in enumerate(folders):
        img = nib.load(folder / "imaging.nii.gz")
        assert img.get_data_dtype() == np.int16
        data = np.asarray(img.dataobj)
        d, h, w = data.shape
        assert 32 <= d <= 44 and (h, w) == (128, 128)  # (slices, H, W)
        assert -1024 <= data.min() and data.max() <= 3071
        seg_path = folder / "segmentation.nii.gz"
        if i == 2:  # the last `unlabelled` cases are inference-only
            assert not seg_path.exists()
            continue
        seg = nib.load(seg_path)
        assert seg.get_data_dtype() == np.uint8
        labels = np.asarray(seg.dataobj)
        assert labels.shape == data.shape
        assert set(np.unique(labels).tolist()) == {0, 1, 2}  # every labelled case has kidney and tumour
        np.testing.assert_allclose(seg.affine, img.affine)
    assert not list(out.rglob("*.tmp*"))  # atomic writes leave no temporary files


def test_affine_convention(synth_dir):
    _, folders = synth_dir
    for folder in folders:
        aff = nib.load(folder / "imaging.nii.gz").affine
        col_norms = np.linalg.norm(aff[:3, :3], axis=0)
        assert 2.85 <= col_norms[0] <= 3.15  # slice axis first, ~3 mm
        assert 1.85 <= col_norms[1] <= 2.15 and col_norms[1] == pytest.approx(col_norms[2])
        # KiTS19 "interpolated" orientation: axis 0 -> -z, axis 1 -> -y, axis 2 -> -x (non-RAS)
        assert aff[2, 0] < 0 and aff[1, 1] < 0 and aff[0, 2] < 0
        assert nib.aff2axcodes(aff) == ("I", "P", "L")


def test_deterministic_per_seed_and_index(tmp_path):
    a = synth_kits19_case(np.random.default_rng((7, 1)))
    b = synth_kits19_case(np.random.default_rng((7, 1)))
    c = synth_kits19_case(np.random.default_rng((8, 1)))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert a[0].shape != c[0].shape or not np.array_equal(a[0], c[0])
    # case 1 of a run is the same whether written as part of 2 cases or alone with start_index=1
    write_kits19(tmp_path / "all", cases=2, seed=7)
    write_kits19(tmp_path / "one", cases=1, seed=7, start_index=1)
    x = np.asarray(nib.load(tmp_path / "all/case_00001/imaging.nii.gz").dataobj)
    y = np.asarray(nib.load(tmp_path / "one/case_00001/imaging.nii.gz").dataobj)
    np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(x, a[0])


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_tumour_touches_kidney_and_intensities(seed):
    image, label, _ = synth_kits19_case(np.random.default_rng((seed, 0)))
    tumour, kidney = label == 2, label == 1
    assert tumour.sum() > 20
    assert (ndimage.binary_dilation(tumour) & kidney).any()  # protrudes from / touches a kidney
    # two kidneys: two connected components of label > 0
    assert ndimage.label(label > 0)[1] == 2
    t_mean, k_mean = image[tumour].mean(), image[kidney].mean()
    assert 70 <= t_mean <= 150 and 120 <= k_mean <= 210 and t_mean < k_mean
    assert (image > 350).sum() > 100  # bone distractor
    assert (image < -600).any()  # air / gas


def test_registry_and_bad_arguments(tmp_path):
    folders = write_synthetic("kits19", tmp_path, cases=1, seed=0)
    assert (folders[0] / "imaging.nii.gz").is_file()
    with pytest.raises(ValueError, match="size"):
        write_kits19(tmp_path, cases=1, size="huge")
    with pytest.raises(ValueError, match="unlabelled"):
        write_kits19(tmp_path, cases=1, unlabelled=2)
