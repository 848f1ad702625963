"""Dataset-independent sampling: the epoch-seeded sampler and foreground-oversampled patch placement.

Foreground oversampling (a fraction of the patches centred on a random foreground voxel of a class drawn uniformly)
follows nnU-Net (Isensee et al., 2021). Everything here is a function of the generator or seed it is given: no global
RNG, so a run resumed at an epoch boundary draws what the uninterrupted run would have drawn.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence

import numpy as np
from torch.utils.data import DistributedSampler


def case_rng(seed: int, case_id: str, *extra: int) -> np.random.Generator:
    """A generator for one case: a function of ``seed``, the case id and ``extra`` only, so what a case draws does not
    depend on the order of the cases or on which other cases are present."""
    return np.random.default_rng([seed, zlib.crc32(case_id.encode()), *extra])


class EpochShuffleSampler(DistributedSampler):
    """A per-epoch shuffle of ``size`` items for one rank, with the epoch folded into the indices it yields.

    Epoch ``e``'s order is a permutation seeded with ``(seed, e)`` alone (padded by wrapping around to a multiple of
    the world size, as ``DistributedSampler`` does), split between ranks by stride; the yielded index is
    ``e * size + item``, so a dataset that seeds its augmentation with the index (``item = index % size``) draws
    new augmentations every epoch, and a run resumed from an epoch-boundary checkpoint sees exactly the batches of
    the uninterrupted run (a ``shuffle=True`` DataLoader draws its order from the global torch RNG, which no
    checkpoint holds). Lightning calls :meth:`set_epoch` every epoch and keeps this sampler under DDP.

    Args:
        size: number of items in the dataset.
        num_replicas: world size.
        rank: this process's global rank.
        seed: shuffle seed.
        shuffle: permute every epoch (else the items in order).
    """

    def __init__(self, size: int, num_replicas: int = 1, rank: int = 0, seed: int = 0, shuffle: bool = True) -> None:
        if size < 1 or num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(
                f"EpochShuffleSampler: need size >= 1 and 0 <= rank < num_replicas, got size={size}, "
                f"num_replicas={num_replicas}, rank={rank}"
            )
        self.size, self.num_replicas, self.rank = int(size), int(num_replicas), int(rank)
        self.num_samples = -(-self.size // self.num_replicas)
        self.total_size = self.num_samples * self.num_replicas
        self.epoch, self.seed, self.shuffle, self.drop_last = 0, int(seed), bool(shuffle), False

    def __iter__(self):
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.size) if self.shuffle else None
        order = np.resize(np.arange(self.size) if order is None else order, self.total_size)  # wrap-around padding
        mine = order[self.rank : self.total_size : self.num_replicas]
        return iter((self.epoch * self.size + mine).tolist())

    def __len__(self) -> int:
        return self.num_samples


def crop_padded(array: np.ndarray, lo: np.ndarray, size: np.ndarray, pad_value: float) -> np.ndarray:
    """Cut ``(C, *size)`` out of ``array`` ``(C, *spatial)`` starting at ``lo``, a copy.

    ``lo`` may lie outside the array (negative, or the region may run past the end): what falls outside is padded
    with ``pad_value``. Reads only the overlapping region, so ``array`` may be a memmap.
    """
    shape = np.array(array.shape[1:])
    a = np.clip(lo, 0, shape)
    b = np.clip(lo + size, 0, shape)
    out = np.array(array[(slice(None), *(slice(int(i), int(j)) for i, j in zip(a, b)))])  # copy out of a memmap
    pad = [(0, 0)] + [(int(i - l), int(l + s - j)) for i, j, l, s in zip(a, b, lo, size)]
    if any(p != (0, 0) for p in pad):
        out = np.pad(out, pad, mode="constant", constant_values=pad_value)
    return out


def draw_patch_origin(
    rng: np.random.Generator,
    shape: Sequence[int],
    crop_size: Sequence[int],
    patch_size: Sequence[int],
    locations: Mapping[int, np.ndarray],
    foreground_oversample: float,
) -> tuple[np.ndarray, bool]:
    """Where to cut a ``crop_size`` region whose centre ``patch_size`` is the training patch.

    With probability ``foreground_oversample`` (and when ``locations`` is not empty) the crop is centred on a random
    voxel of a class drawn uniformly from ``locations`` (``{class: (N, 3) voxel indices}``); otherwise the PATCH is
    placed uniformly over the case (a case smaller than the patch is centred and padded) and the crop extends it by
    the margin on each side.

    Returns:
        ``(lo, centred_on_foreground)``: the crop's first voxel (may be negative or run past the case: pad it, see
        :func:`crop_padded`).
    """
    shape, size = np.array(shape), np.array(crop_size)
    foreground = bool(locations) and rng.random() < foreground_oversample
    if foreground:
        cls = sorted(locations)[int(rng.integers(len(locations)))]
        center = locations[cls][int(rng.integers(len(locations[cls])))]
        return center - size // 2, True
    patch = np.minimum(np.array(patch_size), size)
    hi = np.maximum(shape - patch, 0)
    lo_patch = np.array([rng.integers(h + 1) for h in hi]) - np.maximum(patch - shape, 0) // 2
    return lo_patch - (size - patch) // 2, False
