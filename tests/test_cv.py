"""`segzoo cv`: every fold into RUN/fold_k/ (resumable, a rerun skips the done folds and reads the same splits),
RUN/cv_metrics.json equal to the metrics recomputed by hand from the out-of-fold predictions, the post-processing
decided on all folds together, and `segzoo infer --ckpt RUN` ensembling the folds."""

import json

import numpy as np
import pytest
from expect import expect_cli_error

from segzoo.cli import main
from segzoo.data.io import DataError
from segzoo.data.splits import SPLITS_FILE, read_splits
from segzoo.data.synthetic.nnunet import write_nnunet
from segzoo.inference import KiTSPostprocess
from segzoo.tasks.crossval import read_prediction, score_out_of_fold

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = [
    "--trainer.accelerator", "cpu", "--trainer.precision", "32-true", "--trainer.max_epochs", "1",
    "--trainer.check_val_every_n_epoch", "1", "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false",
    "--trainer.callbacks", "[{class_path: segzoo.tasks.RunCheckpoint, init_args: {save_last: true}}]",
    "--data.iterations_per_epoch", "2", "--data.num_workers", "0", "--data.max_patch_voxels", "8192",
    "--data.base_features", "4", "--data.max_features", "16",
    "--model.net.init_args.base_features", "4", "--model.net.init_args.max_features", "16",
]  # fmt: skip
LABELS = {"organ": 1, "lesion": 2, "vessel": 3}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("cv") / "Dataset504_CV"
    write_nnunet(root, cases=4, test_cases=1, seed=5)
    return root


def _cv_args(dataset, run, *extra):
    return ["cv", "--config", "mss_unet3d", "--num-folds", "2", "--data.data_dir", str(dataset), *TINY, *extra] + [
        "--trainer.default_root_dir",
        str(run),
    ]


@pytest.fixture(scope="module")
def cv_run(dataset, tmp_path_factory):
    run = tmp_path_factory.mktemp("cvrun") / "run"
    assert main(_cv_args(dataset, run)) == 0
    return run


def _dice(pred, ref, value):
    p, r = pred == value, ref == value
    total = int(p.sum() + r.sum())
    return float("nan") if total == 0 else 2.0 * float((p & r).sum()) / total


@pytest.mark.slow  # the module's 2-fold cv run takes 20-45 s on 2 shared cores
def test_cv_metrics_equal_the_hand_computation_from_the_out_of_fold_predictions(cv_run, dataset):
    result = json.loads((cv_run / "cv_metrics.json").read_text())
    labelled = sorted(p.name[: -len(".nii.gz")] for p in (dataset / "labelsTr").iterdir())
    vals = [set(result["folds"][k]["val"]) for k in ("0", "1")]
    assert not vals[0] & vals[1] and vals[0] | vals[1] == set(labelled)  # the validation folds partition the cases
    rows = {r["case_id"]: r for r in result["cases"]}
    assert sorted(rows) == labelled and result["scored_on"] == "original grid" and result["postprocess"] is None
    by_hand = {name: [] for name in LABELS}
    for k in (0, 1):
        files = sorted((cv_run / f"fold_{k}" / "validation").glob("*.npz"))
        assert sorted(f.name[:-4] for f in files) == result["folds"][str(k)]["val"]
        for f in files:
            item = read_prediction(f)
            # on the original grid: the shape of the case's label file (in the training orientation)
            assert sorted(item["reference"].shape) == sorted(np.asarray(_label(dataset, f.name[:-4])).shape)
            for name, value in LABELS.items():
                dice = _dice(item["prediction"], item["reference"], value)
                assert rows[f.name[:-4]][f"{name}/dice"] == pytest.approx(dice, nan_ok=True)
                by_hand[name].append(dice)
    for name in LABELS:
        assert result["mean"][f"{name}/dice"] == pytest.approx(np.nanmean(by_hand[name]))
    assert any(rows[c]["organ/dice"] > 0 for c in rows)  # something was predicted, so the comparison could fail


def _label(dataset, case):
    import nibabel as nib

    return nib.load(str(dataset / "labelsTr" / f"{case}.nii.gz")).dataobj


@pytest.mark.slow  # the module's 2-fold cv run takes 20-45 s on 2 shared cores
def test_a_rerun_skips_the_done_folds_and_reads_the_same_splits(cv_run, dataset, capsys):
    before = json.loads((cv_run / "cv_metrics.json").read_text())
    splits = [read_splits(cv_run / f"fold_{k}" / SPLITS_FILE) for k in (0, 1)]
    assert splits[0] == splits[1]  # every fold's run holds the same folds
    capsys.readouterr()
    assert main(_cv_args(dataset, cv_run)) == 0
    err = capsys.readouterr().err
    assert err.count("skipped") == 2 and "training into" not in err
    assert json.loads((cv_run / "cv_metrics.json").read_text())["cases"] == before["cases"]
    assert read_splits(cv_run / "fold_1" / SPLITS_FILE) == splits[1]


@pytest.mark.slow  # the module's 2-fold cv run takes 20-45 s on 2 shared cores
def test_an_interrupted_fold_resumes_from_its_last_checkpoint(cv_run, dataset, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(cv_run, run)
    (run / "fold_1" / "fold.json").unlink()  # fold 1 stopped before its out-of-fold predictions were recorded
    capsys.readouterr()
    assert main(_cv_args(dataset, run)) == 0
    err = capsys.readouterr().err
    assert "fold 0: done" in err and f"resuming from {run / 'fold_1' / 'checkpoints' / 'last.ckpt'}" in err
    assert (run / "fold_1" / "fold.json").is_file() and (run / "cv_metrics.json").is_file()


@pytest.mark.slow  # the module's 2-fold cv run takes 20-45 s on 2 shared cores
def test_infer_ensembles_the_folds(cv_run, dataset, tmp_path):
    out = tmp_path / "pred"
    assert main(["infer", "--ckpt", str(cv_run), "--input", str(dataset), "--output", str(out), "--tta", "none"]) == 0
    assert [p.name for p in out.iterdir()] == ["synth_004.nii.gz"]


@pytest.mark.parametrize(
    "extra, culprit, expected",
    [
        (["--data.fold", "1"], "--data.fold", "segzoo cv sets it"),
        (["--folds", "0", "2"], "--folds [2]", "0..1"),
        (["--ckpt_path=x.ckpt"], "--ckpt_path", "segzoo cv sets it"),
    ],
)
def test_bad_cv_arguments_are_one_line(dataset, tmp_path, capsys, extra, culprit, expected):
    expect_cli_error(_cv_args(dataset, tmp_path / "r", *extra), capsys, culprit, expected)
    assert not (tmp_path / "r").exists()


def test_the_run_folder_is_required(dataset, capsys):
    expect_cli_error(["cv", "--config", "mss_unet3d", *TINY], capsys, "--trainer.default_root_dir", "required")


# ----------------------------------------------------------------------------------- the post-processing decision
def _case(path, prediction, reference):
    np.savez_compressed(
        path, prediction=prediction, reference=reference, spacing=np.ones(3), on_original_grid=np.asarray(True)
    )
    return path


def _boxes(*boxes):
    volume = np.zeros((12, 24, 24), np.uint8)
    for box in boxes:
        volume[box] = 1
    return volume


ORGAN = np.s_[2:10, 2:10, 2:10]  # 512 voxels
SECOND = np.s_[3:9, 14:20, 14:20]  # 216 voxels, apart from the first
SPECK = np.s_[0:2, 20:22, 20:22]  # 8 voxels


def _foreground_dice(pred, ref, spacing):
    return {"fg/dice": _dice(pred > 0, ref > 0, True)}


CANDIDATE = KiTSPostprocess(keep_largest=True, max_kidney_components=1, remove_detached_tumour=False,
                            min_relative_size=0.0, fragment_gap=0)  # fmt: skip


def test_the_post_processing_is_decided_on_all_folds_together(tmp_path):
    # fold 0: a false speck that keep_largest removes (+0.008); fold 1: a true second organ it would remove (-0.17)
    a = _case(tmp_path / "a.npz", _boxes(ORGAN, SPECK), _boxes(ORGAN))
    b = _case(tmp_path / "b.npz", _boxes(ORGAN, SECOND), _boxes(ORGAN, SECOND))
    alone = score_out_of_fold([a], _foreground_dice, CANDIDATE)
    assert alone["postprocess"].steps == ("keep_largest",) and alone["mean"]["fg/dice"] == 1.0
    assert alone["without_postprocess"]["mean"]["fg/dice"] == pytest.approx(2 * 512 / (520 + 512))
    both = score_out_of_fold([a, b], _foreground_dice, CANDIDATE)
    kept = (1.0 + 2 * 512 / (512 + 728)) / 2
    dropped = (2 * 512 / (520 + 512) + 1.0) / 2
    assert dropped > kept and both["postprocess"].steps == ()  # pooled, keep_largest does not pay
    assert both["mean"]["fg/dice"] == pytest.approx(dropped) == both["without_postprocess"]["mean"]["fg/dice"]
    assert both["postprocess"].validation is not None  # the evidence travels with the decision
    fixed = score_out_of_fold([a, b], _foreground_dice, CANDIDATE, tune=False)  # applied as configured
    assert fixed["mean"]["fg/dice"] == pytest.approx(kept)


def test_a_broken_prediction_file_is_one_line(tmp_path):
    bad = tmp_path / "c.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not an out-of-fold prediction file") as info:
        score_out_of_fold([bad], _foreground_dice)
    assert str(bad) in str(info.value)


@pytest.mark.slow  # two `segzoo cv` processes, one per "GPU" (CPU-only here: CUDA_VISIBLE_DEVICES set, unused)
def test_one_fold_per_gpu_runs_the_folds_in_parallel_processes(dataset, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(_cv_args(dataset, run, "--gpus", "0", "1")) == 0
    err = capsys.readouterr().err
    assert "fold 0: started on GPU 0" in err and "fold 1: started on GPU 1" in err
    for k in (0, 1):
        assert (run / f"fold_{k}" / "fold.json").is_file() and (run / f"fold_{k}" / "cv.log").is_file()
    assert len(json.loads((run / "cv_metrics.json").read_text())["cases"]) == 4
