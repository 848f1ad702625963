"""Dead-class check (segzoo.metrics.dead): hand-made counts, the regions each metric declares, label maps."""

import math

import numpy as np
import pytest

from segzoo.metrics import BraTSMetric, CHAOSMetric, KiTS19Metric
from segzoo.metrics.dead import (
    DeadClassCounter,
    confusion,
    dead_class_warning,
    dead_classes,
    dice_from_counts,
    label_regions,
    region_counts,
)
from segzoo.metrics.labels import LabelMetric

NAN = math.nan
NAMES = ["class 1 'liver'", "class 2 'tumour'", "class 3 'spleen'", "class 4 'cyst'"]
# 3 cases x 4 classes: liver predicted in 2 cases but never where it is; tumour present in all, never predicted;
# spleen alive (Dice > 0 in one case of the two that hold it); cyst neither present nor predicted
PRED = [[5, 0, 4, 0], [0, 0, 3, 0], [7, 0, 0, 0]]
GT = [[3, 9, 5, 0], [4, 2, 0, 0], [0, 1, 6, 0]]
DICE = [[0.0, 0.0, 0.0, NAN], [0.0, 0.0, 0.0, NAN], [0.0, 0.0, 0.4, NAN]]


def test_dead_classes_from_hand_made_counts():
    assert dead_classes(PRED, GT, DICE, NAMES) == [
        "class 1 'liver' has Dice 0 in all 2 cases that hold it (predicted in 2)",
        "class 2 'tumour' was never predicted (present in 3)",
        "class 4 'cyst' was never predicted (present in none)",
    ]


def test_one_warning_line_names_every_dead_class():
    msg = dead_class_warning(PRED, GT, DICE, NAMES, where="validation")
    assert "\n" not in msg
    assert msg.startswith("segzoo: dead classes on 3 validation cases: class 1 'liver' has Dice 0")
    assert "; class 2 'tumour' was never predicted (present in 3); class 4 'cyst'" in msg
    assert "spleen" not in msg
    one = dead_class_warning([[0]], [[5]], [[0.0]], ["class 2 'tumour'"], where="test")
    assert one == "segzoo: dead class on 1 test case: class 2 'tumour' was never predicted (present in 1)"


def test_alive_classes_give_no_warning():
    # one overlapping voxel is enough; a case without the class in its reference is no evidence (NaN or not)
    assert dead_class_warning([[5, 2], [0, 3]], [[5, 0], [4, 0]], [[0.01, 0.0], [0.0, NAN]], ["a", "b"]) is None
    assert dead_classes([[1]], [[1]], [[NAN]], ["a"]) == []  # Dice not known: not called dead
    assert dead_class_warning(np.zeros((0, 2)), np.zeros((0, 2)), np.zeros((0, 2)), ["a", "b"]) is None
    with pytest.raises(ValueError, match=r"per_case_gt_counts must be \(cases, 2\)"):
        dead_classes([[1, 2]], [[1, 2, 3]], [[1, 1]], ["a", "b"])
    with pytest.raises(ValueError, match="one row per case"):
        dead_classes([[1, 2]], [[1, 2], [1, 1]], [[1, 1]], ["a", "b"])


def test_confusion_and_region_counts_by_hand():
    pred = np.array([[0, 1, 1], [2, 2, 0]])
    target = np.array([[0, 1, 2], [2, 0, 0]])
    conf = confusion(pred, target, 3)
    assert conf.tolist() == [[2, 0, 1], [0, 1, 0], [0, 1, 1]]  # [reference, prediction]
    pred_n, ref_n, both = region_counts(conf, [(1,), (2,), (1, 2)])
    assert pred_n.tolist() == [2, 2, 4] and ref_n.tolist() == [1, 2, 3] and both.tolist() == [1, 1, 3]
    np.testing.assert_allclose(dice_from_counts(pred_n, ref_n, both), [2 / 3, 0.5, 6 / 7])
    assert np.isnan(dice_from_counts([0], [0], [0])[0])
    assert confusion(np.array([3]), np.array([0]), 2).shape == (4, 4)  # a larger index widens the matrix


def test_counter_on_label_maps_names_the_lost_tumour():
    counter = DeadClassCounter(label_regions(3, KiTS19Metric().class_names(), KiTS19Metric().regions()))
    assert counter.names == ["class 1 'kidney'", "class 2 'tumour'", "region 'kidney' (classes 1, 2)"]
    for seed in range(3):
        rng = np.random.default_rng(seed)
        target = np.zeros((6, 8, 8), dtype=np.int64)
        target[1:5, 2:7, 2:7] = 1
        target[2:4, 3:5, 3:5] = 2
        pred = np.where(rng.random(target.shape) < 0.9, target, 0)
        pred[pred == 2] = 1  # the net lost the tumour: it calls it kidney
        counter.update(pred, target)
    assert counter.warning("validation") == (
        "segzoo: dead class on 3 validation cases: class 2 'tumour' was never predicted (present in 3)"
    )
    pred_n, ref_n, dice = counter.tables()
    assert pred_n.shape == (3, 3) and (ref_n[:, 1] == 8).all() and (dice[:, 2] > 0.9).all()


def test_regions_each_metric_declares():
    kits = label_regions(3, KiTS19Metric().class_names(), KiTS19Metric().regions())
    assert kits == {"class 1 'kidney'": (1,), "class 2 'tumour'": (2,), "region 'kidney' (classes 1, 2)": (1, 2)}
    brats = BraTSMetric()
    assert label_regions(4, brats.class_names(), brats.regions()) == {
        "class 1 'necrotic_core'": (1,),
        "class 2 'edema'": (2,),
        "class 3 'enhancing_tumor'": (3,),  # ET is class 3 alone: named once, as the class
        "region 'WT' (classes 1, 2, 3)": (1, 2, 3),
        "region 'TC' (classes 1, 3)": (1, 3),
    }
    assert list(label_regions(3, CHAOSMetric(organs=("liver", "spleen")).class_names())) == [
        "class 1 'liver'",
        "class 2 'spleen'",
    ]
    labels = LabelMetric({0: "background", 1: "liver", 3: "lesion"})
    assert list(label_regions(4, labels.class_names())) == ["class 1 'liver'", "class 2", "class 3 'lesion'"]
    # more output classes than names: the rest unnamed; a region beyond the classes is left out
    assert label_regions(4, ("a",), {"far": (2, 7)}) == {"class 1 'a'": (1,), "class 2": (2,), "class 3": (3,)}
