"""Inference is usable without Lightning: importing it (and the data readers it needs) loads no Lightning."""

import json
import subprocess
import sys

import pytest

CODE = """
import json, sys
import segzoo.inference, segzoo.inference.predict, segzoo.inference.cli
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("lightning", "pytorch_lightning", "wandb"))
import segzoo.data as d
cls = d.KiTS19DataModule  # loaded on first use, and only then Lightning
print(json.dumps([heavy, "lightning" in sys.modules, cls.__module__, "KiTS19DataModule" in dir(d)]))
"""


def test_inference_imports_no_lightning():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, check=True).stdout
    heavy, lightning_after, module, listed = json.loads(out.strip().splitlines()[-1])
    assert heavy == []
    assert lightning_after and module == "segzoo.data.datamodule" and listed


def test_data_package_unknown_name():
    import segzoo.data

    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        segzoo.data.nope  # noqa: B018


INFER_2D = """
import json, sys
from pathlib import Path
import torch
from segzoo.data.slice2d import SlicePreprocessor
from segzoo.data.synthetic.chaos import write_chaos
from segzoo.nets import DRNet
root = Path(sys.argv[1])
write_chaos(root / "chaos", cases=1, seed=0, size="small")
pre = SlicePreprocessor("chaos", 1, (32, 32), sequence="T2SPIR")
torch.manual_seed(0)
DRNet(spatial_dims=2, in_channels=1, out_channels=5, features=[8, 16, 16, 16, 16]).save_pretrained(root / "m")
(root / "m" / "preprocessor.json").write_text(json.dumps(pre.to_dict()))
from segzoo.cli import main
code = main(["infer", "--ckpt", str(root / "m"), "--input", str(root / "chaos"), "--output", str(root / "out"),
             "--output-format", "both", "--stats"])
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("lightning", "pytorch_lightning", "wandb"))
print(json.dumps([code, heavy]))
"""


def test_2d_infer_runs_without_lightning(tmp_path):
    """A DR-Net checkpoint predicts CHAOS series (NIfTI + DICOM-SEG + statistics) through the one inference path
    without importing Lightning."""
    out = subprocess.run(
        [sys.executable, "-c", INFER_2D, str(tmp_path)], capture_output=True, text=True, check=True
    ).stdout
    code, heavy = json.loads(out.strip().splitlines()[-1])
    assert code == 0 and heavy == []
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "1_T2SPIR.dcm", "1_T2SPIR.nii.gz", "stats.csv", "stats.json"
    ]  # fmt: skip
