"""The KiTS19, CHAOS and BraTS pipelines give the same cached arrays, slice stacks and predictions as before the data
layer was reorganised around dataset sources (issue 22). ``regression_reference.json`` was computed with the code of
commit c08ab66 (before the change); the numbers below are recomputed with today's code on the same synthetic cases."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

REFERENCE = json.loads((Path(__file__).parent / "regression_reference.json").read_text())


def kits(root):
    from segzoo.data.datamodule import KiTS19DataModule
    from segzoo.data.synthetic.kits19 import write_kits19

    write_kits19(root / "kits", cases=3, seed=0, regime="train")
    dm = KiTS19DataModule(
        str(root / "kits"), target_spacing=[3.0, 2.0, 2.0], patch_size=[24, 64, 64], num_val_cases=1, num_workers=0
    )
    dm.prepare_data()
    dm.setup("fit")
    out = {}
    for c in dm.all_cases:
        img = np.load(root / "kits_preprocessed" / f"{c}_img.npy")
        seg = np.load(root / "kits_preprocessed" / f"{c}_seg.npy")
        out[c] = {
            "shape": list(img.shape),
            "img_sum": float(img.astype(np.float64).sum()),
            "img_sq": float((img.astype(np.float64) ** 2).sum()),
            "seg": np.bincount(seg.ravel(), minlength=3).tolist(),
        }
    # a seeded tiny net through the whole-case predictor
    from segzoo.data.kits19 import find_kits19_cases
    from segzoo.inference.predict import Predictor
    from segzoo.inference.sliding_window import SlidingWindowTTAInferer
    from segzoo.nets import MSSUNet

    torch.manual_seed(0)
    net = MSSUNet(in_channels=1, out_channels=3, kernel_size=[3, 3, 3], strides=[1, 2, 2], base_features=4).eval()
    pred = Predictor(
        net, SlidingWindowTTAInferer(roi_size=[24, 64, 64], sw_batch_size=1, mirror_axes=None), dm.preprocessor
    )
    case = find_kits19_cases(root / "kits")[0]
    image, _, affine = case.load()
    labels = pred.predict_volume(image, affine)
    out["prediction"] = np.bincount(labels.ravel(), minlength=3).tolist()
    return out


def slices(root, name):
    from segzoo.data.datamodule_2d import BraTSDataModule, CHAOSDataModule

    cls = {"chaos": CHAOSDataModule, "brats": BraTSDataModule}[name]
    dm = cls(
        str(root / name),
        synthetic_cases=3,
        image_size=[64, 64],
        resize_mode="resize",
        synthetic_size="small",
        num_workers=0,
    )
    dm.prepare_data()
    dm.setup("fit")
    out = {}
    for ds in (dm.train_dataset().cases if hasattr(dm.train_dataset(), "cases") else [], dm.eval_dataset().cases):
        for c in ds:
            out[c.case_id] = {
                "shape": list(c.image.shape),
                "img_sum": float(c.image.double().sum()),
                "label": np.bincount(c.label.numpy().ravel()).tolist(),
            }
    return out


def slice_predictions(root):
    """``segzoo infer`` with a seeded DR-Net on synthetic BraTS and CHAOS folders: per output file the label counts
    (BraTS values 0/1/2/4 on the t1 grid, CHAOS classes on the series grid). The reference was computed with the
    code of f541115, when these checkpoints still predicted through their own ``SlicePredictor``."""
    import json as _json

    from segzoo.cli import main
    from segzoo.data.slice2d import SlicePreprocessor
    from segzoo.data.synthetic.brats import write_brats
    from segzoo.data.synthetic.chaos import write_chaos
    from segzoo.nets import DRNet

    write_brats(root / "brats_2d", cases=2, seed=0, size="small")
    write_chaos(root / "chaos_2d", cases=2, seed=0, size="small")
    pres = {
        "brats": (SlicePreprocessor("brats", 4, (48, 48), "resize", zscore_nonzero=True, label_values=[0, 1, 2, 4],
                                    orientation=("L", "P", "S")), 4, 4),
        "chaos": (SlicePreprocessor("chaos", 1, (48, 48), "resize", sequence="T2SPIR"), 1, 5),
    }  # fmt: skip
    out = {}
    for name, (pre, cin, cout) in pres.items():
        torch.manual_seed(1)
        net = DRNet(spatial_dims=2, in_channels=cin, out_channels=cout, features=[8, 16, 16, 16, 16])
        with torch.no_grad():  # weights large enough that every class is predicted somewhere
            for p in net.parameters():
                if p.ndim > 1:
                    p.normal_(0, 0.3)
        model = root / f"model_{name}"
        net.save_pretrained(model)
        (model / "preprocessor.json").write_text(_json.dumps(pre.to_dict()))
        (model / "inference.json").write_text(_json.dumps({"roi_size": list(pre.image_size)}))
        pred = root / f"pred_{name}"
        assert main(["infer", "--ckpt", str(model), "--input", str(root / f"{name}_2d"), "--output", str(pred)]) == 0
        for f in sorted(pred.glob("*.nii.gz")):
            from segzoo.data.io import load_nifti

            labels, affine = load_nifti(f)
            out[f"{name}/{f.name}"] = {
                "shape": list(labels.shape),
                "affine": np.round(affine, 4).tolist(),
                "labels": np.bincount(labels.ravel().astype(np.int64), minlength=5).tolist(),
            }
    return out


@pytest.mark.slow
def test_brats_and_chaos_checkpoints_predict_as_before(tmp_path):
    ref, now = REFERENCE["slice_predictions"], slice_predictions(tmp_path)
    assert sorted(now) == sorted(ref)
    for name, expected in ref.items():
        got = now[name]
        assert got["shape"] == expected["shape"]
        np.testing.assert_allclose(got["affine"], expected["affine"], atol=1e-3)
        # equal here (0 of 1,359,872 voxels differ); a few voxels of slack for another CPU's float rounding
        np.testing.assert_allclose(got["labels"], expected["labels"], atol=max(10, 1e-5 * sum(expected["labels"])))


@pytest.fixture(scope="module")
def today(tmp_path_factory):
    root = tmp_path_factory.mktemp("regression")
    return {"kits19": kits(root), "chaos": slices(root, "chaos"), "brats": slices(root, "brats")}


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["kits19", "chaos", "brats"])
def test_same_arrays_and_predictions_as_before(today, dataset):
    ref, now = REFERENCE[dataset], today[dataset]
    assert sorted(now) == sorted(ref)
    for case, expected in ref.items():
        got = now[case]
        if case == "prediction":  # a seeded net's labels on the case's original grid
            np.testing.assert_allclose(got, expected, atol=max(10, 1e-5 * sum(expected)))
            continue
        assert got["shape"] == expected["shape"]
        for key in ("img_sum", "img_sq"):
            if key in expected:
                np.testing.assert_allclose(got[key], expected[key], rtol=1e-6, atol=1e-3)
        for key in ("seg", "label"):
            if key in expected:
                assert got[key] == expected[key]
