"""benchmarks/run.py: the command lines per device and the docs page, GPU rows included (from made-up CUDA results).

The GPU rows are only produced on a machine with a GPU; this test feeds the page generator CUDA result files built
from the committed CPU ones, so the code that reads them runs in CI too.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _run_module():
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("bench_run", BENCH / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_commands_per_device(tmp_path):
    run = _run_module()
    assert run.bench_command("inference_mem", "cpu", False, tmp_path) is None  # an accelerator-memory check only
    cmd = run.bench_command("inference_mem", "cuda", False, tmp_path)
    assert cmd[1].endswith("inference_bench.py") and "--no-peer" in cmd and "600" in cmd
    assert run.result_stem("inference_mem", "cuda") == "inference_cuda_mem600"
    assert run.result_stem("data", "cuda") == "data_cpu"  # the data path runs on CPU workers
    for name in run.BENCHES:
        cpu = run.bench_command(name, "cpu", True, tmp_path)
        assert cpu is None or "--device" not in cpu or cpu[cpu.index("--device") + 1] == "cpu"


def test_page_with_gpu_results(tmp_path):
    run = _run_module()
    results = tmp_path / "results"
    shutil.copytree(BENCH / "results", results)
    train = json.loads((results / "train_step_cpu.json").read_text())
    train.update(device="cuda", device_name="NVIDIA H100 80GB HBM3", input=[2, 1, 48, 192, 192])
    train["ratios"]["mss_unet/plainconvunet time"] = 0.8
    train["rows"]["mss_unet"]["median_s"] = 0.25  # 8 patches/s consumed
    train["ratios"]["mss_unet_fp32/mss_unet time"] = 2.1
    (results / "train_step_cuda.json").write_text(json.dumps(train))
    inference = json.loads((results / "inference_cpu.json").read_text())
    inference.update(device="cuda", device_name="NVIDIA H100 80GB HBM3", case_shape=[1, 1, 200, 512, 512])
    inference["median_s"]["segzoo"] = 7.5
    (results / "inference_cuda.json").write_text(json.dumps(inference))
    mem = dict(inference, case_shape=[1, 1, 600, 512, 512], max_batch=4)
    mem["peak_memory_absolute_bytes"] = {"segzoo": 6 * 2**30}
    (results / "inference_cuda_mem600.json").write_text(json.dumps(mem))
    (results / "inference_cuda_mem600.md").write_text("# Whole-case inference (cuda, 600 slices)\n\n| a |\n|---|\n")

    page = run.write_docs(results, tmp_path / "benchmarks.md").read_text()
    rows = {line.split(" | ")[1]: line for line in page.splitlines() if line.startswith("| GPU |")}
    assert "0.80x (met" in rows["MSSUNet train step / PlainConvUNet, 2x1x48x192x192 bf16"]
    assert "7.5 s for 200x512x512 on NVIDIA H100" in rows["512x512x200 CT, 8-flip TTA, <= 10 s on an H100"]
    keeps_up = rows["data path keeps up with the train step on 8 workers"]
    have = (
        8 * json.loads((results / "data_cpu.json").read_text())["paper_large"]["default_probs"]["cached_patches_per_s"]
    )
    assert f"{have:.1f} patches/s from 8 workers vs 8.0 consumed ({have / 8:.2f}x" in keeps_up
    assert "6.00 GiB peak allocated for 600x512x512 (max_batch 4)" in rows["512x512x600 CT inference within 8 GB"]
    assert "(met)" in rows["512x512x600 CT inference within 8 GB"]
    assert "### Whole-case inference (cuda, 600 slices)" in page  # every result table is on the page
    assert "not measured" not in "".join(rows.values())
    switches = {line.split(" | ")[0][2:]: line for line in page.splitlines() if line.startswith("| `")}
    assert "cuda: fp32 / bf16 step time 2.10x" in switches["`precision: bf16-mixed`"]
    cpu_cl = "mss_unet_cl3d/mss_unet time" in json.dumps(json.loads((results / "train_step_cpu.json").read_text()))
    row = switches["`channels_last: true`"]
    assert ("cpu: channels-last / default step time" in row) == cpu_cl  # the CPU run may skip channels-last


@pytest.mark.slow
def test_quick_run_writes_results_and_page(tmp_path):
    """`run.py --quick`: the train-step and 2D scripts run (timed pass + memory child) and the page is written."""
    proc = subprocess.run(
        [sys.executable, str(BENCH / "run.py"), "--quick", "--only", "train_step", "nets2d", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    train = json.loads((tmp_path / "train_step_cpu.json").read_text())
    assert {"mss_unet", "dynunet", "plainconvunet"} <= set(train["rows"])
    assert all(row["peak_mib"] >= 0 and row["median_s"] > 0 for row in train["rows"].values())
    nets = json.loads((tmp_path / "nets2d_cpu.json").read_text())
    assert set(nets["rows"]) == {"drnet", "unet_pfm", "unet2d", "cenet", "denseaspp", "msdual"}
    page = (tmp_path / "benchmarks.md").read_text()
    assert "### Train step (cpu" in page and "### 2D nets, train step (cpu" in page


def test_every_segzoo_name_a_benchmark_imports_exists():
    """Benchmark scripts run rarely (minutes to hours): a segzoo name they import that moved (as
    ``spacing_from_affine`` did from ``segzoo.data.kits19`` to ``segzoo.data.geometry``) must fail here, not in the
    middle of ``make bench``. Checked statically from each script's ``from segzoo... import ...`` statements."""
    import ast
    import importlib

    missing = []
    for script in sorted(BENCH.glob("*.py")):
        for node in ast.walk(ast.parse(script.read_text(), filename=str(script))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "segzoo":
                module = importlib.import_module(node.module)
                missing += [
                    f"{script.name}:{node.lineno}: {node.module}.{alias.name}"
                    for alias in node.names
                    if not hasattr(module, alias.name)
                    and importlib.util.find_spec(f"{node.module}.{alias.name}") is None
                ]
    assert not missing, "benchmark scripts import names that do not exist:\n" + "\n".join(missing)
