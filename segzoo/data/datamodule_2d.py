"""2D slice DataModules for the DR-Net experiments: CHAOS MR (4 organs) and BraTS (glioma sub-regions).

Paper: You et al., "DR-Net: dual-rotation network with feature map enhancement for medical image
segmentation", Complex & Intelligent Systems 2022: 256x256 inputs, no other preprocessing, a 3:2 train/test
split; on BraTS the two slices with the largest lesion per case (240x240 slices zero-padded to 256x256).

Batches (shared segzoo convention):

- train: 2D slices, ``image`` float32 (B, C, H, W), ``label`` int64 (B, 1, H, W), ``case_id`` list[str];
- val/test/predict: one item per case (batch size 1), the case's selected slices as a 3D stack:
  ``image`` (1, C, S, H, W), ``label`` (1, 1, S, H, W), ``spacing`` (1, 3) in mm for the axes (S, H, W)
  (adjusted for the resize), so a 2D net runs slice by slice with
  ``monai.inferers.SliceInferer(spatial_dim=0)`` and volume metrics are per case. With a slice selection other
  than ``"all"`` the slices are not neighbours: the slice spacing is NaN, and the metrics score each slice in 2D
  (BraTS) or refuse the case (CHAOS, volumetric).

Choices where the paper is silent (docs/data/chaos_brats.md):

- split at case level (no slice of a test case is seen in training); validation uses the test cases, as the
  paper has no separate validation set;
- ``normalize="zscore"`` by default: per case and channel, over the whole loaded volume (BraTS: over the
  non-zero brain voxels, the zero background stays 0); ``"none"`` keeps the raw intensities as in the paper;
- ``augment`` (off by default, as in the paper) uses small rotations/scalings and intensity jitter but no flips (a
  left-right flip would swap the right and left kidney classes of CHAOS): :class:`~segzoo.data.augment.SliceAugmentConfig`,
  applied by :class:`~segzoo.data.gpu_augment.SampleAugment`, the on-device ``BatchAugment`` code on one slice;
- every case is read, normalised, cut to the selected slices and resized once, then kept in memory.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import Dataset

from segzoo.data.augment import AugmentConfig, SliceAugmentConfig, resolve_augment
from segzoo.data.brats import BRATS_CLASS_NAMES, BRATS_LABELS, brats_label_to_index, find_brats_cases, load_brats_case
from segzoo.data.chaos import CHAOS_CLASS_NAMES, CHAOS_SEQUENCES, find_chaos_cases, load_chaos_case
from segzoo.data.datamodule import split_cases
from segzoo.data.gpu_augment import SampleAugment
from segzoo.data.io import DataError
from segzoo.data.sampling import EpochShuffleSampler
from segzoo.data.slice2d import SlicePreprocessor, fit_slices, zscore  # noqa: F401  (re-exported)

_NORMALIZE = ("none", "zscore")
_RESIZE = ("resize", "pad")


# ----------------------------------------------------------------------------------------------- helpers
def select_slices(label: np.ndarray, mode: str) -> np.ndarray:
    """Indices (ascending) of the slices to keep from a label stack (S, H, W).

    Args:
        label: class indices, slices along axis 0.
        mode: ``"all"``; ``"lesion"`` (slices with any foreground label); ``"largest<k>"`` (the k slices with
            the largest foreground area, ties to the lower index; only slices with foreground).
    """
    area = (label.reshape(label.shape[0], -1) > 0).sum(axis=1)
    if mode == "all":
        return np.arange(label.shape[0])
    if mode == "lesion":
        return np.flatnonzero(area > 0)
    match = re.fullmatch(r"largest(\d+)", mode)
    if match and int(match.group(1)) > 0:
        order = np.argsort(-area, kind="stable")[: int(match.group(1))]
        return np.sort(order[area[order] > 0])
    raise ValueError(f"slice_selection must be 'all', 'lesion' or 'largest<k>' (e.g. 'largest2'), got {mode!r}")


def split_case_ids(case_ids: Sequence[str], train_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Random case-level split: ``round(train_fraction * n)`` cases (at least 1, at most n - 1) to train.

    Both lists come back sorted; the split depends only on the sorted ids, the fraction and the seed. The same
    seeded permutation as the KiTS19 split (:func:`segzoo.data.datamodule.split_cases`).
    """
    n = len(case_ids)
    if n < 2:
        raise DataError(f"need at least 2 cases for a train/test split, found {n}: {sorted(case_ids)}")
    n_train = min(max(int(round(train_fraction * n)), 1), n - 1)
    return split_cases(case_ids, n - n_train, seed)


@dataclass
class SliceCase:
    """A case prepared for 2D training: image (C, S, H, W) float32, label (S, H, W) uint8, spacing (3,)."""

    case_id: str
    image: torch.Tensor
    label: torch.Tensor
    spacing: torch.Tensor


class SliceDataset(Dataset):
    """Every slice of the given cases as one 2D item; ``transform`` (MONAI dict transform) only here.

    Index ``i`` is slice ``i % len(self)``; its augmentation is seeded with ``(seed, i)``, so with
    :class:`segzoo.data.sampling.EpochShuffleSampler` (which folds the epoch into ``i``) every epoch draws new
    augmentations, the same in any worker and after a resume.
    """

    def __init__(self, cases: Sequence[SliceCase], transform: Any = None, seed: int = 0) -> None:
        self.cases = list(cases)
        self.index = [(c, s) for c, case in enumerate(self.cases) for s in range(case.image.shape[1])]
        self.transform = transform
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, Any]:
        c, s = self.index[i % len(self.index)]
        case = self.cases[c]
        item = {"image": case.image[:, s], "label": case.label[s][None].long()}
        if self.transform is not None:
            self.transform.set_random_state(seed=int(np.random.default_rng([self.seed, int(i)]).integers(2**31)))
            item = self.transform(item)
            image, label = item["image"], item["label"]
            image = image.as_tensor() if hasattr(image, "as_tensor") else image
            label = label.as_tensor() if hasattr(label, "as_tensor") else label
            item = {"image": image.float().contiguous(), "label": label.round().long().contiguous()}
        item["case_id"] = case.case_id
        return item


class CaseDataset(Dataset):
    """One item per case: the stack of its selected slices, with the spacing (for volume metrics)."""

    def __init__(self, cases: Sequence[SliceCase]) -> None:
        self.cases = list(cases)

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, i: int) -> dict[str, Any]:
        case = self.cases[i]
        return {
            "image": case.image,
            "label": case.label[None].long(),
            "spacing": case.spacing,
            "case_id": case.case_id,
        }


# ----------------------------------------------------------------------------------------------- base
class _SliceDataModule(L.LightningDataModule):
    """Shared logic: synthetic fallback, case-level split, per-case cache, 2D train / 3D stack eval loaders."""

    _zscore_nonzero = False
    _dataset = ""

    def __init__(
        self,
        data_dir: str,
        slice_selection: str,
        image_size: Sequence[int],
        resize_mode: str,
        batch_size: int,
        train_fraction: float,
        split_seed: int,
        num_workers: int,
        normalize: str,
        augment: bool | AugmentConfig,
        synthetic_cases: int,
        synthetic_seed: int,
        synthetic_size: str,
        seed: int = 0,
        num_folds: int = 0,
        fold: int = 0,
        splits_file: str | None = None,
    ) -> None:
        super().__init__()
        select_slices(np.zeros((1, 1, 1), dtype=np.uint8), slice_selection)  # validates the mode
        if len(image_size) != 2 or any(int(s) < 1 for s in image_size):
            raise ValueError(f"image_size must be two positive ints (H, W), got {image_size!r}")
        if resize_mode not in _RESIZE:
            raise ValueError(f"resize_mode must be one of {_RESIZE}, got {resize_mode!r}")
        if normalize not in _NORMALIZE:
            raise ValueError(f"normalize must be one of {_NORMALIZE}, got {normalize!r}")
        if not (0.0 < train_fraction < 1.0 or (train_fraction == 1.0 and (num_folds or splits_file))):
            raise ValueError(f"train_fraction must be in (0, 1) (1 with folds: no test cases), got {train_fraction}")
        if synthetic_size not in ("small", "large"):
            raise ValueError(f"synthetic_size must be 'small' or 'large', got {synthetic_size!r}")
        if batch_size < 1 or num_workers < 0:
            raise ValueError(f"batch_size must be >= 1 and num_workers >= 0, got {batch_size}, {num_workers}")
        self.data_dir = Path(data_dir)
        self.slice_selection = slice_selection
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.resize_mode = resize_mode
        self.batch_size = batch_size
        self.train_fraction = train_fraction
        self.split_seed = split_seed
        self.num_workers = num_workers
        self.normalize = normalize
        self.augment = resolve_augment(augment, SliceAugmentConfig)
        self.synthetic_cases = synthetic_cases
        self.synthetic_seed = synthetic_seed
        self.synthetic_size = synthetic_size
        self.seed = int(seed)
        self.num_folds, self.fold, self.splits_file = int(num_folds), int(fold), splits_file
        self._fold_val_ids: list[str] = []
        self._cache: dict[str, SliceCase | None] = {}
        self._paths: dict[str, Path] | None = None
        self.train_case_ids: list[str] = []
        self.test_case_ids: list[str] = []

    # subclasses
    def _find(self) -> list[Path]:
        raise NotImplementedError

    def _read(self, path: Path) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
        """(image (C, S, H, W) float32, class indices (S, H, W) uint8, spacing (S, H, W) mm)."""
        raise NotImplementedError

    def _write_synthetic(self) -> None:
        raise NotImplementedError

    def _preprocessor_args(self) -> dict[str, Any]:
        """Dataset-specific :class:`SlicePreprocessor` arguments (subclasses)."""
        raise NotImplementedError

    @property
    def preprocessor(self) -> SlicePreprocessor:
        """What is done to a case before the net sees its slices; the task stores it in the checkpoint
        (``segzoo_format["preprocessor"]``, type ``"slice2d"``) so ``segzoo infer`` can predict new cases."""
        return SlicePreprocessor(
            in_channels=self.in_channels,
            image_size=self.image_size,
            resize_mode=self.resize_mode,
            normalize=self.normalize,
            zscore_nonzero=self._zscore_nonzero,
            **self._preprocessor_args(),
        )

    @property
    def val_case_ids(self) -> list[str]:
        """Validation cases: the held-out (test) cases, as the paper has only a 3:2 train/test split; with folds
        (``num_folds``, ``fold``) the held-out fold."""
        return self._fold_val_ids if self._folds() else self.test_case_ids

    @property
    def statistics_case_ids(self) -> list[str]:
        """The cases a dataset's normalisation statistics come from: the training cases; with folds every fold's
        (so all folds preprocess alike, as nnU-Net)."""
        return sorted(self.train_case_ids + self._fold_val_ids)

    def _folds(self) -> bool:
        return bool(self.num_folds or self.splits_file)

    def prepare_data(self) -> None:
        """Write ``synthetic_cases`` synthetic cases into ``data_dir`` if it is missing or empty."""
        empty = not self.data_dir.exists() or not any(not p.name.startswith(".") for p in self.data_dir.iterdir())
        if empty and self.synthetic_cases > 0:
            self._write_synthetic()

    def _case_paths(self) -> dict[str, Path]:
        if self._paths is None:
            if not self.data_dir.is_dir() or not any(self.data_dir.iterdir()):
                raise DataError(
                    f"{self.data_dir}: {self._dataset} data folder missing or empty; point data_dir at the data, "
                    "or set synthetic_cases > 0 and call prepare_data() (Lightning does) to generate synthetic cases"
                )
            paths = self._find()
            self._paths = {p.name: p for p in paths}
        return self._paths

    def setup(self, stage: str | None = None) -> None:
        """Find the cases, split them 3:2 (``train_fraction``) and load the cases the stage needs (once)."""
        paths = self._case_paths()
        if self._folds():  # the test cases of the plain split stay held out; folds over the rest (k-fold CV)
            from segzoo.data.splits import SPLITS_FILE, fold_split

            n = len(paths)
            n_test = 0 if self.train_fraction == 1.0 else n - min(max(int(round(self.train_fraction * n)), 1), n - 1)
            # recorded in the run folder the first time and read back after (2D data have no preprocessing folder)
            record = Path(self.trainer.default_root_dir) / SPLITS_FILE if self.trainer is not None else None
            split = fold_split(
                list(paths), self.num_folds, self.fold, n_test, self.split_seed, self.splits_file, record
            )
            self.train_case_ids, self._fold_val_ids, self.test_case_ids = split
            return
        self.train_case_ids, self.test_case_ids = split_case_ids(list(paths), self.train_fraction, self.split_seed)

    def _prepared(self, case_ids: Sequence[str]) -> list[SliceCase]:
        out = []
        for case_id in case_ids:
            if case_id not in self._cache:
                self._cache[case_id] = self._prepare_case(case_id)
            if self._cache[case_id] is not None:
                out.append(self._cache[case_id])
        if not out:
            raise DataError(
                f"{self.data_dir}: no slices left in cases {list(case_ids)} with slice_selection="
                f"{self.slice_selection!r}"
            )
        return out

    def _prepare_case(self, case_id: str) -> SliceCase | None:
        path = self._case_paths()[case_id]
        image, label, spacing = self._read(path)
        if self.normalize == "zscore":
            image = zscore(image, nonzero=self._zscore_nonzero)  # statistics of the whole volume
        keep = select_slices(label, self.slice_selection)
        if keep.size == 0:
            warnings.warn(
                f"{path}: no slice with foreground; case skipped (slice_selection={self.slice_selection!r})",
                stacklevel=2,
            )
            return None
        img = torch.from_numpy(np.ascontiguousarray(image[:, keep], dtype=np.float32))
        lab = torch.from_numpy(np.ascontiguousarray(label[keep], dtype=np.uint8))
        img, lab, (fr, fc) = fit_slices(img, lab, self.image_size, self.resize_mode)
        # a selection of slices has no slice spacing: NaN tells the metrics to score per slice (docstring above)
        dz = spacing[0] if self.slice_selection == "all" else float("nan")
        spacing_t = torch.tensor([dz, spacing[1] * fr, spacing[2] * fc], dtype=torch.float32)
        return SliceCase(case_id, img, lab, spacing_t)

    def _train_transform(self) -> SampleAugment | None:
        return None if self.augment is None else SampleAugment(self.augment)

    def _seed(self) -> list[int]:
        """Seed of the shuffle and the augmentation: ``(split_seed, seed)``."""
        return [self.split_seed, self.seed]

    def train_dataset(self) -> SliceDataset:
        """2D slices of the training cases."""
        if not self.train_case_ids:
            self.setup("fit")
        seed = int(np.random.default_rng(self._seed()).integers(2**31))
        return SliceDataset(self._prepared(self.train_case_ids), self._train_transform(), seed=seed)

    def eval_dataset(self, split: str = "test") -> CaseDataset:
        """One 3D slice stack per held-out case (``split="val"``: per validation case)."""
        if not self.train_case_ids:
            self.setup("test")
        return CaseDataset(self._prepared(self.val_case_ids if split == "val" else self.test_case_ids))

    def _loader(self, dataset: Dataset, batch_size: int, shuffle: bool):
        from monai.data import DataLoader

        sampler = None
        if shuffle:  # an order that depends on (seed, epoch) only: resumable, disjoint between DDP ranks
            world, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer is not None else (1, 0)
            seed = int(np.random.default_rng(self._seed()).integers(2**31))
            sampler = EpochShuffleSampler(len(dataset), num_replicas=world, rank=rank, seed=seed)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self):
        return self._loader(self.train_dataset(), self.batch_size, shuffle=True)

    def val_dataloader(self):
        return self._loader(self.eval_dataset("val"), 1, shuffle=False)

    def test_dataloader(self):
        return self._loader(self.eval_dataset(), 1, shuffle=False)

    def predict_dataloader(self):
        return self._loader(self.eval_dataset(), 1, shuffle=False)


# ----------------------------------------------------------------------------------------------- CHAOS
class CHAOSDataModule(_SliceDataModule):
    """CHAOS MR, one sequence, 5 classes (background, liver, right kidney, left kidney, spleen).

    Args:
        data_dir: folder holding ``Train_Sets/MR/<id>/...`` (or ``Train_Sets`` or ``Train_Sets/MR``).
        sequence: ``"T1DUAL_InPhase"``, ``"T1DUAL_OutPhase"`` or ``"T2SPIR"``.
        slice_selection: ``"all"`` (default), ``"lesion"`` (slices with any organ) or ``"largest<k>"``.
        image_size: in-plane size (H, W) of every slice; the paper uses 256x256.
        resize_mode: ``"resize"`` (bilinear / nearest for labels) or ``"pad"`` (centred zero padding).
        batch_size: 2D slices per training batch (validation and test: one case per batch).
        train_fraction: fraction of cases for training; 0.6 is the paper's 3:2 split.
        split_seed: seed of the case-level split; with ``seed`` also of the shuffle and the augmentation.
        seed: seed of the training-slice shuffle and augmentation, passed explicitly (``seed_everything`` seeds
            torch, not the data); with ``split_seed`` the order and the augmentation depend only on the seeds, the
            epoch and the position, so a resumed run draws the batches of the uninterrupted one.
        num_workers: DataLoader workers.
        normalize: ``"zscore"`` (per case over all voxels; default, our choice) or ``"none"`` (the paper).
        augment: ``True`` = :class:`~segzoo.data.augment.SliceAugmentConfig` defaults (rotation +-15 deg, zoom
            +-10 %, intensity scale and noise; no flips), ``False`` = off (the paper), or the fields to change
            (YAML ``augment: {rotate_prob: 0.3}``).
        synthetic_cases: if > 0 and ``data_dir`` is missing or empty, :meth:`prepare_data` writes that many
            synthetic cases there (:func:`segzoo.data.synthetic.chaos.write_chaos`).
        synthetic_seed: seed of the synthetic cases.
        synthetic_size: ``"small"`` (128x128) or ``"large"`` (256x256) synthetic cases.
        strict_labels: unknown ground-truth grey values are an error (else a warning, mapped to background).
        num_folds: k-fold cross-validation (``segzoo cv``): the cases the ``train_fraction`` split trains on (all,
            with ``train_fraction`` 1) are cut into this many case-level folds
            (:func:`segzoo.data.splits.fold_split`, recorded in ``RUN/splits_final.json``); validation = fold ``fold``,
            the held-out cases stay the test cases. 0 = no folds.
        fold: the fold this run validates on (``0 <= fold < num_folds``).
        splits_file: the folds from a splits file in nnU-Net's ``splits_final.json`` layout.
    """

    _dataset = "CHAOS"
    num_classes = 5
    in_channels = 1
    class_names = CHAOS_CLASS_NAMES

    def __init__(
        self,
        data_dir: str = "data/chaos",
        sequence: str = "T2SPIR",
        slice_selection: str = "all",
        image_size: Sequence[int] = (256, 256),
        resize_mode: str = "resize",
        batch_size: int = 8,
        train_fraction: float = 0.6,
        split_seed: int = 0,
        seed: int = 0,
        num_workers: int = 0,
        normalize: str = "zscore",
        augment: bool | SliceAugmentConfig = False,
        synthetic_cases: int = 0,
        synthetic_seed: int = 0,
        synthetic_size: str = "small",
        strict_labels: bool = True,
        num_folds: int = 0,
        fold: int = 0,
        splits_file: str | None = None,
    ) -> None:
        if sequence not in CHAOS_SEQUENCES:
            raise ValueError(f"sequence must be one of {CHAOS_SEQUENCES}, got {sequence!r}")
        super().__init__(
            data_dir, slice_selection, image_size, resize_mode, batch_size, train_fraction, split_seed,
            num_workers, normalize, augment, synthetic_cases, synthetic_seed, synthetic_size, seed,
            num_folds=num_folds, fold=fold, splits_file=splits_file,
        )  # fmt: skip
        self.sequence = sequence
        self.strict_labels = strict_labels
        self.save_hyperparameters()
        self.hparams["augment"] = self.augment.to_dict() if self.augment is not None else False  # plain data

    def _preprocessor_args(self) -> dict[str, Any]:
        return {"dataset": "chaos", "label_values": list(range(len(CHAOS_CLASS_NAMES))), "sequence": self.sequence}

    def _find(self) -> list[Path]:
        return find_chaos_cases(self.data_dir, self.sequence)

    def _read(self, path: Path):
        case = load_chaos_case(path, self.sequence, strict=self.strict_labels)
        return case.image[None], case.label, case.spacing

    def _write_synthetic(self) -> None:
        from segzoo.data.synthetic.chaos import write_chaos

        write_chaos(self.data_dir, cases=self.synthetic_cases, seed=self.synthetic_seed, size=self.synthetic_size)


# ----------------------------------------------------------------------------------------------- BraTS
class BraTSDataModule(_SliceDataModule):
    """BraTS 2018-2021, 4 modalities (t1, t1ce, t2, flair), 4 classes: labels 0, 1, 2, 4 -> indices 0, 1, 2, 3.

    Slices are the axial planes (the last NIfTI axis): stacks are (C, Z, X, Y) with spacing (z, x, y).

    Args:
        data_dir: folder with the case folders (flat) or with ``HGG/`` and ``LGG/`` (2018).
        slice_selection: ``"largest2"`` (default, the paper: the two slices with the largest lesion per case),
            ``"lesion"`` (every slice with tumour) or ``"all"`` (memory: ~160 MB per real case at 256x256).
        image_size: in-plane size (H, W); the paper uses 256x256.
        resize_mode: ``"pad"`` (default, the paper zero-pads 240x240 to 256x256) or ``"resize"``.
        batch_size: 2D slices per training batch (validation and test: one case per batch).
        train_fraction: fraction of cases for training; 0.6 is the paper's 3:2 split.
        split_seed: seed of the case-level split; with ``seed`` also of the shuffle and the augmentation.
        seed: seed of the training-slice shuffle and augmentation, passed explicitly (``seed_everything`` seeds
            torch, not the data); with ``split_seed`` the order and the augmentation depend only on the seeds, the
            epoch and the position, so a resumed run draws the batches of the uninterrupted one.
        num_workers: DataLoader workers.
        normalize: ``"zscore"`` (per case and modality over the brain voxels; default, our choice) or
            ``"none"`` (the paper).
        augment: ``True`` = :class:`~segzoo.data.augment.SliceAugmentConfig` defaults (rotation +-15 deg, zoom
            +-10 %, intensity scale and noise; no flips), ``False`` = off (the paper), or the fields to change
            (YAML ``augment: {rotate_prob: 0.3}``).
        synthetic_cases: if > 0 and ``data_dir`` is missing or empty, :meth:`prepare_data` writes that many
            synthetic cases there (:func:`segzoo.data.synthetic.brats.write_brats`, flat layout).
        synthetic_seed: seed of the synthetic cases.
        synthetic_size: ``"small"`` (96x96x48) or ``"large"`` (240x240x155) synthetic cases.
        et_label: enhancing-tumour value in the seg files: 4 (2018-2021) or 3 (BraTS 2023).
        orientation: axis codes every case is brought to (exact permutation/flip) before slicing along the last
            axis; the default ``("L", "P", "S")`` is how the BraTS releases store them, so a case re-saved RAS by
            another tool gives the same slices. ``None`` slices the arrays as stored.
        num_folds: k-fold cross-validation (``segzoo cv``): the cases the ``train_fraction`` split trains on (all,
            with ``train_fraction`` 1) are cut into this many case-level folds
            (:func:`segzoo.data.splits.fold_split`, recorded in ``RUN/splits_final.json``); validation = fold ``fold``,
            the held-out cases stay the test cases. 0 = no folds.
        fold: the fold this run validates on (``0 <= fold < num_folds``).
        splits_file: the folds from a splits file in nnU-Net's ``splits_final.json`` layout.
    """

    _dataset = "BraTS"
    _zscore_nonzero = True
    num_classes = 4
    in_channels = 4
    class_names = BRATS_CLASS_NAMES

    def __init__(
        self,
        data_dir: str = "data/brats",
        slice_selection: str = "largest2",
        image_size: Sequence[int] = (256, 256),
        resize_mode: str = "pad",
        batch_size: int = 8,
        train_fraction: float = 0.6,
        split_seed: int = 0,
        seed: int = 0,
        num_workers: int = 0,
        normalize: str = "zscore",
        augment: bool | SliceAugmentConfig = False,
        synthetic_cases: int = 0,
        synthetic_seed: int = 0,
        synthetic_size: str = "small",
        et_label: int = 4,
        orientation: Sequence[str] | None = ("L", "P", "S"),
        num_folds: int = 0,
        fold: int = 0,
        splits_file: str | None = None,
    ) -> None:
        if et_label not in (3, 4):
            raise ValueError(f"et_label must be 4 (BraTS 2018-2021) or 3 (BraTS 2023), got {et_label}")
        super().__init__(
            data_dir, slice_selection, image_size, resize_mode, batch_size, train_fraction, split_seed,
            num_workers, normalize, augment, synthetic_cases, synthetic_seed, synthetic_size, seed,
            num_folds=num_folds, fold=fold, splits_file=splits_file,
        )  # fmt: skip
        self.et_label = et_label
        self.orientation = None if orientation is None else tuple(orientation)
        self.save_hyperparameters()
        self.hparams["augment"] = self.augment.to_dict() if self.augment is not None else False  # plain data

    def _preprocessor_args(self) -> dict[str, Any]:
        return {"dataset": "brats", "label_values": list(BRATS_LABELS), "orientation": self.orientation}

    def _find(self) -> list[Path]:
        return find_brats_cases(self.data_dir)

    def _read(self, path: Path):
        case = load_brats_case(path, et_label=self.et_label, orientation=self.orientation)
        image = np.transpose(case.image, (0, 3, 1, 2))  # axial slices first: (C, Z, X, Y)
        label = brats_label_to_index(np.transpose(case.label, (2, 0, 1)))
        sx, sy, sz = case.spacing
        return image, label, (sz, sx, sy)

    def _write_synthetic(self) -> None:
        from segzoo.data.synthetic.brats import write_brats

        write_brats(self.data_dir, cases=self.synthetic_cases, seed=self.synthetic_seed, size=self.synthetic_size)


class SliceDataModule(_SliceDataModule):
    """2D slices of any dataset (:func:`segzoo.data.sources.open_source`: nnU-Net v2 raw, Decathlon, MONAI datalist,
    KiTS19, BraTS, CHAOS) for DR-Net and the 2D baselines.

    Channels, classes and label names come from the dataset; each channel is normalised by its name as in the 3D
    plan (:func:`segzoo.data.planning.normalization_for`: ``CT`` with the dataset's foreground clip and z-score,
    others per-case z-score, ``noNorm``); every case is brought to the dataset's majority orientation and cut into
    slices along its coarsest axis (the thick-slice axis of anisotropic data), each slice fitted to ``image_size``.
    The dataset is checked (``segzoo verify``) before the first case is read for training. The preprocessing is
    stored in the checkpoint (:class:`~segzoo.data.slice2d.VolumeSlicePreprocessor`), so ``segzoo infer`` writes
    each prediction on its input's grid.

    Args:
        data_dir: a folder with dataset.json (nnU-Net raw or Decathlon), a KiTS19 / BraTS / CHAOS folder, or a MONAI
            datalist ``.json`` file.
        image_size: in-plane size ``(H, W)`` of the slices fed to the net (the paper: 256x256).
        resize_mode: ``"resize"`` (bilinear) or ``"pad"`` (centred zero padding).
        slice_selection: ``"all"``, ``"lesion"`` or ``"largest<k>"`` slices per case.
        batch_size: training slices per batch.
        train_fraction: fraction of the labelled cases trained on; the rest validate (case level).
        split_seed: seed of the case split.
        num_workers: DataLoader workers.
        augment: slice augmentation (``SliceAugmentConfig``) or ``False``.
        verify: check the dataset before training.
        seed: seed of the shuffle and augmentation.
        num_folds: k-fold cross-validation (``segzoo cv``): the cases the ``train_fraction`` split trains on (all,
            with ``train_fraction`` 1) are cut into this many case-level folds
            (:func:`segzoo.data.splits.fold_split`, recorded in ``RUN/splits_final.json``); validation = fold ``fold``,
            the held-out cases stay the test cases. 0 = no folds.
        fold: the fold this run validates on (``0 <= fold < num_folds``).
        splits_file: the folds from a splits file in nnU-Net's ``splits_final.json`` layout.
    """

    _dataset = "generic"

    def __init__(
        self,
        data_dir: str,
        image_size: Sequence[int] = (256, 256),
        resize_mode: str = "resize",
        slice_selection: str = "all",
        batch_size: int = 8,
        train_fraction: float = 0.8,
        split_seed: int = 0,
        num_workers: int = 2,
        augment: bool | AugmentConfig = False,
        verify: bool = True,
        seed: int = 0,
        num_folds: int = 0,
        fold: int = 0,
        splits_file: str | None = None,
    ) -> None:
        super().__init__(
            data_dir,
            slice_selection,
            image_size,
            resize_mode,
            batch_size,
            train_fraction,
            split_seed,
            num_workers,
            "none",  # the per-channel normalisation of the preprocessor replaces the parent's z-score
            augment,
            0,
            0,
            "small",
            seed,
            num_folds=num_folds,
            fold=fold,
            splits_file=splits_file,
        )
        from segzoo.data.datamodule import _region_encoding
        from segzoo.data.planning import header_fingerprint, normalization_for, slice_axis
        from segzoo.data.sources import open_source

        self.source = open_source(data_dir)
        self.regions, self.regions_class_order = _region_encoding(self.source)
        if not self.source.training:
            raise DataError(f"{self.source.root}: no labelled training case found")
        self.verify = bool(verify)
        self.in_channels = self.source.in_channels
        self.num_classes = self.source.num_classes
        self.label_names = self.source.label_names
        self.class_names = [self.label_names[k] for k in sorted(self.label_names) if k != 0]
        headers = header_fingerprint(self.source.training)
        self.orientation = tuple(headers["orientation"])
        self.slice_axis = slice_axis(headers["median_spacing"])  # the coarsest axis, as `segzoo plan` prints it
        self.normalization = [normalization_for(n) for n in self.source.channel_names]
        self._channel_stats: list | None = None

    def prepare_data(self) -> None:
        """The dataset check (``segzoo verify``) before anything is read for training; nothing is written."""
        if self.verify:
            from segzoo.data.verify import verify_source

            report = verify_source(self.source)
            if not report.ok:
                import sys

                for line in report.errors:
                    print(f"segzoo verify: error: {line}", file=sys.stderr)
                report.raise_if_bad()

    def _case_paths(self) -> dict[str, Any]:
        if self._paths is None:
            self._paths = {c.case_id: c for c in self.source.training}
        return self._paths

    def _stats(self) -> list:
        """Foreground statistics of the ``CT`` channels over the training cases (computed once)."""
        if self._channel_stats is None:
            if "ct" in self.normalization:
                from segzoo.data.fingerprint import compute_fingerprint

                if not self.train_case_ids:
                    self.setup("fit")
                paths = self._case_paths()
                fp = compute_fingerprint([paths[c] for c in self.statistics_case_ids])
                self._channel_stats = fp["channels"]
            else:
                self._channel_stats = [None] * len(self.normalization)
        return self._channel_stats

    @property
    def preprocessor(self):
        from segzoo.data.slice2d import VolumeSlicePreprocessor

        labels = {}
        if self.regions:
            labels = {
                "regions": self.regions,
                "regions_class_order": self.regions_class_order,
                "num_labels": len(self.label_names),
            }
        return VolumeSlicePreprocessor(
            self.normalization,
            self._stats(),
            self.image_size,
            self.resize_mode,
            self.slice_axis,
            self.orientation,
            **labels,
        )

    def _read(self, case) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
        from segzoo.data.geometry import spacing_from_affine

        image, label, affine = case.load()
        pre = self.preprocessor
        r = pre.reorientation(affine, image.shape[1:], name=case.image)
        image, label = r.apply(image, first_axis=1), r.apply(label)
        spacing = r.apply_spacing(spacing_from_affine(affine))
        image = pre.to_stack(pre.normalize(image))
        label = pre.to_stack(label, channels=False)
        sp = (spacing[self.slice_axis], *[s for i, s in enumerate(spacing) if i != self.slice_axis])
        return np.ascontiguousarray(image), np.ascontiguousarray(label), tuple(float(v) for v in sp)
