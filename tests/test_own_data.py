"""A user's own dataset end to end, as the README walks it: verify -> plan -> fit (MSS U-Net, a few steps) -> infer ->
evaluate, on a two-channel, four-label, anisotropic nnU-Net raw dataset stored in mixed orientations; the Decathlon
and datalist forms train too; segzoo's per-label Dice equals nnU-Net's ``compute_metrics_on_folder``."""

import json
import shutil

import nibabel as nib
import numpy as np
import pytest

from segzoo.cli import main
from segzoo.data.synthetic.nnunet import write_nnunet

TINY = [
    "--trainer.accelerator",
    "cpu",
    "--trainer.precision",
    "32-true",
    "--trainer.max_epochs",
    "1",
    "--trainer.check_val_every_n_epoch",
    "1",
    "--trainer.logger",
    "CSVLogger",
    "--trainer.enable_progress_bar",
    "false",
    "--trainer.enable_model_summary",
    "false",
    "--data.iterations_per_epoch",
    "2",
    "--data.num_workers",
    "0",
    "--data.num_val_cases",
    "1",
    "--data.max_patch_voxels",
    "8192",
    "--data.base_features",
    "4",
    "--data.max_features",
    "16",
    "--model.net.init_args.base_features",
    "4",
    "--model.net.init_args.max_features",
    "16",
]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("own") / "Dataset501_Synth"
    write_nnunet(root, cases=4, test_cases=2, seed=1)
    return root


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    args = ["fit", "--config", "mss_unet3d", "--data.data_dir", str(dataset), "--trainer.default_root_dir", str(run)]
    assert main([*args, *TINY, "--trainer.logger.save_dir", str(run)]) == 0
    return run


def test_walkthrough(dataset, trained, tmp_path, capsys):
    assert main(["verify", str(dataset)]) == 0
    assert main(["plan", str(dataset), "--out", str(tmp_path / "plan.json")]) == 0
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["normalization"] == ["ct", "zscore"] and plan["dataset"]["channel_names"] == ["CT", "T2"]
    # the run stored its plan and the checkpoint its per-channel preprocessing
    stored = json.loads((dataset.parent / f"{dataset.name}_preprocessed" / "plan.json").read_text())
    assert stored["normalization"] == ["ct", "zscore"]
    ckpt = trained / "checkpoints" / "last.ckpt"
    from segzoo.checkpoint import load_checkpoint

    loaded = load_checkpoint(ckpt)
    pre = loaded.preprocessor()
    assert type(pre).__name__ == "Preprocessor" and pre.normalization == ["ct", "zscore"]
    assert loaded.net.init_config["init_args"]["in_channels"] == 2
    assert loaded.net.init_config["init_args"]["out_channels"] == 4
    metrics = json.loads((trained / "metrics.json").read_text())
    assert {"organ/dice", "lesion/dice", "vessel/dice", "mean/dice"} <= set(metrics["mean"])

    out = tmp_path / "pred"
    assert (
        main(
            ["infer", "--ckpt", str(ckpt), "--input", str(dataset / "imagesTs"), "--output", str(out), "--tta", "none"]
        )
        == 0
    )
    for case in ("synth_004", "synth_005"):
        pred, src = nib.load(str(out / f"{case}.nii.gz")), nib.load(str(dataset / "imagesTs" / f"{case}_0000.nii.gz"))
        assert pred.shape == src.shape and np.allclose(pred.affine, src.affine)  # the input's own grid, any orientation
        assert set(np.unique(np.asarray(pred.dataobj)).tolist()) <= {0, 1, 2, 3}
    # a whole dataset folder predicts its test cases the same way
    out2 = tmp_path / "pred2"
    assert main(["infer", "--ckpt", str(ckpt), "--input", str(dataset), "--output", str(out2), "--tta", "none"]) == 0
    for case in ("synth_004", "synth_005"):
        a = np.asarray(nib.load(str(out / f"{case}.nii.gz")).dataobj)
        np.testing.assert_array_equal(a, np.asarray(nib.load(str(out2 / f"{case}.nii.gz")).dataobj))


def test_infer_names_a_missing_channel_and_goes_on(dataset, trained, tmp_path, capsys):
    inputs = tmp_path / "in"
    shutil.copytree(dataset / "imagesTs", inputs)
    (inputs / "synth_004_0001.nii.gz").unlink()
    ckpt = trained / "checkpoints" / "last.ckpt"
    code = main(
        ["infer", "--ckpt", str(ckpt), "--input", str(inputs), "--output", str(tmp_path / "o"), "--tta", "none"]
    )
    assert code == 1
    err = capsys.readouterr()
    assert "synth_004_0001.nii.gz" in err.err and "1 written" in err.out and "1 failed" in err.out


def test_evaluate_equals_nnunet_compute_metrics_on_folder(dataset, trained, tmp_path, capsys):
    pytest.importorskip("SimpleITK")
    evaluate = pytest.importorskip("nnunetv2.evaluation.evaluate_predictions")
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    pred, ref = tmp_path / "pred", tmp_path / "ref"
    ckpt = trained / "checkpoints" / "last.ckpt"
    assert (
        main(
            ["infer", "--ckpt", str(ckpt), "--input", str(dataset / "imagesTr"), "--output", str(pred), "--tta", "none"]
        )
        == 0
    )
    shutil.copytree(dataset / "labelsTr", ref)
    assert main(["evaluate", str(pred), str(ref), "--labels", str(dataset / "dataset.json"), "--no-hd95"]) == 0
    ours = json.loads((pred / "summary.json").read_text())
    theirs = evaluate.compute_metrics_on_folder(
        str(ref), str(pred), str(tmp_path / "nnunet_summary.json"), SimpleITKIO(), ".nii.gz", [1, 2, 3], None, 1
    )
    names = {1: "organ", 2: "lesion", 3: "vessel"}
    for row in ours["cases"]:
        case = next(c for c in theirs["metric_per_case"] if c["reference_file"].endswith(f"{row['case_id']}.nii.gz"))
        for label, name in names.items():
            np.testing.assert_allclose(row[f"{name}/dice"], case["metrics"][label]["Dice"], rtol=1e-9, equal_nan=True)
    for label, name in names.items():
        np.testing.assert_allclose(ours["mean"][f"{name}/dice"], theirs["mean"][label]["Dice"], rtol=1e-9)


@pytest.mark.parametrize("form", ["msd", "datalist"])
def test_other_forms_train(form, tmp_path):
    write_nnunet(tmp_path / "ds", cases=3, test_cases=1, seed=2, form=form)
    data = tmp_path / "ds" / ("datalist.json" if form == "datalist" else "")
    run = tmp_path / "run"
    args = ["fit", "--config", "mss_unet3d", "--data.data_dir", str(data), "--trainer.default_root_dir", str(run)]
    assert main([*args, *TINY, "--trainer.logger.save_dir", str(run)]) == 0
    assert (run / "checkpoints" / "last.ckpt").is_file()


def test_broken_dataset_stops_fit_before_writing(dataset, tmp_path, capsys):
    root = tmp_path / dataset.name
    shutil.copytree(dataset, root)
    (root / "imagesTr" / "synth_001_0001.nii.gz").unlink()
    run = tmp_path / "run"
    args = ["fit", "--config", "mss_unet3d", "--data.data_dir", str(root), "--trainer.default_root_dir", str(run)]
    assert main([*args, *TINY, "--trainer.logger.save_dir", str(run)]) == 2
    assert "synth_001_0001.nii.gz" in capsys.readouterr().err
    assert not (tmp_path / f"{dataset.name}_preprocessed").exists()


def test_evaluate_names_a_dead_label(dataset, tmp_path, capsys):
    """Predictions equal to the references except that the lesion is never predicted: Dice 1 for the others, one
    warning line naming the lesion, and the means computed by hand."""
    pred, ref = tmp_path / "pred", tmp_path / "ref"
    pred.mkdir()
    shutil.copytree(dataset / "labelsTr", ref)
    for f in sorted(ref.iterdir()):
        img = nib.load(str(f))
        a = np.asarray(img.dataobj).copy()
        a[a == 2] = 1
        nib.save(nib.Nifti1Image(a, img.affine, img.header), str(pred / f.name))
    assert main(["evaluate", str(pred), str(ref), "--labels", str(dataset / "dataset.json"), "--no-hd95"]) == 0
    err = capsys.readouterr().err
    assert "lesion" in err and "organ" not in err.split("warning:")[-1] and err.count("warning:") == 1
    summary = json.loads((pred / "summary.json").read_text())
    assert summary["mean"]["lesion/dice"] == 0.0 and summary["mean"]["vessel/dice"] == 1.0
    organ = []
    for f in sorted(ref.iterdir()):
        r = np.asarray(nib.load(str(f)).dataobj)
        organ.append(2 * np.sum(r == 1) / (np.sum(r == 1) + np.sum((r == 1) | (r == 2))))
    np.testing.assert_allclose(summary["mean"]["organ/dice"], np.mean(organ), rtol=1e-9)


TINY_2D = [
    "--trainer.accelerator",
    "cpu",
    "--trainer.max_epochs",
    "1",
    "--trainer.check_val_every_n_epoch",
    "1",
    "--trainer.limit_train_batches",
    "2",
    "--trainer.enable_progress_bar",
    "false",
    "--trainer.enable_model_summary",
    "false",
    "--data.image_size",
    "[32, 32]",
    "--data.num_workers",
    "0",
    "--data.batch_size",
    "4",
]


@pytest.mark.parametrize("net", ["drnet", "unet2d"])
def test_2d_nets_train_and_predict_on_own_data(net, dataset, tmp_path):
    """``--config drnet`` (and a 2D baseline through ``--model.net``) on the nnU-Net dataset: slices along the
    coarsest axis, and ``segzoo infer`` writes each prediction on its input's grid through the one Predictor."""
    run = tmp_path / "run"
    extra = ["--model.net.init_args.features", "[8, 16, 32, 64, 128]"] if net == "drnet" else ["--model.net", net]
    args = ["fit", "--config", "drnet", "--data.data_dir", str(dataset), "--trainer.default_root_dir", str(run)]
    assert main([*args, *TINY_2D, *extra]) == 0
    from segzoo.checkpoint import load_checkpoint

    ckpt = run / "checkpoints" / "last.ckpt"
    loaded = load_checkpoint(ckpt)
    pre = loaded.preprocessor()
    assert type(pre).__name__ == "VolumeSlicePreprocessor" and pre.normalization == ["ct", "zscore"]
    assert pre.slice_axis == 2  # the thick-slice axis of the majority (RAS) orientation
    out = tmp_path / "pred"
    assert main(["infer", "--ckpt", str(ckpt), "--input", str(dataset / "imagesTs"), "--output", str(out)]) == 0
    for case in ("synth_004", "synth_005"):
        pred, src = nib.load(str(out / f"{case}.nii.gz")), nib.load(str(dataset / "imagesTs" / f"{case}_0000.nii.gz"))
        assert pred.shape == src.shape and np.allclose(pred.affine, src.affine)


def test_slice_preprocessing_round_trip(dataset):
    """Scores that are the one-hot label map, cut and padded like an input, restore to the label map exactly, for
    every stored orientation (the way back of the 2D path is the inverse of the way in)."""
    import torch

    from segzoo.data.geometry import spacing_from_affine
    from segzoo.data.slice2d import VolumeSlicePreprocessor
    from segzoo.data.sources import open_source

    source = open_source(dataset)
    pre = VolumeSlicePreprocessor(["none", "none"], image_size=(72, 72), resize_mode="pad", slice_axis=2)
    pre.orientation = ("R", "A", "S")
    for case in source.training:
        image, label, affine = case.load()
        r = pre.reorientation(affine, label.shape)
        oriented = r.apply(label)
        x = pre.preprocess(r.apply(image, first_axis=1), r.apply_spacing(spacing_from_affine(affine)))
        assert x.shape[0] == 2 and x.shape[2:] == (72, 72) and x.shape[1] == oriented.shape[2]
        stack = torch.from_numpy(np.ascontiguousarray(pre.to_stack(oriented, channels=False))).long()
        h, w = stack.shape[1:]
        onehot = torch.nn.functional.one_hot(stack, 4).permute(3, 0, 1, 2).float()
        top, left = (72 - h) // 2, (72 - w) // 2
        padded = torch.nn.functional.pad(onehot, (left, 72 - w - left, top, 72 - h - top))
        np.testing.assert_array_equal(r.undo(pre.restore(padded, oriented.shape)), label)


def test_region_dataset_trains_with_sigmoid_outputs_and_writes_label_maps(tmp_path, capsys):
    """nnU-Net region labels (organ = [1, 2, 3], lesion = [2], vessel = [3], regions_class_order [1, 2, 3]): one sigmoid
    output per region, region Dice in validation, label maps of the painted values from segzoo infer; the plain
    recipe refuses such a dataset in one line."""
    data = tmp_path / "Dataset502_Reg"
    write_nnunet(data, cases=4, test_cases=2, seed=4, regions=True)
    run = tmp_path / "run"
    args = ["fit", "--config", "mss_unet3d", "--data.data_dir", str(data), "--trainer.default_root_dir", str(run)]
    assert main([*args, *TINY, "--trainer.logger.save_dir", str(run)]) == 2
    assert "mss_unet3d_regions" in capsys.readouterr().err
    args[2] = "mss_unet3d_regions"
    assert main([*args, *TINY, "--trainer.logger.save_dir", str(run)]) == 0
    from segzoo.checkpoint import load_checkpoint

    ckpt = run / "checkpoints" / "last.ckpt"
    loaded = load_checkpoint(ckpt)
    assert loaded.net.init_config["init_args"]["out_channels"] == 3  # one output per region
    assert loaded.preprocessor().regions == [[1, 2, 3], [2], [3]]
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"region organ/dice", "region lesion/dice", "region vessel/dice"} <= set(metrics["mean"])
    out = tmp_path / "pred"
    assert (
        main(["infer", "--ckpt", str(ckpt), "--input", str(data / "imagesTs"), "--output", str(out), "--tta", "none"])
        == 0
    )
    for case in ("synth_004", "synth_005"):
        pred = np.asarray(nib.load(str(out / f"{case}.nii.gz")).dataobj)
        assert pred.shape == nib.load(str(data / "imagesTs" / f"{case}_0000.nii.gz")).shape
        assert set(np.unique(pred).tolist()) <= {0, 1, 2, 3}


def test_infer_folder_mixing_channel_files_and_a_4d_image(dataset, trained, tmp_path):
    """A folder holding nnU-Net channel files of one case and a Decathlon-style 4D file of another: both predicted
    (the 4D one equal to its channel files' prediction), nothing dropped."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    for f in (dataset / "imagesTs").glob("synth_004_*.nii.gz"):
        shutil.copy(f, inputs / f.name)
    ch = [nib.load(str(dataset / "imagesTs" / f"synth_005_000{c}.nii.gz")) for c in (0, 1)]
    stacked = np.stack([np.asarray(c.dataobj, dtype=np.float32) for c in ch], axis=-1)
    nib.save(nib.Nifti1Image(stacked, ch[0].affine), str(inputs / "other.nii.gz"))
    ckpt = str(trained / "checkpoints" / "last.ckpt")
    out = tmp_path / "out"
    assert main(["infer", "--ckpt", ckpt, "--input", str(inputs), "--output", str(out), "--tta", "none"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["other.nii.gz", "synth_004.nii.gz"]
    ref = tmp_path / "ref"
    assert (
        main(["infer", "--ckpt", ckpt, "--input", str(dataset / "imagesTs"), "--output", str(ref), "--tta", "none"])
        == 0
    )
    np.testing.assert_array_equal(
        np.asarray(nib.load(str(out / "other.nii.gz")).dataobj),
        np.asarray(nib.load(str(ref / "synth_005.nii.gz")).dataobj),
    )
