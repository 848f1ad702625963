"""Synthetic KiTS19 generator: official layout, dtypes, labels, affine convention, determinism, anatomy."""

from __future__ import annotations

import dataclasses

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from segzoo.data.synthetic import write_synthetic
from segzoo.data.synthetic.kits19 import REGIMES, KiTS19Regime, synth_kits19_case, write_kits19


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
        assert d >= 16 and h == w and 96 <= h <= 192  # (slices, H, W)
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
        assert 1.0 <= col_norms[0] <= 5.0  # slice axis first, 1-5 mm
        assert 1.25 <= col_norms[1] <= 2.5 and col_norms[1] == pytest.approx(col_norms[2])  # "small": 2.5 x 0.5-1 mm
        # KiTS19 "interpolated" orientation: axis 0 -> -z, axis 1 -> -y, axis 2 -> -x (non-RAS)
        assert aff[2, 0] < 0 and aff[1, 1] < 0 and aff[0, 2] < 0
        assert nib.aff2axcodes(aff) == ("I", "P", "L")


@pytest.mark.slow  # writes and re-reads several cases: 5 s
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
def test_tumour_touches_kidney_and_distractors(seed):
    image, label, _ = synth_kits19_case(np.random.default_rng((seed, 0)))
    tumour, kidney = label == 2, label == 1
    assert tumour.sum() > 0
    assert (ndimage.binary_dilation(tumour) & kidney).any()  # protrudes from / touches a kidney
    assert 1 <= ndimage.label(label > 0)[1] <= 2  # one component per kidney (with its tumours and cysts)
    assert (image > 350).sum() > 100  # bone distractor
    assert (image < -600).any()  # air / gas


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nephrographic_tumour_is_hypo_enhancing(seed):
    regime = KiTS19Regime(phases=("nephrographic",), tumour_radius=(10.0, 20.0), noise_sigma=(10.0, 10.0))
    image, label, _ = synth_kits19_case(np.random.default_rng((seed, 0)), regime=regime)
    t_mean, k_mean = image[label == 2].mean(), image[label == 1].mean()
    assert 20 <= t_mean < k_mean <= 230


def test_regimes_differ_where_they_should():
    def draw(name, i):
        return synth_kits19_case(np.random.default_rng((3, i)), regime=name)

    for i in range(3):
        _, label, affine = draw("heldout_thickness", i)
        assert 4.5 <= np.linalg.norm(affine[:3, 0]) <= 5.0
        _, label, affine = draw("train", i)
        assert 1.5 <= np.linalg.norm(affine[:3, 0]) <= 4.0
        # small tumours: every lesion within a 6 mm radius (x 1.2 axes x 1.12 outline x the voxel grid)
        _, label, affine = draw("heldout_small_tumour", i)
        voxel = np.prod(np.linalg.norm(affine[:3, :3], axis=0))
        parts, n = ndimage.label(label == 2)
        sizes = np.bincount(parts.ravel())[1:] * voxel
        assert n >= 1 and sizes.max() < 4 / 3 * np.pi * (6 * 1.2 * 1.12 + 5) ** 3
    # delayed phase: contrast in the collecting system, brighter than any cortex of the training phases
    image, label, _ = draw("heldout_phase", 0)
    assert np.percentile(image[label == 1], 99.5) > 280


def test_large_geometry_is_a_real_abdominal_ct():
    from segzoo.data.synthetic.kits19 import REGIMES, _geometry

    for i in range(20):
        shape, spacing, body, (z0, z_lo, z_hi) = _geometry(np.random.default_rng(i), REGIMES["all"], "large")
        # field of view set to the body (width 250 mm x scale, x 1.05-1.35), 512 pixels across it
        assert shape[1:] == (512, 512) and spacing[1] == spacing[2]
        assert 1.05 <= 512 * spacing[1] / (250 * body) <= 1.35 and 0.4 < spacing[1] < 0.85
        # the whole abdomen along the slices, the kidney region (130-170 mm) a fraction of it, inside it
        coverage = shape[0] * spacing[0]
        assert 1.0 <= spacing[0] <= 5.0 and 320 - spacing[0] <= coverage <= 480 + spacing[0]
        top = z0 + (shape[0] - 1) * spacing[0]
        assert z0 < z_lo < z_hi <= top <= z_hi + 60 and (z_hi - z_lo) / coverage < 0.55


@pytest.mark.slow
def test_large_case_kidneys_a_fraction_of_the_slices_body_fills_the_view():
    regime = dataclasses.replace(REGIMES["train"], slice_thickness=(5.0, 5.0))  # few slices: a quick draw
    image, label, affine = synth_kits19_case(np.random.default_rng(7), size="large", regime=regime)
    assert image.shape[1:] == (512, 512) and 64 <= image.shape[0] <= 96
    assert abs(np.linalg.norm(affine[:3, 0]) - 5.0) < 1e-9
    slices = np.flatnonzero(label.any(axis=(1, 2)))
    assert slices.size and slices.size < 0.5 * image.shape[0]  # kidneys in a fraction of the slices
    assert slices.max() > image.shape[0] // 2  # upper abdomen: the pelvis lies below them
    body = image > -500
    assert body.any(axis=(1, 2)).all()  # body in every slice, air around it in-plane
    columns = np.flatnonzero(body[slices[0]].any(axis=0))
    assert 0.6 < (columns[-1] - columns[0] + 1) / 512 < 1.0
    # below the kidneys, the pelvis: the iliac wings at least double the bone (spine alone) of a kidney slice
    bone = (image > 600).sum(axis=(1, 2))
    assert bone[: slices.min()].max() > 2 * np.median(bone[slices])


def test_heldout_cycles_regimes(tmp_path):
    write_kits19(tmp_path, cases=3, seed=1, regime="heldout", start_index=1)
    thickness = [np.linalg.norm(nib.load(f).affine[:3, 0]) for f in sorted(tmp_path.glob("case_*/imaging.nii.gz"))]
    # case i uses HELDOUT[i % 3]: case 1 thick slices, cases 2 and 3 (small tumours, delayed phase) training's
    assert 4.5 <= thickness[0] <= 5.0 and all(1.5 <= t <= 4.0 for t in thickness[1:])


def test_registry_and_bad_arguments(tmp_path):
    folders = write_synthetic("kits19", tmp_path, cases=1, seed=0)
    assert (folders[0] / "imaging.nii.gz").is_file()
    with pytest.raises(ValueError, match="size"):
        write_kits19(tmp_path, cases=1, size="huge")
    with pytest.raises(ValueError, match="unlabelled"):
        write_kits19(tmp_path, cases=1, unlabelled=2)
    with pytest.raises(ValueError, match="regime='nope'"):
        write_kits19(tmp_path, cases=1, regime="nope")
    with pytest.raises(ValueError, match="phases"):
        KiTS19Regime(phases=("portal",))
    with pytest.raises(ValueError, match="slice_thickness"):
        KiTS19Regime(slice_thickness=(3.0, 1.0))


def test_single_appearance_regime_is_the_earlier_generator(tmp_path):
    """Regime "single_appearance" keeps the generator of commit b3e466f: case (0, 0) has the bytes it wrote then
    (digests computed by running that commit's ``synth_kits19_case``), and ``write_kits19`` accepts the name."""
    import hashlib

    image, label, affine = synth_kits19_case(np.random.default_rng((0, 0)), regime="single_appearance")
    assert image.shape == (43, 128, 128) and image.dtype == np.int16 and label.dtype == np.uint8
    assert hashlib.sha256(image.tobytes()).hexdigest()[:16] == "9cd0ce5de8abe1db"
    assert hashlib.sha256(label.tobytes()).hexdigest()[:16] == "16bc701b56bb86f8"
    assert np.isclose(-affine[2, 0], 2.9081947047872387)
    folders = write_kits19(tmp_path, cases=2, seed=0, regime="single_appearance")
    for folder in folders:
        lab = np.asarray(nib.load(folder / "segmentation.nii.gz").dataobj)
        assert set(np.unique(lab)) == {0, 1, 2}
        assert ndimage.label(lab == 2)[1] == 1  # one tumour per case
