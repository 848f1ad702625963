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
