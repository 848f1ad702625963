"""``make demo``'s scoring and report: in-distribution score first, the held-out-regime table after it."""

from __future__ import annotations

import numpy as np

from segzoo.data.io import save_nifti
from segzoo.demo import report, score_cases


def _case(root, name, label, pred):
    save_nifti(label.astype(np.uint8), np.eye(4), root / "cases" / name / "segmentation.nii.gz")
    save_nifti(pred.astype(np.uint8), np.eye(4), root / "preds" / f"{name}.nii.gz")
    return root / "cases" / name


def test_scores_per_regime_and_report_order(tmp_path):
    label = np.zeros((4, 8, 8), np.uint8)
    label[1:3, 2:6, 2:6] = 1
    label[1:3, 2:4, 2:4] = 2
    no_tumour = np.where(label == 2, 1, label)  # kidney region right, tumour called kidney
    cases = [_case(tmp_path, "case_00300", label, label), _case(tmp_path, "case_00301", label, no_tumour)]
    regimes = {"case_00300": "heldout_phase", "case_00301": "heldout_thickness"}
    held = score_cases(cases, tmp_path / "preds", regimes.__getitem__)
    assert held["regimes"]["heldout_phase"]["tumour/dice"] == 1.0
    assert held["regimes"]["heldout_thickness"]["tumour/dice"] == 0.0
    assert held["regimes"]["heldout_thickness"]["kidney/dice"] == 1.0  # KiTS19 kidney = kidney + tumour
    assert np.isclose(held["mean"]["tumour/dice"], 0.5)
    in_dist = score_cases(cases[:1], tmp_path / "preds")
    text = report(in_dist, held, "train")
    assert text.index("In distribution") < text.index("Held-out regimes") < text.index("heldout_thickness")
    assert "training regime 'train'" in text and "case_00300: kidney/dice 1.000, tumour/dice 1.000" in text
