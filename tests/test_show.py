"""segzoo show / segzoo curves: PNG pictures from NIfTI cases and CSVLogger runs; one-line errors."""

import numpy as np
import pytest
from PIL import Image

from segzoo.cli import main
from segzoo.data.io import save_nifti
from segzoo.tools_cli import find_metrics_csv


@pytest.fixture
def case(tmp_path):
    rng = np.random.default_rng(0)
    label = np.zeros((10, 24, 24), np.uint8)
    label[3:8, 6:18, 6:18] = 1
    label[4:7, 8:12, 8:12] = 2
    image = (label * 100 + rng.normal(0, 10, label.shape)).astype(np.float32)
    affine = np.diag([3.0, 0.8, 0.8, 1.0])
    paths = {
        "image": save_nifti(image, affine, tmp_path / "case" / "imaging.nii.gz"),
        "label": save_nifti(label, affine, tmp_path / "case" / "segmentation.nii.gz"),
        "pred": save_nifti((label > 0).astype(np.uint8), affine, tmp_path / "pred.nii.gz"),
    }
    return paths


def _coloured_pixels(png):
    img = np.asarray(Image.open(png).convert("RGB")).astype(int)
    return int(((img.max(-1) - img.min(-1)) > 80).sum()), img.shape


def test_help_lists_tool_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(cmd in out for cmd in ("show", "curves", "export"))


def test_show_image_label_pred(case, tmp_path, capsys):
    out = tmp_path / "figs" / "fig.png"
    assert main(["show", "--image", str(case["image"]), "--label", str(case["label"]), "--out", str(out)]) == 0
    coloured_gt, shape_gt = _coloured_pixels(out)
    assert coloured_gt > 100  # the label overlay is drawn in colour
    out2 = tmp_path / "fig2.png"
    args = ["show", "--image", str(case["image"]), "--label", str(case["label"]), "--pred", str(case["pred"])]
    assert main([*args, "--out", str(out2)]) == 0
    _, shape_both = _coloured_pixels(out2)
    assert shape_both[0] > shape_gt[0]  # an extra row for the prediction
    only_image = tmp_path / "plain.png"
    assert main(["show", "--image", str(case["image"]), "--out", str(only_image)]) == 0
    assert _coloured_pixels(only_image)[0] < coloured_gt  # grey image, no overlay
    assert "wrote" in capsys.readouterr().out


def test_show_geometry_mismatch_is_one_line_error(case, tmp_path, capsys):
    bad = save_nifti(np.zeros((10, 24, 20), np.uint8), np.diag([3.0, 0.8, 0.8, 1.0]), tmp_path / "bad.nii.gz")
    code = main(["show", "--image", str(case["image"]), "--label", str(bad), "--out", str(tmp_path / "x.png")])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bad.nii.gz" in err and "shape" in err
    assert not (tmp_path / "x.png").exists()
    assert main(["show", "--image", str(tmp_path / "nope.nii.gz"), "--out", str(tmp_path / "x.png")]) == 2
    assert "nope.nii.gz" in capsys.readouterr().err


def test_show_multimodal_channel(tmp_path, capsys):
    img = np.random.default_rng(1).normal(size=(12, 12, 8, 4)).astype(np.float32)
    path = save_nifti(img, np.eye(4), tmp_path / "brats.nii.gz")
    assert main(["show", "--image", str(path), "--channel", "2", "--out", str(tmp_path / "b.png")]) == 0
    assert main(["show", "--image", str(path), "--channel", "4", "--out", str(tmp_path / "c.png")]) == 2
    assert "--channel 4" in capsys.readouterr().err


def test_curves_from_csv_logger_run(tmp_path, capsys):
    run = tmp_path / "run" / "lightning_logs" / "version_0"
    run.mkdir(parents=True)
    rows = ["epoch,step,train/loss_epoch,val/score"]
    rows += [f"{e},{10 * e},{1.0 / (e + 1)}," for e in range(5)] + [f"{e},{10 * e},,{0.2 * e}" for e in range(5)]
    (run / "metrics.csv").write_text("\n".join(rows) + "\n")
    assert find_metrics_csv(tmp_path / "run") == run / "metrics.csv"
    out = tmp_path / "curves.png"
    assert main(["curves", "--run", str(tmp_path / "run"), "--out", str(out)]) == 0
    assert Image.open(out).size[0] > 200
    assert main(["curves", "--run", str(tmp_path / "run"), "--out", str(out), "--keys", "val/dice"]) == 2
    err = capsys.readouterr().err
    assert "val/dice" in err and "val/score" in err
    assert main(["curves", "--run", str(tmp_path / "empty"), "--out", str(out)]) == 2
