"""Case-level splits: one seeded permutation of the sorted case ids, cut into test, validation and training cases.

Generic (any dataset with case ids); the KiTS19 and 2D datamodules use it. The protocol (``docs/data/kits19.md``): the
test cases are held out first and used for nothing but the final score; the validation cases (checkpoint selection,
LR schedule, post-processing decisions) come out of what is left, the training split.

K-fold cross-validation (:func:`fold_split`, ``--data.num_folds K --data.fold k``) splits what the test split leaves
into K case-level folds; fold k validates on part k. Folds are read and written in nnU-Net's ``splits_final.json``
layout (:func:`read_splits`, :func:`write_splits`), so a user's own nnU-Net splits file works as it is.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from segzoo.data.io import DataError
from segzoo.utils import atomic_write_text


def _count(value: int | float, n: int, name: str) -> int:
    """An int is a count; a float in [0, 1) a fraction of ``n`` (rounded, at least 1 when > 0)."""
    if isinstance(value, float) and not isinstance(value, bool):
        if not 0.0 <= value < 1.0:
            raise DataError(f"{name}={value}: a float must be a fraction in [0, 1)")
        return max(1, round(value * n)) if value > 0 else 0
    count = int(value)
    if count < 0:
        raise DataError(f"{name}={value}: expected a count >= 0 or a fraction in [0, 1)")
    return count


def split_cases(
    case_ids: Sequence[str], num_val_cases: int | float, split_seed: int = 0
) -> tuple[list[str], list[str]]:
    """Split case ids into ``(train, val)`` by a seeded permutation.

    Args:
        case_ids: case ids.
        num_val_cases: an int is a count; a float in [0, 1) a fraction (rounded, at least 1 when > 0).
        split_seed: permutation seed.

    Raises:
        DataError: the split would leave no training case.
    """
    train, val, _ = split_train_val_test(case_ids, num_val_cases, 0, split_seed)
    return train, val


def split_train_val_test(
    case_ids: Sequence[str], num_val_cases: int | float, num_test_cases: int | float = 0, split_seed: int = 0
) -> tuple[list[str], list[str], list[str]]:
    """Three disjoint, sorted case lists ``(train, val, test)`` from one seeded permutation of the sorted ids.

    The first ``num_test_cases`` of the permutation are the test cases; the next ``num_val_cases`` the validation
    cases; the rest train. So the test set does not depend on ``num_val_cases``, and with ``num_test_cases=0`` the
    validation set is the one :func:`split_cases` gives.

    Args:
        case_ids: case ids.
        num_val_cases: validation cases, taken from what the test set leaves (int = count, float = fraction of it).
        num_test_cases: test cases (int = count, float = fraction of all cases).
        split_seed: permutation seed.

    Raises:
        DataError: a bad count, or no training case left.
    """
    ids = sorted(case_ids)
    n = len(ids)
    n_test = _count(num_test_cases, n, "num_test_cases")
    n_val = _count(num_val_cases, n - n_test, "num_val_cases")
    if n_test + n_val >= n:
        raise DataError(
            f"num_val_cases={num_val_cases}, num_test_cases={num_test_cases}: {n} labelled cases leave no training "
            f"case; expected fewer validation + test cases than labelled cases (int = count, float = fraction)"
        )
    perm = np.random.default_rng(split_seed).permutation(n)
    if n_test == 0:
        val_idx, test_idx, train_idx = perm[:n_val], perm[:0], perm[n_val:]
    else:
        test_idx, val_idx, train_idx = perm[:n_test], perm[n_test : n_test + n_val], perm[n_test + n_val :]
    return tuple(sorted(ids[i] for i in part) for part in (train_idx, val_idx, test_idx))  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------------------ k folds
SPLITS_FILE = "splits_final.json"  # nnU-Net's name: the folds of a run, in its folder


def fold_record_name(num_folds: int, split_seed: int) -> str:
    """File name of the seeded folds recorded in a dataset's preprocessing folder (one per K and seed)."""
    return f"splits_{int(num_folds)}fold_seed{int(split_seed)}.json"


def kfold_splits(case_ids: Sequence[str], num_folds: int, split_seed: int = 0) -> list[dict[str, list[str]]]:
    """``num_folds`` case-level folds: one seeded permutation of the sorted ids cut into ``num_folds`` parts of sizes
    differing by at most one (the first ``n % num_folds`` one larger, as scikit-learn's ``KFold``).

    Returns nnU-Net's ``splits_final.json`` layout ``[{"train": [...], "val": [...]}, ...]`` (sorted lists): fold ``k``
    validates on part ``k`` and trains on the rest, so the validation parts partition the cases.

    Raises:
        DataError: ``num_folds < 2`` or more folds than cases.
    """
    ids = sorted(case_ids)
    if int(num_folds) < 2 or int(num_folds) > len(ids):
        raise DataError(f"num_folds={num_folds}: expected 2 <= folds <= the {len(ids)} cases the folds split")
    perm = np.random.default_rng(split_seed).permutation(len(ids))
    parts = [sorted(ids[i] for i in part) for part in np.array_split(perm, int(num_folds))]
    return [
        {"train": sorted(c for j, part in enumerate(parts) if j != k for c in part), "val": part}
        for k, part in enumerate(parts)
    ]


def read_splits(path: str | os.PathLike) -> list[dict[str, list[str]]]:
    """Read a splits file in nnU-Net's ``splits_final.json`` layout; a :class:`DataError` naming the file otherwise."""
    from segzoo.data.io import read_json

    path = Path(path)
    data = read_json(path, "splits file")
    ok = isinstance(data, list) and bool(data)
    for k, fold in enumerate(data if ok else []):
        if not (isinstance(fold, dict) and {"train", "val"} <= set(fold)):
            ok = False
        elif not all(isinstance(fold[s], list) and all(isinstance(c, str) for c in fold[s]) for s in ("train", "val")):
            ok = False
        elif set(fold["train"]) & set(fold["val"]):
            overlap = sorted(set(fold["train"]) & set(fold["val"]))
            raise DataError(f"{path}: fold {k} trains and validates on the same cases {overlap[:3]}")
        if not ok:
            break
    if not ok:
        raise DataError(
            f'{path}: not a splits file; expected nnU-Net\'s layout [{{"train": [case ids], "val": [case ids]}}, ...]'
        )
    return [{"train": sorted(f["train"]), "val": sorted(f["val"])} for f in data]


def write_splits(path: str | os.PathLike, splits: list[dict[str, list[str]]]) -> Path:
    """Write ``splits`` (nnU-Net's layout) to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(splits, indent=1))


def fold_split(
    case_ids: Sequence[str],
    num_folds: int,
    fold: int,
    num_test_cases: int | float = 0,
    split_seed: int = 0,
    splits_file: str | os.PathLike | None = None,
    record: str | os.PathLike | None = None,
) -> tuple[list[str], list[str], list[str]]:
    """``(train, val, test)`` of fold ``fold``: the test cases held out first (the ones
    :func:`split_train_val_test` holds out), the folds over the rest, validation = the held-out fold.

    Args:
        case_ids: the labelled case ids.
        num_folds: number of folds K (``0``: the number of folds in ``splits_file``).
        fold: which fold, ``0 <= fold < K``.
        num_test_cases: test cases held out of every fold (int = count, float = fraction).
        split_seed: seed of the test split and of the folds.
        splits_file: a user's splits file (nnU-Net's ``splits_final.json`` layout) to use instead of seeded folds.
        record: where seeded folds are written the first time and read back after (the dataset's preprocessing
            folder), so a rerun uses the same folds even if the code that draws them changes.

    Raises:
        DataError: one line naming the file and the problem (a case not in the dataset or in the test split, a
            fold number out of range, a record whose folds no longer cover the cases).
    """
    pool, _, test = split_train_val_test(case_ids, 0, num_test_cases, split_seed)
    known, held_out = set(case_ids), set(test)
    if splits_file is not None:
        source = Path(splits_file)
        splits = read_splits(source)
    elif record is not None and Path(record).is_file():
        source = Path(record)
        splits = read_splits(source)
        covered = set(splits[0]["train"]) | set(splits[0]["val"])
        if len(splits) != num_folds or covered != set(pool):
            new, gone = sorted(set(pool) - covered), sorted(covered - set(pool))
            raise DataError(
                f"{source}: holds {len(splits)} folds over {len(covered)} cases, this run asks {num_folds} folds over "
                f"{len(pool)} (not in the file: {new[:3]}, no longer in the pool: {gone[:3]}); the dataset or its test "
                "split changed: delete the file to draw new folds, or pass --data.splits_file"
            )
    else:
        source, splits = None, kfold_splits(pool, num_folds, split_seed)
        if record is not None:
            write_splits(record, splits)
    where = f"{source}: " if source is not None else ""
    if num_folds and len(splits) != num_folds:
        raise DataError(f"{where}holds {len(splits)} folds; --data.num_folds asks {num_folds}")
    if not 0 <= fold < len(splits):
        raise DataError(f"{where}fold={fold}: expected 0 <= fold < {len(splits)} (the number of folds)")
    train, val = splits[fold]["train"], splits[fold]["val"]
    unknown = sorted(set(train + val) - known)
    if unknown:
        raise DataError(f"{where}fold {fold} names cases that are not labelled cases of the dataset: {unknown[:3]}")
    leaked = sorted(set(train + val) & held_out)
    if leaked:
        raise DataError(
            f"{where}fold {fold} uses test cases {leaked[:3]} (held out by num_test_cases={num_test_cases}); the test "
            "split stays out of every fold"
        )
    if not train or not val:
        raise DataError(f"{where}fold {fold} has no {'training' if not train else 'validation'} case")
    return list(train), list(val), test
