"""SegmentationTask's checkpoint-selection score: ``score_key`` when given, else the mean of every ``*/dice``."""

import math

import pytest
from torch import nn

from segzoo.tasks import SegmentationTask


def _task(score_key=None) -> SegmentationTask:
    return SegmentationTask(net=nn.Identity(), loss=nn.MSELoss(), score_key=score_key)


def test_score_falls_back_to_the_mean_dice_skipping_nan():
    means = {"kidney/dice": 0.9, "tumor/dice": 0.5, "tumor/hd95": 12.0, "cyst/dice": math.nan, "composite": 0.1}
    assert _task()._score(means) == pytest.approx((0.9 + 0.5) / 2)  # hd95, NaN dice and other keys left out
    assert _task()._score({"tumor/hd95": 3.0}) is None  # nothing to average: no score logged
    assert _task()._score({"a/dice": math.nan}) is None


def test_score_key_picks_one_metric_or_names_the_keys():
    means = {"kidney/dice": 0.9, "tumor/dice": 0.5, "composite": 0.1}
    assert _task("composite")._score(means) == 0.1
    assert _task("tumor/dice")._score(means) == 0.5
    with pytest.raises(KeyError, match=r"score_key 'tumour/dice' is not a metric key; available: \['composite'"):
        _task("tumour/dice")._score(means)
