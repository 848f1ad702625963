"""The CHAOS and BraTS notebooks run top to bottom at the small budget and end with one result row per model."""

import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
from jupyter_client.kernelspec import KernelSpecManager  # noqa: E402

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
# the study of the DR-Net paper: DR-Net, 4 baselines, 8 ablations, the PFM U-Net
STUDY = {
    "drnet", "unet2d", "cenet", "denseaspp", "msdual", "drnet_norot", "drnet_rot0", "drnet_rot90",
    "drnet_rot180", "drnet_rot270", "drnet_pfm", "drnet_dpfm", "drnet_nores", "unet_pfm",
}  # fmt: skip
COLUMNS = {
    "chaos": {"liver Dice", "right_kidney Dice", "left_kidney Dice", "spleen Dice", "mean RAVD %", "mean ASSD mm"},
    "brats": {"WT Dice", "TC Dice", "ET Dice", "WT HD95 mm", "TC HD95 mm", "ET HD95 mm"},
}


@pytest.mark.parametrize("name", ["chaos", "brats"])
def test_notebook_is_stored_without_outputs(name):
    nb = nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)
    assert 'BUDGET = os.environ.get("SEGZOO_NOTEBOOK_BUDGET", "small")' in code[0].source
    assert not any(line.lstrip().startswith("class ") for c in code for line in c.source.splitlines())


@pytest.mark.slow
@pytest.mark.parametrize("name", ["chaos", "brats"])
def test_notebook_runs_small_budget(name, tmp_path, monkeypatch):
    monkeypatch.setenv("SEGZOO_NOTEBOOK_BUDGET", "small")
    monkeypatch.setenv("SEGZOO_NOTEBOOK_RUN_DIR", str(tmp_path / "runs"))
    monkeypatch.delenv("DATA_DIR", raising=False)
    # jupyter_client launches a "python" kernel spec with sys.executable, i.e. this venv's interpreter
    spec = KernelSpecManager().get_kernel_spec("python3")
    assert spec.argv[0] in ("python", "python3", sys.executable), f"kernel python3 runs {spec.argv[0]}"
    nb = nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=1800, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()

    final = nb.cells[-1].outputs
    table_html = next(o["data"]["text/html"] for o in final if "text/html" in o.get("data", {}))
    text = next(o["data"]["text/plain"] for o in final if "text/plain" in o.get("data", {}))
    # the final table: one row per model of the study, with its registry name and parameter count
    for net_name in STUDY:
        assert f">{net_name}<" in table_html, f"{net_name} missing from the final table"
    assert table_html.split("<tbody>")[1].count("<tr>") == len(STUDY)
    assert "params" in text
    # the per-class table with the dataset's metrics
    results = [c for c in nb.cells if c.cell_type == "code" and "table.round(3)" in c.source][0].outputs
    results_html = next(o["data"]["text/html"] for o in results if "text/html" in o.get("data", {}))
    for column in COLUMNS[name]:
        assert column in results_html
    # pictures: the overlay grid and the learning curves
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 3
    # each model left its learning curves and metrics file
    for net_name in STUDY:
        assert (tmp_path / "runs" / net_name / "metrics.csv").is_file()
        assert (tmp_path / "runs" / net_name / "metrics.json").is_file()
