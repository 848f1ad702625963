"""``segzoo verify``: good datasets pass, each broken variant gets one line naming the file and exit 2, and nnU-Net
v2's own integrity check (``verify_dataset_integrity``) agrees on every one."""

import json
import shutil
import subprocess
import sys
import textwrap
from dataclasses import replace

import nibabel as nib
import numpy as np
import pytest

from segzoo.cli import main
from segzoo.data.sources import open_source
from segzoo.data.synthetic.nnunet import write_nnunet
from segzoo.data.verify import verify_dataset, verify_source


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


# --------------------------------------------------------------- cases a reader dropped; what declares the labels
def _small(root, form="nnunet", test_cases=1):
    write_nnunet(root, cases=3, test_cases=test_cases, seed=7, form=form, shape=(20, 20, 6), mixed_orientations=False)
    return root


@pytest.mark.parametrize("form", ["nnunet", "msd"])
def test_dropped_training_case_counts_against_num_training(tmp_path, form):
    root = _small(tmp_path / "Dataset502_Small", form)
    if form == "nnunet":
        (root / "labelsTr" / "synth_001.nii.gz").unlink()  # images without their label: a training case dropped
        (root / "imagesTs" / "synth_003_0001.nii.gz").unlink()  # a test case lacking a channel: not a training case
        dropped = ["synth_001"]
    else:
        (root / "imagesTr" / "synth_002.nii.gz").unlink()  # listed under 'training', file gone
        dropped = ["synth_002"]
    source = open_source(root)
    assert source.dropped_training == dropped and source.num_training == 3
    assert sorted(c.case_id for c in source.training) == sorted({"synth_000", "synth_001", "synth_002"} - {*dropped})
    report = verify_source(source)
    assert report.errors == source.problems  # each drop has its line; numTraining (3) agrees: 2 listed + 1 dropped


def test_num_training_check_reads_the_dropped_list_not_the_wording(good):
    source = open_source(good)  # 3 training cases, numTraining 3
    assert source.dropped_training == [] and source.num_training == 3
    # a drop reported in any words still counts
    dropped = replace(
        source,
        training=source.training[:2],
        problems=["imagesTr/synth_002: reworded problem line"],
        dropped_training=[source.training[2].case_id],
    )
    assert verify_source(dropped, cases=[]).errors == dropped.problems
    # a problem worded like the old drop messages is no drop when the reader kept the case
    look_alike = replace(source, problems=["case 'x' lacks channel(s) [1] ... but no label"])
    assert verify_source(look_alike, cases=[]).errors == look_alike.problems
    # and no drop recorded: the missing case is a numTraining error
    silent = replace(dropped, dropped_training=[])
    errors = verify_source(silent, cases=[]).errors
    assert len(errors) == 2 and "numTraining is 3" in errors[1] and "dataset.json" in errors[1]


@pytest.mark.parametrize("form, named", [("nnunet", "dataset.json"), ("datalist", "datalist.json")])
def test_undeclared_label_names_what_declares_the_labels(tmp_path, form, named):
    root = _small(tmp_path / "Dataset503_Small", form, test_cases=0)
    culprit = _undeclared_label(root)
    report = verify_dataset(root / "datalist.json" if form == "datalist" else root)
    assert len(report.errors) == 1, report.errors
    assert culprit in report.errors[0] and f"label values [7] not declared in {named} [0, 1, 2, 3]" in report.errors[0]


@pytest.mark.parametrize("command", ["verify", "plan"])
def test_dataset_command_help_names_every_layout(command, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "2000")  # argparse wraps at the terminal width, and may wrap at a hyphen
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    # the layouts open_source accepts (its module doc), each by the name its error message uses
    for layout in ("nnU-Net v2 raw", "Decathlon", "MONAI datalist", "KiTS19", "BraTS", "CHAOS"):
        assert layout in out, (layout, out)
