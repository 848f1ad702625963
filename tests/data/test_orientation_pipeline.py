"""Training side of the orientation pipeline: the fingerprint records the training orientation, a case re-saved in
another orientation is cached exactly like the original, and `segzoo predict` writes it back in its own layout."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest

from segzoo.data.cache import cache_paths, preprocess_dataset
from segzoo.data.fingerprint import compute_fingerprint
from segzoo.data.kits19 import find_kits19_cases
from segzoo.data.preprocessor import CTPreprocessor
from segzoo.data.synthetic.kits19 import write_kits19

pytestmark = pytest.mark.usefixtures("one_thread")


def resave(folder, ornt_codes=None):
    """Re-save a case folder's image and label as nibabel's closest canonical (RAS, slices last) or LPS."""
    for name in ("imaging.nii.gz", "segmentation.nii.gz"):
        img = nib.load(folder / name)
        if ornt_codes is None:
            out = nib.as_closest_canonical(img)
        else:
            t = nib.orientations.ornt_transform(
                nib.orientations.io_orientation(img.affine), nib.orientations.axcodes2ornt(ornt_codes)
            )
            out = img.as_reoriented(t)
        nib.save(out, folder / name)


@pytest.fixture(scope="module")
def kits(tmp_path_factory):
    root = tmp_path_factory.mktemp("kits")
    write_kits19(root / "orig", cases=3, seed=0)
    shutil.copytree(root / "orig", root / "mixed")
    resave(root / "mixed" / "case_00001")  # RAS
    resave(root / "mixed" / "case_00002", ("L", "P", "S"))  # LPS, slices last
    return root


def test_fingerprint_records_orientation_and_ignores_storage(kits):
    orig = compute_fingerprint(find_kits19_cases(kits / "orig"), samples_per_case=200)
    mixed = compute_fingerprint(find_kits19_cases(kits / "mixed"), samples_per_case=200)
    assert orig["orientation"] == ["I", "P", "L"] and mixed["orientation"] == [
        "I",
        "P",
        "L",
    ]  # mixed: a three-way tie, the first case wins
    assert mixed["orientations"]["case_00001"] == ["R", "A", "S"]
    assert mixed["orientations"]["case_00002"] == ["L", "P", "S"]
    for key in ("foreground", "spacings", "shapes", "median_spacing"):
        assert mixed[key] == orig[key], key  # the same voxels, whatever the storage


def test_cache_holds_the_same_arrays_and_predict_maps_back(kits, tmp_path):
    fp = compute_fingerprint(find_kits19_cases(kits / "orig"), samples_per_case=200)
    pre = CTPreprocessor.from_fingerprint(fp, target_spacing=(3.0, 4.0, 4.0))
    assert pre.orientation == ("I", "P", "L") and pre.to_dict()["orientation"] == ["I", "P", "L"]
    a = preprocess_dataset(find_kits19_cases(kits / "orig"), tmp_path / "a", pre, progress=False)
    b = preprocess_dataset(find_kits19_cases(kits / "mixed"), tmp_path / "b", pre, progress=False)
    for case in ("case_00001", "case_00002"):
        for key in ("image", "label"):
            np.testing.assert_array_equal(
                np.load(cache_paths(tmp_path / "a", case)[key]), np.load(cache_paths(tmp_path / "b", case)[key])
            )
        assert b[case]["oriented_shape"] == a[case]["original_shape"]
        assert b[case]["original_shape"] != a[case]["original_shape"]  # stored slices-last
        json.dumps(b[case])


@pytest.mark.slow
def test_predict_writer_keeps_each_input_layout_and_header(kits, tmp_path):
    import lightning.pytorch as pl

    from segzoo.data import KiTS19DataModule
    from segzoo.inference.sliding_window import SlidingWindowTTAInferer
    from segzoo.losses import CELoss
    from segzoo.nets import create_net
    from segzoo.tasks import NiftiPredictionWriter, SegmentationTask

    data = tmp_path / "data"
    shutil.copytree(kits / "mixed", data)
    dm = KiTS19DataModule(
        data_dir=str(data), target_spacing=(3.0, 4.0, 4.0), patch_size=(16, 32, 32), num_val_cases=1, num_workers=0
    )
    net = create_net("mss_unet3d_small", base_features=4, max_features=16)
    task = SegmentationTask(
        net=net, loss=CELoss(), inferer=SlidingWindowTTAInferer(roi_size=(16, 32, 32), mirror_axes=None)
    )
    out = tmp_path / "pred"
    trainer = pl.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, callbacks=[NiftiPredictionWriter(str(out))]
    )
    trainer.predict(task, datamodule=dm, return_predictions=False)
    for case in ("case_00000", "case_00001", "case_00002"):
        src = nib.load(data / case / "imaging.nii.gz")
        pred = nib.load(out / f"{case}.nii.gz")
        assert pred.shape == src.shape
        np.testing.assert_array_equal(pred.header.get_qform(), src.header.get_qform())
        np.testing.assert_array_equal(pred.header.get_sform(), src.header.get_sform())
        assert nib.aff2axcodes(pred.affine) == nib.aff2axcodes(src.affine)
