"""Case-level splits: one seeded permutation of the sorted case ids, cut into test, validation and training cases.

Generic (any dataset with case ids); the KiTS19 and 2D datamodules use it. The protocol (``docs/data/kits19.md``): the
test cases are held out first and used for nothing but the final score; the validation cases (checkpoint selection,
LR schedule, post-processing decisions) come out of what is left, the training split.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from segzoo.data.io import DataError


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
