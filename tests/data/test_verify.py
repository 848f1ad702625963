"""``segzoo verify``: good datasets pass, each broken variant gets one line naming the file and exit 2, and nnU-Net
v2's own integrity check (``verify_dataset_integrity``) agrees on every one."""

import json
import shutil
import subprocess
import sys
import textwrap

import nibabel as nib
import numpy as np
import pytest

from segzoo.cli import main
from segzoo.data.synthetic.nnunet import write_nnunet
from segzoo.data.verify import verify_dataset


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    root = tmp_path_factory.mktemp("verify") / "Dataset501_Synth"
    write_nnunet(root, cases=3, test_cases=0, seed=5)
    return root


def _rewrite(path, fn):
    img = nib.load(str(path))
    data = fn(np.asarray(img.dataobj))
    nib.save(nib.Nifti1Image(data, img.affine), str(path))


def _missing_channel(root):
    (root / "imagesTr" / "synth_001_0001.nii.gz").unlink()
    return "synth_001_0001.nii.gz"


def _channel_grid(root):
    _rewrite(root / "imagesTr" / "synth_001_0001.nii.gz", lambda a: np.ascontiguousarray(a[:-3]).astype(np.float32))
    return "synth_001_0001.nii.gz"


def _undeclared_label(root):
    def put(a):
        a = a.astype(np.uint8)
        a[0, 0, 0] = 7
        return a

    _rewrite(root / "labelsTr" / "synth_002.nii.gz", put)
    return "synth_002.nii.gz"


def _nan(root):
    def put(a):
        a = a.astype(np.float32)
        a[1, 1, 1] = np.nan
        return a

    _rewrite(root / "imagesTr" / "synth_000_0001.nii.gz", put)
    return "synth_000_0001.nii.gz"


def _num_training(root):
    meta = json.loads((root / "dataset.json").read_text())
    meta["numTraining"] = 5
    (root / "dataset.json").write_text(json.dumps(meta))
    return "dataset.json"


def _truncated(root):
    path = root / "imagesTr" / "synth_002_0000.nii.gz"
    path.write_bytes(path.read_bytes()[:300])
    return "synth_002_0000.nii.gz"


BROKEN = {
    "missing channel": _missing_channel,
    "channel on another grid": _channel_grid,
    "undeclared label value": _undeclared_label,
    "NaN": _nan,
    "numTraining": _num_training,
    "unreadable file": _truncated,
}


@pytest.fixture(params=sorted(BROKEN))
def broken(request, good, tmp_path):
    root = tmp_path / good.name
    shutil.copytree(good, root)
    culprit = BROKEN[request.param](root)
    return request.param, root, culprit


def test_good_dataset_passes(good, capsys):
    report = verify_dataset(good)
    assert report.ok and report.errors == [] and report.cases_checked == 3
    assert main(["verify", str(good)]) == 0
    assert "OK" in capsys.readouterr().out


def test_broken_dataset_one_line_naming_the_file(broken, capsys):
    name, root, culprit = broken
    report = verify_dataset(root)
    assert not report.ok, name
    assert any(culprit in line for line in report.errors), (name, report.errors)
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    assert main(["verify", str(root)]) == 2
    err = capsys.readouterr().err
    assert culprit in err and all(line.startswith("segzoo verify: ") for line in err.strip().splitlines())
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before  # nothing written
    assert not (root.parent / f"{root.name}_preprocessed").exists()


NNUNET_CHECK = textwrap.dedent(
    """
    import sys
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity
    try:
        verify_dataset_integrity(sys.argv[1], 1)
    except Exception as e:
        print(type(e).__name__, str(e).splitlines()[0] if str(e) else "")
        sys.exit(3)
    """
)


def _nnunet_accepts(root) -> bool:
    pytest.importorskip("nnunetv2")
    pytest.importorskip("SimpleITK")
    # nnU-Net's check runs a spawn pool and imports its paths module: a subprocess with its variables set
    env = {"nnUNet_raw": str(root.parent), "nnUNet_preprocessed": str(root.parent), "nnUNet_results": str(root.parent)}
    import os

    done = subprocess.run(
        [sys.executable, "-c", NNUNET_CHECK, str(root)], env={**os.environ, **env}, capture_output=True, text=True
    )
    assert done.returncode in (0, 3), done.stderr[-2000:]
    return done.returncode == 0


# Variants nnU-Net v2's check accepts (measured with nnunetv2 2.x and SimpleITK 2.5) and segzoo refuses:
STRICTER = {
    # nnU-Net reads the channels into one array of the first channel's dtype (int16 CT here): a NaN in a float
    # channel becomes 0 before its NaN test
    "NaN": "NaN cast to the first channel's integer dtype",
    # SimpleITK reads a truncated .nii.gz without an error (the missing voxels come back as 0)
    "unreadable file": "SimpleITK reads truncated gzip silently",
}


@pytest.mark.slow
def test_nnunet_integrity_check_agrees(good, tmp_path):
    assert _nnunet_accepts(good) and verify_dataset(good).ok
    for name in sorted(BROKEN):
        root = tmp_path / name.replace(" ", "_") / good.name
        shutil.copytree(good, root)
        BROKEN[name](root)
        assert not verify_dataset(root).ok, name
        if name in STRICTER:  # segzoo refuses what nnU-Net's check lets through: the check must still pass there
            assert _nnunet_accepts(root), f"nnU-Net now refuses the '{name}' variant: update STRICTER"
            continue
        assert not _nnunet_accepts(root), f"nnU-Net accepts the '{name}' variant"
