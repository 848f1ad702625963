"""K-fold splits: the validation folds partition the cases the test split leaves, seeded and recorded, nnU-Net's
``splits_final.json`` layout read and written, one clear line per bad splits file."""

import json

import pytest
from expect import expect_error

from segzoo.data.splits import fold_record_name, fold_split, kfold_splits, read_splits, split_train_val_test

IDS = [f"case_{i:03d}" for i in range(23)]


@pytest.mark.parametrize("k", [2, 5, 23])
def test_validation_folds_partition_the_cases(k):
    splits = kfold_splits(IDS, k, split_seed=3)
    assert len(splits) == k
    vals = [set(s["val"]) for s in splits]
    assert set().union(*vals) == set(IDS) and sum(len(v) for v in vals) == len(IDS)  # disjoint and covering
    assert sorted(len(v) for v in vals)[-1] - sorted(len(v) for v in vals)[0] <= 1  # sizes differ by at most one
    for s in splits:
        assert set(s["train"]) == set(IDS) - set(s["val"])
        assert s["train"] == sorted(s["train"]) and s["val"] == sorted(s["val"])


def test_folds_depend_on_the_seed_and_not_on_the_order():
    assert kfold_splits(IDS, 5, 0) == kfold_splits(list(reversed(IDS)), 5, 0)
    assert kfold_splits(IDS, 5, 0) != kfold_splits(IDS, 5, 1)


def test_the_test_split_stays_out_of_every_fold_and_is_the_one_without_folds():
    _, _, test_plain = split_train_val_test(IDS, 0.2, 4, split_seed=7)
    seen_val = set()
    for k in range(5):
        train, val, test = fold_split(IDS, 5, k, num_test_cases=4, split_seed=7)
        assert test == test_plain
        assert not set(test) & (set(train) | set(val)) and not set(train) & set(val)
        assert set(train) | set(val) | set(test) == set(IDS)
        seen_val |= set(val)
    assert seen_val == set(IDS) - set(test_plain)


def test_a_record_is_written_once_and_read_back(tmp_path):
    record = tmp_path / fold_record_name(5, 0)
    first = fold_split(IDS, 5, 2, num_test_cases=3, record=record)
    stored = json.loads(record.read_text())
    assert len(stored) == 5 and stored[2]["val"] == first[1]
    # an edited record wins over the seeded draw: the rerun reads the file, it does not redraw
    stored[2]["val"], stored[2]["train"] = stored[2]["val"][:1], sorted(stored[2]["train"] + stored[2]["val"][1:])
    record.write_text(json.dumps(stored))
    assert fold_split(IDS, 5, 2, num_test_cases=3, record=record)[1] == stored[2]["val"][:1]
    # a dataset that gained a case no longer matches the record: one line naming the file
    expect_error(lambda: fold_split([*IDS, "case_999"], 5, 2, 3, record=record), record, "case_999", "delete")


def test_users_nnunet_splits_file(tmp_path):
    path = tmp_path / "splits_final.json"
    path.write_text(json.dumps([{"train": IDS[:10], "val": IDS[10:15]}, {"train": IDS[5:15], "val": IDS[:5]}]))
    train, val, test = fold_split(IDS, 0, 1, splits_file=path)
    assert (train, val, test) == (IDS[5:15], IDS[:5], [])
    assert read_splits(path)[0]["val"] == IDS[10:15]
    expect_error(lambda: fold_split(IDS, 5, 0, splits_file=path), path, "2 folds", "num_folds asks 5")
    expect_error(lambda: fold_split(IDS, 0, 2, splits_file=path), path, "fold=2", "0 <= fold < 2")


@pytest.mark.parametrize(
    "content, expected",
    [
        ("{not json", "not valid JSON"),
        ('{"train": []}', "not a splits file"),
        ('[{"train": ["case_000"]}]', "not a splits file"),
        ('[{"train": ["case_000"], "val": [1]}]', "not a splits file"),
        ('[{"train": ["case_000"], "val": ["case_000"]}]', "same cases"),
    ],
)
def test_bad_splits_files_are_one_line(tmp_path, content, expected):
    path = tmp_path / "splits_final.json"
    path.write_text(content)
    expect_error(lambda: fold_split(IDS, 0, 0, splits_file=path), path, expected)


def test_unknown_and_test_cases_in_a_splits_file_are_refused(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps([{"train": ["case_000", "nope_1"], "val": ["case_001"]}]))
    expect_error(lambda: fold_split(IDS, 0, 0, splits_file=path), path, "nope_1", "not labelled cases")
    _, _, test = split_train_val_test(IDS, 0, 2, 0)
    path.write_text(json.dumps([{"train": [test[0], "case_000"], "val": ["case_001"]}]))
    expect_error(lambda: fold_split(IDS, 0, 0, 2, splits_file=path), path, test[0], "test")


def test_bad_fold_counts():
    expect_error(lambda: kfold_splits(IDS[:3], 4), "num_folds=4", "3 cases")
    expect_error(lambda: kfold_splits(IDS, 1), "num_folds=1", "2 <= folds")
