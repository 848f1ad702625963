"""Packaging: the wheel's package list and extras, the sdist's contents, and the wheel in a fresh virtualenv.

The slow test is the pip user's path end to end: build the wheel, install it with constraints.txt into a new
virtualenv, and from an empty folder list the recipes, fit the demo recipe for two steps, run ``segzoo infer`` on a
case with its checkpoint, build a net, and hit a missing extra.
"""

import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from segzoo.extras import EXTRAS, MODULE_EXTRA

REPO = Path(__file__).resolve().parents[1]
tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def _git_files(folder: str) -> list[str]:
    out = subprocess.run(["git", "ls-files", folder], cwd=REPO, capture_output=True, text=True)
    if out.returncode != 0 or not out.stdout.strip():
        pytest.skip("not a git checkout")
    return out.stdout.split()


def test_package_list_covers_every_package_folder():
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "segzoo").rglob("__init__.py")}
    found = {f for f in found if "__pycache__" not in f}
    assert listed == found | {"segzoo.configs"}
    assert PYPROJECT["tool"]["setuptools"]["package-dir"] == {"segzoo.configs": "configs"}
    patterns = PYPROJECT["tool"]["setuptools"]["package-data"]["segzoo.configs"]
    # every recipe file is matched by a package-data pattern (one folder level below configs/)
    for f in (REPO / "configs").rglob("*.yaml"):
        assert len(f.relative_to(REPO / "configs").parts) <= 2 and {"*.yaml", "*/*.yaml"} <= set(patterns)


def test_extras_table_matches_pyproject():
    declared = PYPROJECT["project"]["optional-dependencies"]
    for extra, modules in EXTRAS.items():
        names = {d.split(">")[0].split("=")[0].split("[")[0].strip().lower() for d in declared[extra]}
        assert names == {m.lower() for m in modules}
        assert all(MODULE_EXTRA[m] == extra for m in modules)
    assert {"onnx", "hub", "notebooks"} <= set(declared)
    assert {"jupyter", "ipykernel", "pandas"} <= set(EXTRAS["notebooks"])


@pytest.mark.slow
def test_sdist_carries_the_test_suite_and_license(tmp_path):
    tracked = _git_files("tests") + _git_files("configs") + ["LICENSE", "pyproject.toml", "constraints.txt"]
    code = f"from setuptools import build_meta as b; print(b.build_sdist(r'{tmp_path}'))"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    sdist = tmp_path / result.stdout.strip().splitlines()[-1]
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    missing = sorted(f for f in tracked if f not in names)
    assert not missing, f"sdist lacks {missing}"


def _timed(cmd: list[str], cwd: Path, env: dict, timings: dict, label: str, timeout: int = 300):
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    timings[label] = round(time.perf_counter() - start, 1)
    return result


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_wheel_in_a_fresh_virtualenv(tmp_path):
    """``segzoo recipes``, the demo fit, ``segzoo infer`` and ``create_net`` from the installed wheel, no checkout."""
    timings: dict[str, float] = {}
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    dist, venv, work = tmp_path / "dist", tmp_path / "venv", tmp_path / "work"
    work.mkdir()
    build = _timed(
        [sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation", "-q", "-w", str(dist)],
        tmp_path,
        env,
        timings,
        "build wheel",
    )
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = next(dist.glob("segzoo-*.whl"))
    made = _timed([sys.executable, "-m", "venv", str(venv)], tmp_path, env, timings, "venv")
    assert made.returncode == 0, made.stderr
    bin_ = venv / "bin"
    pip = [str(bin_ / "python"), "-m", "pip", "install", "-q", "-c", str(REPO / "constraints.txt")]
    installed = _timed([*pip, str(wheel)], tmp_path, env, timings, "pip install wheel", timeout=900)
    assert installed.returncode == 0, installed.stderr[-3000:]
    segzoo = str(bin_ / "segzoo")

    result = _timed([segzoo, "recipes"], work, env, timings, "segzoo recipes")
    assert result.returncode == 0 and "kits19_demo" in result.stdout and "drnet/chaos" in result.stdout
    assert str(venv) in result.stdout  # read from the installed package, not a checkout

    fit = [segzoo, "fit", "--config", "kits19_demo", "--trainer.max_steps", "2"]
    small = [
        "--data.synthetic_cases",
        "3",
        "--data.num_val_cases",
        "1",
        "--data.num_test_cases",
        "0",
        "--trainer.enable_progress_bar",
        "false",
    ]
    result = _timed([*fit, *small], work, env, timings, "segzoo fit kits19_demo (2 steps)", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "segzoo fit: done" in result.stdout and "no validation ran" in result.stdout
    last = work / "checkpoints" / "last.ckpt"
    assert last.is_file() and (work / "runs" / "demo" / "data" / "case_00000" / "imaging.nii.gz").is_file()
    for noise in ("Tip:", "Total FLOPs: 0", "is deprecated", "anonymous setting", "WARNING"):
        assert noise not in result.stdout + result.stderr

    case = work / "runs" / "demo" / "data" / "case_00002" / "imaging.nii.gz"
    infer = [segzoo, "infer", "--ckpt", str(last), "--input", str(case), "--output", "preds"]
    result = _timed(infer, work, env, timings, "segzoo infer (1 case)", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (work / "preds" / "case_00002.nii.gz").is_file()

    code = "import segzoo; net = segzoo.create_net('drnet'); print(type(net).__name__)"
    result = _timed([str(bin_ / "python"), "-c", code], work, env, timings, "create_net('drnet')")
    assert result.returncode == 0 and result.stdout.strip() == "DRNet", result.stderr[-2000:]

    # an optional feature without its extra: one line naming the extra
    export = [segzoo, "export", "--ckpt", str(last), "--format", "onnx", "--out", "net.onnx"]
    result = _timed(export, work, env, timings, "segzoo export onnx (no extra)")
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr[-2000:]
    assert "[onnx] extra" in result.stderr
    print("timings (s):", timings)


@pytest.mark.slow
def test_editable_install_maps_the_recipes(tmp_path):
    """``pip install -e``: setuptools' editable finder maps ``segzoo.configs`` to the top-level ``configs/``.

    Installed without dependencies: reading the recipes and ``segzoo --version`` need neither torch nor Lightning.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    venv = tmp_path / "venv"
    assert subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True).returncode == 0
    python = str(venv / "bin" / "python")
    result = subprocess.run(
        [python, "-m", "pip", "install", "-q", "--no-deps", "-e", str(REPO)], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
    code = (
        "import importlib.resources as r, segzoo.recipes as s; "
        "print(r.files('segzoo.configs')); print(s.recipe_root()); print(' '.join(s.list_recipes()))"
    )
    result = subprocess.run([python, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    files, root, names = result.stdout.splitlines()
    assert Path(files) == Path(root) == REPO / "configs"
    assert {"kits19", "kits19_demo", "drnet/chaos"} <= set(names.split())
    result = subprocess.run([str(venv / "bin" / "segzoo"), "--version"], cwd=tmp_path, env=env, capture_output=True)
    assert result.returncode == 0 and result.stdout.decode().startswith("segzoo ")
