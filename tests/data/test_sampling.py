"""segzoo.data.sampling: the epoch-seeded sampler and the patch placement, by hand computations."""

import numpy as np
import pytest

from segzoo.data.sampling import EpochShuffleSampler, crop_padded, draw_patch_origin


def test_unshuffled_sampler_epochs_and_ranks():
    s = EpochShuffleSampler(6, num_replicas=2, rank=1, shuffle=False)  # KiTS19: 3 patches per rank and epoch
    assert list(s) == [1, 3, 5] and len(s) == 3
    s.set_epoch(2)
    assert list(s) == [13, 15, 17]
    r0 = EpochShuffleSampler(6, num_replicas=2, rank=0, shuffle=False)
    r0.set_epoch(2)
    assert set(r0).isdisjoint(s)
    with pytest.raises(ValueError, match="rank"):
        EpochShuffleSampler(6, num_replicas=2, rank=2)


def test_epoch_shuffle_sampler():
    single = EpochShuffleSampler(10, seed=3)
    epoch0 = list(single)
    assert sorted(i % 10 for i in epoch0) == list(range(10)) and epoch0 != list(range(10))  # a permutation
    single.set_epoch(1)
    epoch1 = list(single)
    assert all(10 <= i < 20 for i in epoch1)  # the epoch is folded into the index
    assert [i % 10 for i in epoch1] != [i % 10 for i in epoch0]  # a new order
    assert list(EpochShuffleSampler(10, seed=3)) == epoch0  # depends on (seed, epoch) only
    ranks = [EpochShuffleSampler(10, num_replicas=3, rank=r, seed=3) for r in range(3)]
    assert [len(r) for r in ranks] == [4, 4, 4]  # padded to a multiple of the world size, like DistributedSampler
    drawn = [i for r in ranks for i in r]
    assert sorted(set(drawn)) == sorted(epoch0) and len(drawn) == 12
    assert list(EpochShuffleSampler(4, shuffle=False)) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="size"):
        EpochShuffleSampler(0)


def test_crop_padded_by_hand():
    a = np.arange(2 * 4 * 5).reshape(2, 4, 5)
    inside = crop_padded(a, np.array([1, 2]), np.array([2, 3]), pad_value=-1)
    np.testing.assert_array_equal(inside, a[:, 1:3, 2:5])
    corner = crop_padded(a, np.array([-1, 3]), np.array([3, 4]), pad_value=-1)  # runs off the top and the right
    expected = np.full((2, 3, 4), -1)
    expected[:, 1:3, 0:2] = a[:, 0:2, 3:5]
    np.testing.assert_array_equal(corner, expected)
    memmap_like = a.copy()
    crop_padded(memmap_like, np.array([0, 0]), np.array([4, 5]), 0)[0, 0, 0] = 99
    assert memmap_like[0, 0, 0] == 0  # a copy, never a view


def test_draw_patch_origin_uniform_and_foreground():
    rng = np.random.default_rng(0)
    # no foreground: the PATCH start is uniform over 0..shape-patch; the crop adds the margin (crop - patch) // 2
    starts = [draw_patch_origin(rng, (10,), (6,), (4,), {}, 1.0) for _ in range(2000)]
    assert not any(fg for _, fg in starts)
    values = np.array([lo[0] for lo, _ in starts]) + 1
    assert set(values) == set(range(7)) and abs(np.bincount(values).std() / np.bincount(values).mean()) < 0.15
    # a case smaller than the patch is centred (negative start, padded)
    lo, _ = draw_patch_origin(rng, (2,), (6,), (6,), {}, 0.0)
    assert lo[0] == -2
    # always foreground: the crop is centred on one of the stored voxels, classes drawn uniformly
    locs = {1: np.array([[3, 3]]), 2: np.array([[7, 1], [7, 2]])}
    drawn = [draw_patch_origin(rng, (10, 10), (4, 4), (4, 4), locs, 1.0) for _ in range(1000)]
    centres = [tuple(lo + 2) for lo, fg in drawn if fg]
    assert len(centres) == 1000 and set(centres) == {(3, 3), (7, 1), (7, 2)}
    assert abs(centres.count((3, 3)) / 1000 - 0.5) < 0.06
