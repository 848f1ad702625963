"""The CHAOS and BraTS notebooks: stored executed at the medium budget, and run top to bottom at the small budget.

The small-budget run executes an in-memory copy (outputs cleared first); the committed file, with its medium-budget
results, is never written.
"""

import hashlib
import re
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
from jupyter_client.kernelspec import KernelSpecManager  # noqa: E402

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
# the study of the DR-Net paper: DR-Net, 4 baselines, the ablations (one net per distinct model), the PFM U-Net
STUDY = {
    "drnet", "unet2d", "cenet", "denseaspp", "msdual", "drnet_norot", "drnet_rot0", "drnet_rot0_90",
    "drnet_rot0_180", "drnet_pfm", "drnet_dpfm", "drnet_b", "drnet_s3", "drnet_s4", "drnet_nores", "unet_pfm",
}  # fmt: skip
COLUMNS = {
    "chaos": {"liver Dice", "right_kidney Dice", "left_kidney Dice", "spleen Dice", "mean RAVD %", "mean ASSD mm"},
    "brats": {"WT Dice", "TC Dice", "ET Dice", "WT HD95 mm", "TC HD95 mm", "ET HD95 mm"},
}


def _html(cell) -> str:
    return next(o["data"]["text/html"] for o in cell.outputs if "text/html" in o.get("data", {}))


def _check_results(nb, name: str) -> None:
    final = nb.cells[-1]
    table_html = _html(final)
    # the final table: one row per model of the study, with its registry name and parameter count
    for net_name in STUDY:
        assert f">{net_name}<" in table_html, f"{net_name} missing from the final table"
    assert table_html.split("<tbody>")[1].count("<tr>") == len(STUDY)
    assert "params" in table_html and "seeds" in table_html
    # the per-class table with the dataset's metrics
    results = [c for c in nb.cells if c.cell_type == "code" and "table.round(3)" in c.source][0]
    for column in COLUMNS[name]:
        assert column in _html(results)
    # the DR-Net vs U-Net verdict
    versus = [c for c in nb.cells if c.cell_type == "code" and "verdict" in c.source][0]
    assert any("DR-Net" in o.get("text", "") and "U-Net at this budget" in o.get("text", "") for o in versus.outputs)
    # pictures: the overlay grid and the learning curves
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 3


@pytest.mark.parametrize("name", ["chaos", "brats"])
def test_notebook_is_stored_executed_at_the_medium_budget(name):
    nb = nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert 'BUDGET = os.environ.get("SEGZOO_NOTEBOOK_BUDGET", "small")' in code[0].source
    assert not any(line.lstrip().startswith("class ") for c in code for line in c.source.splitlines())
    # every code cell ran, in order, without an error, at the medium budget
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1))
    assert not any(o.get("output_type") == "error" for c in code for o in c.outputs)
    budget = "".join(o.get("text", "") for o in code[1].outputs)
    assert "budget medium" in budget
    # the medium budget of issue 25: paper widths, 32x32 slices, 40 epochs, CE-Net and MS-Dual excluded, saying why
    assert "'image_size': 32" in budget and "'width': 1" in budget and "'epochs': 40" in budget
    _check_results(nb, name)
    final = _html(nb.cells[-1])
    assert final.count(">excluded: ") == 2 and "status" in final
    header = re.findall(r"<th>([^<]*)</th>", final.split("<tbody>")[0])
    rows = final.split("<tbody>")[1].split("</tr>")
    cells = {}
    for net_name in ("drnet", "unet2d"):  # 3 seeds each, and a convergence verdict computed by the notebook
        row = next(r for r in rows if f">{net_name}<" in r)
        cells[net_name] = dict(zip(header, re.findall(r"<t[hd]>([^<]*)</t[hd]>", row)))
        assert float(cells[net_name]["seeds"]) == 3
        assert cells[net_name]["status"] in ("converged", "not converged")
    # only converged models are ranked, and the verdict states the table's own numbers
    versus = [c for c in nb.cells if c.cell_type == "code" and "verdict" in c.source][0]
    text = "".join(o.get("text", "") for o in versus.outputs)
    if all(c["status"] == "converged" for c in cells.values()):
        assert "both converged" in text and "no ranking" not in text
        stated = re.search(r"DR-Net ([0-9.]+) ± [0-9.]+ vs U-Net ([0-9.]+) ± ", text)
        assert stated, text
        table = (float(cells["drnet"]["mean Dice"]), float(cells["unet2d"]["mean Dice"]))
        assert (float(stated[1]), float(stated[2])) == pytest.approx(table, abs=1.5e-3)
    else:
        assert "not converged, no ranking" in text


@pytest.mark.slow
@pytest.mark.parametrize("name", ["chaos", "brats"])
def test_notebook_runs_small_budget(name, tmp_path, monkeypatch):
    monkeypatch.setenv("SEGZOO_NOTEBOOK_BUDGET", "small")
    monkeypatch.setenv("SEGZOO_NOTEBOOK_RUN_DIR", str(tmp_path / "runs"))
    monkeypatch.delenv("DATA_DIR", raising=False)
    # jupyter_client launches a "python" kernel spec with sys.executable, i.e. this venv's interpreter
    spec = KernelSpecManager().get_kernel_spec("python3")
    assert spec.argv[0] in ("python", "python3", sys.executable), f"kernel python3 runs {spec.argv[0]}"
    path = NOTEBOOK_DIR / f"{name}.ipynb"
    stored = hashlib.sha256(path.read_bytes()).hexdigest()
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:  # a copy in memory, without the stored medium-budget outputs
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    client = nbclient.NotebookClient(
        nb, timeout=1800, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == stored  # the committed outputs are untouched
    assert "budget small" in "".join(o.get("text", "") for o in nb.cells[3].outputs)
    _check_results(nb, name)
    # each run left its learning curves and metrics file
    for net_name in STUDY:
        assert (tmp_path / "runs" / net_name / "seed0" / "metrics.csv").is_file()
        assert (tmp_path / "runs" / net_name / "seed0" / "metrics.json").is_file()
