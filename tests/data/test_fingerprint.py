"""Dataset fingerprint: foreground statistics against numpy, JSON round trip."""

from __future__ import annotations

import numpy as np
import pytest

from segzoo.data.fingerprint import compute_fingerprint, load_fingerprint, save_fingerprint
from segzoo.data.io import DataError, save_nifti
from segzoo.data.kits19 import find_kits19_cases
from segzoo.data.synthetic.kits19 import kits19_affine

pytestmark = pytest.mark.usefixtures("one_thread")


def _constructed(tmp_path, spacings=((3.0, 0.8, 0.8), (2.5, 1.0, 1.0), (3.5, 0.7, 0.7))):
    rng = np.random.default_rng(0)
    images, labels = [], []
    for i, sp in enumerate(spacings):
        img = rng.integers(-500, 500, size=(6, 20, 20)).astype(np.int16)
        lab = np.zeros(img.shape, np.uint8)
        lab[1:4, 5:12, 5:12] = 1
        lab[2:3, 6:8, 6:9] = 2
        folder = tmp_path / f"case_{i:05d}"
        save_nifti(img, kits19_affine(sp), folder / "imaging.nii.gz")
        save_nifti(lab, kits19_affine(sp), folder / "segmentation.nii.gz")
        images.append(img)
        labels.append(lab)
    return find_kits19_cases(tmp_path), images, labels


def test_fingerprint_matches_numpy(tmp_path):
    cases, images, labels = _constructed(tmp_path)
    fp = compute_fingerprint(cases)  # 147 foreground voxels per case < 10k: all of them are used
    fg = np.concatenate([im[lab > 0].astype(np.float64) for im, lab in zip(images, labels)])
    f = fp["foreground"]
    assert f["num_samples"] == fg.size == 3 * 147
    assert f["percentile_00_5"] == pytest.approx(np.percentile(fg, 0.5))
    assert f["percentile_99_5"] == pytest.approx(np.percentile(fg, 99.5))
    assert f["mean"] == pytest.approx(fg.mean()) and f["std"] == pytest.approx(fg.std())
    assert fp["median_spacing"] == pytest.approx([3.0, 0.8, 0.8])
    assert fp["shapes"]["case_00001"] == [6, 20, 20]
    assert fp["spacings"]["case_00001"] == pytest.approx([2.5, 1.0, 1.0])
    assert fp["train_cases"] == ["case_00000", "case_00001", "case_00002"]
    # sampling cap, seeded: same seed -> same numbers
    capped = compute_fingerprint(cases, samples_per_case=50, seed=3)
    assert capped["foreground"]["num_samples"] == 150
    assert capped == compute_fingerprint(cases, samples_per_case=50, seed=3)
    assert set(capped["foreground"].values()) != set(compute_fingerprint(cases, 50, seed=4)["foreground"].values())


def test_fingerprint_save_load(tmp_path):
    cases, _, _ = _constructed(tmp_path / "data")
    fp = compute_fingerprint(cases)
    path = save_fingerprint(fp, tmp_path / "fp" / "fingerprint.json")
    assert load_fingerprint(path) == fp
    path.write_text("{not json")
    with pytest.raises(DataError, match="fingerprint.json: dataset fingerprint is not valid JSON"):
        load_fingerprint(path)
    with pytest.raises(DataError, match="not found"):
        load_fingerprint(tmp_path / "missing.json")
    (tmp_path / "data/case_00000/segmentation.nii.gz").unlink()
    with pytest.raises(DataError, match="labelled"):
        compute_fingerprint(find_kits19_cases(tmp_path / "data"))
