"""KiTS19 LightningDataModule: split, fingerprint, preprocessing cache, foreground-oversampled augmented patches.

Reference: Zhao et al., "Multi Scale Supervised 3D U-Net for Kidney and Tumor Segmentation" (KiTS19): patch
192x192x48, random patches, an epoch = 250 iterations, 42-case hold-out of the 210 labelled cases. Foreground
oversampling (a fraction of the patches centred on a random foreground voxel) follows nnU-Net. See
``docs/data/kits19.md``.

Batches (shared segzoo convention):
- train: ``image`` float32 ``(B, 1, D, H, W)``, ``label`` int64 ``(B, 1, D, H, W)``, ``case_id`` list[str];
- validate / test: one whole preprocessed case per batch, plus ``spacing`` float ``(1, 3)`` (the target spacing, mm,
  array axis order);
- predict: every case (labelled or not) like validation (``label`` only where present) plus ``original_shape``
  int64 ``(1, 3)`` and ``affine`` float64 ``(1, 4, 4)`` of the stored image, ``oriented_shape`` ``(1, 3)`` and
  ``orientation_transform`` ``(1, 3, 2)`` (the exact flip/permutation to the training orientation) and
  ``source_image`` (path), so a prediction can be restored and written on the input's own grid and header.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from monai.transforms import Compose
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from segzoo.data.augment import AugmentConfig, resolve_augment
from segzoo.data.cache import cache_paths, load_properties, preprocess_dataset
from segzoo.data.fingerprint import FINGERPRINT_VERSION, compute_fingerprint, load_fingerprint, save_fingerprint
from segzoo.data.geometry import Reorientation
from segzoo.data.io import DataError, load_nifti
from segzoo.data.kits19 import KITS19_LABELS, KiTS19Case, find_kits19_cases
from segzoo.data.preprocessor import CTPreprocessor
from segzoo.data.sampling import EpochShuffleSampler, crop_padded, draw_patch_origin
from segzoo.data.splits import split_cases, split_train_val_test  # noqa: F401  (split_cases: re-exported)
from segzoo.data.transforms import RandSpatialAugmentd, augmentation_input_size, build_kits19_transforms
from segzoo.utils import atomic_write_text


def _plain(x: Any) -> torch.Tensor:
    """MONAI MetaTensor -> plain tensor (cheaper to collate and pin)."""
    return x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)


class PatchDataset(Dataset):
    """Random training patches read from the cache (``np.load(mmap_mode="r")``), foreground-oversampled.

    ``len`` is the number of patches per epoch; the index only seeds the draw (nnU-Net style): each item draws a case
    uniformly, then with probability ``foreground_oversample`` centres the crop on a random stored foreground voxel
    of a class present in the case (classes drawn uniformly), otherwise anywhere in the case.

    Randomness: item ``index`` draws its case, patch position and augmentation from a generator seeded with
    ``(seed, index)`` alone, so a patch does not depend on the worker, the process or what was drawn before it.
    :class:`EpochShuffleSampler` (``shuffle=False``) hands out indices that differ per epoch and rank, so every epoch sees new patches and
    a run resumed at an epoch boundary draws exactly the patches the uninterrupted run would have drawn.

    Args:
        cache_dir: preprocessing cache.
        case_ids: training cases.
        patch_size: output patch ``(D, H, W)``.
        length: items per epoch (``iterations_per_epoch * batch_size``).
        foreground_oversample: fraction of patches centred on foreground.
        transforms: augmentation (see :func:`build_kits19_transforms`) or ``None``.
        seed: base seed of every item's generator.
    """

    def __init__(
        self,
        cache_dir: str | os.PathLike,
        case_ids: Sequence[str],
        patch_size: Sequence[int],
        length: int,
        foreground_oversample: float = 0.33,
        transforms=None,
        seed: int = 0,
    ) -> None:
        if not case_ids:
            raise DataError("PatchDataset: no training cases")
        self.cache_dir = Path(cache_dir)
        self.case_ids = list(case_ids)
        self.patch_size = tuple(int(s) for s in patch_size)
        self.length = int(length)
        self.foreground_oversample = float(foreground_oversample)
        self.transforms = transforms
        self.seed = int(seed)
        self.crop_size = augmentation_input_size(transforms, self.patch_size)  # worst case over all draws
        # a leading spatial transform is drawn BEFORE cropping so only the region the draw needs is read
        self._spatial, self._rest = None, transforms
        if (
            transforms is not None
            and transforms.transforms
            and isinstance(transforms.transforms[0], RandSpatialAugmentd)
        ):
            self._spatial = transforms.transforms[0]
            self._rest = Compose(transforms.transforms[1:]) if len(transforms.transforms) > 1 else None
        self.properties = {c: load_properties(self.cache_dir, c) for c in self.case_ids}
        self.locations = {
            c: {int(k): np.asarray(v, dtype=np.int64) for k, v in p["class_locations"].items() if len(v)}
            for c, p in self.properties.items()
        }
        self._arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._arrays_pid = os.getpid()

    def __len__(self) -> int:
        return self.length

    def generator(self, index: int) -> np.random.Generator:
        """The generator of item ``index`` (seeded with ``(seed, index)``); also reseeds the augmentation from it."""
        if index < 0:
            raise IndexError(f"PatchDataset: index must be >= 0, got {index}")
        rng = np.random.default_rng([self.seed, int(index)])
        if self.transforms is not None:
            self.transforms.set_random_state(seed=int(rng.integers(2**31)))
        return rng

    def _case(self, case_id: str) -> tuple[np.ndarray, np.ndarray]:
        if self._arrays_pid != os.getpid():  # memmaps are per process (DataLoader workers)
            self._arrays, self._arrays_pid = {}, os.getpid()
        if case_id not in self._arrays:
            paths = cache_paths(self.cache_dir, case_id)
            self._arrays[case_id] = (np.load(paths["image"], mmap_mode="r"), np.load(paths["label"], mmap_mode="r"))
        return self._arrays[case_id]

    def sample(
        self, rng: np.random.Generator, crop_size: Sequence[int] | None = None
    ) -> tuple[str, np.ndarray, np.ndarray, bool]:
        """Draw ``(case_id, image crop, label crop, centred_on_foreground)`` of ``crop_size`` (default: worst case).

        The patch (the centre ``patch_size`` of the crop) is placed the same way whatever ``crop_size`` is: centred
        on a foreground voxel, or uniformly over the case; the margin around it is padded where it leaves the case.
        """
        case_id = self.case_ids[int(rng.integers(len(self.case_ids)))]
        image, label = self._case(case_id)
        size = np.array(self.crop_size if crop_size is None else crop_size)
        lo, foreground = draw_patch_origin(
            rng, image.shape[1:], size, self.patch_size, self.locations[case_id], self.foreground_oversample
        )
        img = crop_padded(image, lo, size, float(self.properties[case_id]["image_min"]))
        seg = crop_padded(label, lo, size, 0)
        return case_id, img, seg, foreground

    def __getitem__(self, index: int) -> dict[str, Any]:
        rng = self.generator(index)
        crop_size = None
        if self._spatial is not None:
            self._spatial.randomize()
            crop_size = self._spatial.draw_input_size()
        case_id, img, seg, _ = self.sample(rng, crop_size)
        data = {"image": torch.from_numpy(img.astype(np.float32, copy=False)), "label": torch.from_numpy(seg)}
        if self._spatial is not None:
            data = self._spatial(data, randomize=False)
        if self._rest is not None:
            data = self._rest(data)
        return {
            "image": _plain(data["image"]).float().contiguous(),
            "label": _plain(data["label"]).long().contiguous(),
            "case_id": case_id,
        }


class CaseDataset(Dataset):
    """Whole preprocessed cases (validation, test, predict).

    Args:
        cache_dir: preprocessing cache.
        case_ids: cases to serve.
        with_geometry: add ``original_shape`` and ``affine`` (predict, and scoring on the original grid).
        original_labels: ``{case_id: segmentation.nii.gz path}``; those cases also get ``original_label``, the
            reference label map ``(*original spatial)`` as stored, so a prediction restored to the original grid is
            scored against the annotation itself (not its resampled copy).
    """

    def __init__(
        self,
        cache_dir: str | os.PathLike,
        case_ids: Sequence[str],
        with_geometry: bool = False,
        original_labels: dict[str, Path] | None = None,
    ) -> None:
        self.cache_dir = Path(cache_dir)
        self.case_ids = list(case_ids)
        self.with_geometry = with_geometry
        self.original_labels = dict(original_labels or {})

    def __len__(self) -> int:
        return len(self.case_ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        case_id = self.case_ids[index]
        paths = cache_paths(self.cache_dir, case_id)
        props = load_properties(self.cache_dir, case_id)
        item: dict[str, Any] = {
            "image": torch.from_numpy(np.load(paths["image"])),
            "case_id": case_id,
            "spacing": torch.tensor(props["target_spacing"], dtype=torch.float32),
        }
        if props["has_label"]:
            item["label"] = torch.from_numpy(np.load(paths["label"]).astype(np.int64))
        if self.with_geometry:
            item["original_shape"] = torch.tensor(props["original_shape"], dtype=torch.int64)
            item["affine"] = torch.tensor(props["affine"], dtype=torch.float64)
            # the cache is in the training orientation: the writer restores to oriented_shape, then undoes the flip
            item["oriented_shape"] = torch.tensor(props["oriented_shape"], dtype=torch.int64)
            item["orientation_transform"] = torch.tensor(props["orientation_transform"], dtype=torch.int64)
            item["source_image"] = props["source_image"]
        if case_id in self.original_labels:
            # scored where the net saw the case: the stored label brought to the training orientation by the case's
            # exact permutation/flip (the same voxels, so the same Dice/HD95 as on the file's own axes)
            label, _ = load_nifti(self.original_labels[case_id])
            r = Reorientation.from_transform(props["orientation_transform"], props["original_shape"])
            item["original_label"] = torch.from_numpy(np.ascontiguousarray(r.apply(np.asarray(label))).astype(np.int64))
            item["original_shape"] = torch.tensor(props["original_shape"], dtype=torch.int64)
            item["oriented_shape"] = torch.tensor(props["oriented_shape"], dtype=torch.int64)
            item["original_spacing"] = torch.tensor(props["original_spacing"], dtype=torch.float32)
        return item


class PatchDataModule(L.LightningDataModule):
    """3D patches of any dataset: verified, planned, fingerprinted, preprocessed once, foreground-oversampled.

    ``data_dir`` is an nnU-Net v2 raw dataset folder, a Decathlon task folder, a MONAI datalist ``.json`` file or a
    KiTS19 folder (:func:`segzoo.data.sources.open_source`). Channels and classes come from the dataset
    (``in_channels``, ``num_classes``, ``label_names``: the CLI links them to the net and the metric). The plan
    (:func:`segzoo.data.planning.plan_dataset`, from the headers) gives the target spacing, the patch size and the 3D
    net's topology (``plan``; ``segzoo fit`` puts ``kernel_size`` / ``strides`` into an
    :class:`~segzoo.nets.MSSUNet` when ``plan_net``); each channel is normalised by its name (``CT``: the dataset's
    foreground clip and z-score; others: per-case z-score; ``noNorm``). Before anything is written the dataset goes
    through ``segzoo verify``'s check (:mod:`segzoo.data.verify`), which stops on the first error.

    Args:
        data_dir: the dataset (see above).
        cache_dir: preprocessing cache; default ``<data_dir>_preprocessed`` next to the dataset.
        target_spacing: voxel size to resample to (mm, training-orientation axis order); ``None`` = the plan's.
        patch_size: training patch; ``None`` = the plan's.
        batch_size: training batch size (the plan's memory estimate assumes it).
        iterations_per_epoch: batches per training epoch.
        num_val_cases: validation cases taken out of the labelled cases (int = count, float = fraction).
        num_test_cases: held-out test cases among the labelled cases; 0 = none.
        split_seed: seed of the case split.
        num_folds: k-fold cross-validation (``segzoo cv``): the cases the test split leaves are cut into this many
            case-level folds (:func:`segzoo.data.splits.fold_split`, recorded in ``cache_dir`` the first time and read
            back after, copied to ``RUN/splits_final.json``); validation = fold ``fold``, ``num_val_cases`` unused;
            the fingerprint then comes from all the folds' cases, so every fold preprocesses alike (as nnU-Net). 0 = no
            folds.
        fold: the fold this run validates on (``0 <= fold < num_folds``).
        splits_file: a splits file in nnU-Net's ``splits_final.json`` layout to take the folds from instead.
        foreground_oversample: fraction of training patches centred on a foreground voxel.
        augment: the augmentation (see :class:`KiTS19DataModule`).
        image_order: image resampling order (1 linear, 3 cubic).
        num_workers: training DataLoader workers.
        val_num_workers: validation/test/predict DataLoader workers.
        preprocess_num_workers: processes for verification, fingerprint and preprocessing (0 = in process).
        memory_budget_gb: activation memory one training step may take (the plan's patch size).
        max_patch_voxels: optional cap on the planned patch's voxel count (a CPU budget).
        max_levels: most resolution levels of the planned topology.
        base_features: the net's base width the memory estimate assumes.
        max_features: the net's widest level the memory estimate assumes.
        plan_net: ``segzoo fit`` sets an MSSUNet's ``kernel_size`` and ``strides`` from the plan (announced).
        verify: check the dataset (``segzoo verify``) before the first preprocessing.
        score_on_original_grid: validation and test score predictions restored to each case's original grid.
        seed: seed of the training patches and their augmentation.
    """

    def __init__(
        self,
        data_dir: str,
        cache_dir: str | None = None,
        target_spacing: Sequence[float] | None = None,
        patch_size: Sequence[int] | None = None,
        batch_size: int = 2,
        iterations_per_epoch: int = 250,
        num_val_cases: int | float = 0.2,
        num_test_cases: int | float = 0,
        split_seed: int = 0,
        num_folds: int = 0,
        fold: int = 0,
        splits_file: str | None = None,
        foreground_oversample: float = 0.33,
        augment: bool | AugmentConfig = True,
        image_order: int = 1,
        num_workers: int = 2,
        val_num_workers: int = 0,
        preprocess_num_workers: int = 0,
        memory_budget_gb: float = 8.0,
        max_patch_voxels: int | None = None,
        max_levels: int | None = 5,
        base_features: int = 30,
        max_features: int = 320,
        plan_net: bool = True,
        verify: bool = True,
        score_on_original_grid: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        from segzoo.data.sources import open_source

        self.source = open_source(data_dir)
        self.regions, self.regions_class_order = _region_encoding(self.source)
        self.in_channels = self.source.in_channels
        self.num_classes = self.source.num_classes
        self.label_names = self.source.label_names
        self.plan = _plan(self.source, self.hparams)
        self._init_common(
            data_dir,
            cache_dir,
            self.plan["target_spacing"],
            patch_size or self.plan["patch_size"],
            augment,
            foreground_oversample,
        )

    def _init_common(self, data_dir, cache_dir, target_spacing, patch_size, augment, foreground_oversample) -> None:
        self.augment = resolve_augment(augment, AugmentConfig)
        self.hparams["augment"] = self.augment.to_dict() if self.augment is not None else False  # plain data
        self.data_dir = Path(data_dir)
        self.cache_dir = (
            Path(cache_dir) if cache_dir else self.data_dir.parent / f"{self.data_dir.name or 'data'}_preprocessed"
        )
        if len(patch_size) != 3:
            raise ValueError(f"patch_size={tuple(patch_size)}: expected 3 sizes (D, H, W)")
        if not 0.0 <= foreground_oversample <= 1.0:
            raise ValueError(f"foreground_oversample={foreground_oversample}: expected a fraction in [0, 1]")
        self.target_spacing = None if target_spacing is None else tuple(float(s) for s in target_spacing)
        self.patch_size = tuple(int(s) for s in patch_size)
        self.preprocessor = None
        self.fingerprint: dict[str, Any] | None = None
        self.train_cases: list[str] = []
        self.val_cases: list[str] = []
        self.test_cases: list[str] = []
        self.all_cases: list[str] = []
        self._label_paths: dict[str, Path] = {}
        self._restored: dict[str, Any] | None = None

    # ---------------------------------------------------------------------------------- what a dataset subclass sets
    def _list_cases(self) -> list:
        """Every case (labelled and not), read-only."""
        return [*self.source.training, *self.source.test]

    def _prepare_cases(self) -> list:
        """:meth:`_list_cases` after the dataset check (``verify``); nothing is written before it passes."""
        cases = self._list_cases()
        if self.hparams.verify:
            self._verify(cases)
        return cases

    def _verify(self, cases: list) -> None:
        """``segzoo verify``'s check of the cases whose files changed since they were last verified."""
        from segzoo.data.verify import verify_source

        record = self.cache_dir / "verified.json"
        seen = {}
        if record.is_file():
            try:
                seen = json.loads(record.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                seen = {}
        keys = {c.case_id: _files_key(c) for c in cases}
        todo = [c for c in cases if seen.get(c.case_id) != keys[c.case_id]]
        report = verify_source(self.source, self.hparams.preprocess_num_workers, cases=todo)
        if not report.ok:
            import sys

            for line in report.errors:
                print(f"segzoo verify: error: {line}", file=sys.stderr)
            report.raise_if_bad()
        if todo:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(record, json.dumps({**seen, **{c.case_id: keys[c.case_id] for c in todo}}, indent=1))

    def _build_preprocessor(self, fingerprint: dict[str, Any]):
        from segzoo.data.preprocessor import Preprocessor

        if self._restored is not None:  # a checkpoint's preprocessing wins over a recomputed one
            return Preprocessor.from_dict(self._restored)
        plan = {**self.plan, "target_spacing": list(self.target_spacing), "orientation": fingerprint.get("orientation")}
        return Preprocessor.from_plan(plan, fingerprint, self.hparams.image_order, **self.label_encoding())

    def label_encoding(self) -> dict[str, Any]:
        """``{"regions", "regions_class_order", "num_labels"}`` of a region dataset (the preprocessing stores it for
        inference), else ``{}``."""
        if not self.regions:
            return {}
        return {
            "regions": self.regions,
            "regions_class_order": self.regions_class_order,
            "num_labels": len(self.label_names),
        }

    def _preprocessor_from_dict(self, d: dict[str, Any]):
        from segzoo.data.preprocessor import Preprocessor

        return Preprocessor.from_dict(d)

    def _no_labels_message(self) -> str:
        return f"{self.data_dir}: no labelled case; training needs labelled cases"

    # ------------------------------------------------------------------------------------------------ one-time work
    def _split(self, cases: list) -> tuple[list[str], list[str], list[str]]:
        labelled = [c.case_id for c in cases if c.label is not None]
        if not labelled:
            raise DataError(self._no_labels_message())
        hp = self.hparams
        if hp.num_folds or hp.splits_file:
            from segzoo.data.splits import fold_record_name, fold_split

            record = None if hp.splits_file else self.cache_dir / fold_record_name(hp.num_folds, hp.split_seed)
            return fold_split(labelled, hp.num_folds, hp.fold, hp.num_test_cases, hp.split_seed, hp.splits_file, record)
        return split_train_val_test(labelled, hp.num_val_cases, hp.num_test_cases, hp.split_seed)

    def _record_folds(self, train: list[str], val: list[str]) -> list[str]:
        """With folds: copy them to ``RUN/splits_final.json`` and return the cases of all folds (the fingerprint's, so
        every fold preprocesses alike); else the training cases."""
        hp = self.hparams
        if not (hp.num_folds or hp.splits_file):
            return train
        from segzoo.data.splits import SPLITS_FILE, fold_record_name, read_splits, write_splits

        if self.trainer is not None:
            source = hp.splits_file or self.cache_dir / fold_record_name(hp.num_folds, hp.split_seed)
            write_splits(Path(self.trainer.default_root_dir) / SPLITS_FILE, read_splits(source))
        return sorted([*train, *val])

    def prepare_data(self) -> None:
        """Dataset check (or synthetic data if asked), split, fingerprint (training split only), preprocessing cache.
        Rank 0 only."""
        cases = self._prepare_cases()
        train, val, test = self._split(cases)
        fp_cases = self._record_folds(train, val)
        fp_path = self.cache_dir / "fingerprint.json"
        fingerprint = None
        if fp_path.is_file():
            fingerprint = load_fingerprint(fp_path)
            if fingerprint.get("train_cases") != fp_cases or fingerprint.get("version") != FINGERPRINT_VERSION:
                fingerprint = None  # the split changed (or an older fingerprint): recompute from the training cases
        if fingerprint is None:
            by_id = {c.case_id: c for c in cases}
            fingerprint = compute_fingerprint(
                [by_id[c] for c in fp_cases], num_workers=self.hparams.preprocess_num_workers
            )
            save_fingerprint(fingerprint, fp_path)
        atomic_write_text(
            self.cache_dir / "split.json", json.dumps({"train": train, "val": val, "test": test}, indent=1)
        )
        preprocessor = self._build_preprocessor(fingerprint)
        if self.plan is not None:
            plan = {**self.plan, "dataset": self.source.summary(), "patch_size_used": list(self.patch_size)}
            atomic_write_text(self.cache_dir / "plan.json", json.dumps(plan, indent=1))
        preprocess_dataset(cases, self.cache_dir, preprocessor, num_workers=self.hparams.preprocess_num_workers)

    def setup(self, stage: str | None = None) -> None:
        """Read split, fingerprint and cache written by :meth:`prepare_data` (every rank)."""
        cases = self._list_cases()
        self.train_cases, self.val_cases, self.test_cases = self._split(cases)
        self._label_paths = {c.case_id: c.label for c in cases if c.label is not None}
        self.all_cases = [c.case_id for c in cases]
        self.fingerprint = load_fingerprint(self.cache_dir / "fingerprint.json")
        self.preprocessor = self._build_preprocessor(self.fingerprint)
        key = self.preprocessor.params_hash()
        stale = []
        for c in self.all_cases:
            props = cache_paths(self.cache_dir, c)["properties"]
            if not props.is_file():
                raise DataError(f"{props}: not preprocessed; call prepare_data() first (Lightning does)")
            if load_properties(self.cache_dir, c).get("params_hash") != key:
                stale.append(c)
        if stale:
            raise DataError(
                f"{self.cache_dir}: cases {stale[:3]} were preprocessed with other parameters than {self.preprocessor}; "
                "call prepare_data() again"
            )

    # ------------------------------------------------------------------------------------------------- dataloaders
    def train_transforms(self):
        if self.augment is None:
            return None
        return build_kits19_transforms(self.patch_size, self.augment)

    def train_dataset(self) -> PatchDataset:
        hp = self.hparams
        # an epoch is `iterations_per_epoch` optimizer steps on every rank (the distributed sampler splits the
        # dataset between ranks), so the global batch per step is batch_size x world_size, as in the paper's 2 GPUs
        world = self.trainer.world_size if self.trainer is not None else 1
        return PatchDataset(
            self.cache_dir,
            self.train_cases,
            self.patch_size,
            length=hp.iterations_per_epoch * hp.batch_size * world,
            foreground_oversample=hp.foreground_oversample,
            transforms=self.train_transforms(),
            seed=hp.seed,
        )

    def _loader(
        self, dataset: Dataset, batch_size: int, workers: int, sampler: DistributedSampler | None = None
    ) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=torch.cuda.is_available(),
            drop_last=False,
        )

    def train_dataloader(self) -> DataLoader:
        hp = self.hparams
        world, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer is not None else (1, 0)
        # every index is a fresh random patch, so no shuffle: epoch e, rank r draw e * n * world + r + k * world
        n = hp.iterations_per_epoch * hp.batch_size
        sampler = EpochShuffleSampler(n * world, num_replicas=world, rank=rank, shuffle=False)
        return self._loader(self.train_dataset(), hp.batch_size, hp.num_workers, sampler=sampler)

    def _eval_dataset(self, case_ids: list[str]) -> CaseDataset:
        if not self.hparams.score_on_original_grid:
            return CaseDataset(self.cache_dir, case_ids)
        labels = {c: self._label_paths[c] for c in case_ids if c in self._label_paths}
        return CaseDataset(self.cache_dir, case_ids, with_geometry=True, original_labels=labels)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self._eval_dataset(self.val_cases), 1, self.hparams.val_num_workers)

    def test_dataloader(self) -> DataLoader:
        """The held-out test cases (never used for a choice: see :func:`segzoo.data.splits.split_train_val_test`)."""
        if not self.test_cases:
            raise DataError(
                f"{self.data_dir}: no test cases (num_test_cases={self.hparams.num_test_cases}); set "
                "--data.num_test_cases to hold some out before training"
            )
        return self._loader(self._eval_dataset(self.test_cases), 1, self.hparams.val_num_workers)

    def predict_dataloader(self) -> DataLoader:
        ds = CaseDataset(self.cache_dir, self.all_cases, with_geometry=True)
        return self._loader(ds, 1, self.hparams.val_num_workers)

    def case_properties(self, case_id: str) -> dict[str, Any]:
        """Cached properties of a case: original shape/spacing/affine, preprocessed shape, foreground locations."""
        return load_properties(self.cache_dir, case_id)

    # ----------------------------------------------------------------------------------------- checkpoint state
    def state_dict(self) -> dict[str, Any]:
        """``{"preprocessor": preprocessor.to_dict()}``: enough to rebuild the preprocessing from a checkpoint."""
        if self.preprocessor is None:
            return {}
        return {"preprocessor": self.preprocessor.to_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Adopt a checkpoint's preprocessing.

        Lightning restores this AFTER ``prepare_data``/``setup``; when the checkpoint's preprocessor differs from the
        one just computed (other data, split or target spacing), the cache is brought in line with it here (the
        manifest makes this a no-op for cases already preprocessed that way), so training never mixes the two.
        """
        if "preprocessor" not in state_dict:
            return
        self._restored = dict(state_dict["preprocessor"])
        restored = self._preprocessor_from_dict(self._restored)
        if self.preprocessor is not None and self.all_cases and restored.to_dict() != self.preprocessor.to_dict():
            from lightning.pytorch.utilities import rank_zero_warn

            rank_zero_warn(
                f"{type(self).__name__}: the checkpoint's preprocessing {restored} differs from the recomputed "
                f"{self.preprocessor}; re-preprocessing {self.cache_dir} with the checkpoint's"
            )
            preprocess_dataset(
                self._list_cases(),
                self.cache_dir,
                restored,
                num_workers=self.hparams.preprocess_num_workers,
            )
        self.preprocessor = restored


class KiTS19DataModule(PatchDataModule):
    """KiTS19 data: split by case, fingerprint from the training split, preprocessing cache, patch sampling.

    Args:
        data_dir: KiTS19 folder (``case_XXXXX/imaging.nii.gz`` [+ ``segmentation.nii.gz``]).
        cache_dir: preprocessing cache; default ``<data_dir parent>/<data_dir name>_preprocessed`` (next to the data,
            so every run on the same data and parameters shares it; the manifest keys it by parameters).
        target_spacing: voxel size to resample to (mm, slice axis first); ``None`` = the fingerprint's median.
        patch_size: training patch ``(D, H, W)``.
        batch_size: training batch size.
        iterations_per_epoch: batches per training epoch.
        num_val_cases: validation cases (checkpoint selection, LR schedule, post-processing decisions), taken out of
            the training split (int = count, float = fraction of the cases the test split leaves).
        num_test_cases: held-out test cases among the labelled cases (int = count, float = fraction; the paper: 42 of
            210), scored by ``segzoo test`` only; 0 = no test split.
        split_seed: seed of the case split (:func:`segzoo.data.splits.split_train_val_test`).
        num_folds: k-fold cross-validation; see :class:`PatchDataModule`.
        fold: the fold this run validates on.
        splits_file: folds from a splits file in nnU-Net's ``splits_final.json`` layout.
        foreground_oversample: fraction of training patches centred on a foreground voxel.
        augment: the augmentation of the training patches in the DataLoader workers
            (:func:`build_kits19_transforms`): ``True`` = :class:`~segzoo.data.augment.AugmentConfig` defaults
            (nnU-Net's), ``False`` = off (e.g. with ``BatchAugment`` on the device), or an ``AugmentConfig`` / in
            YAML the fields to change (``augment: {rotate_prob: 0.5, elastic_prob: 0.0}``).
        image_order: image resampling order (1 linear, 3 cubic).
        num_workers: training DataLoader workers.
        val_num_workers: validation/test/predict DataLoader workers.
        preprocess_num_workers: processes for the fingerprint and the preprocessing cache (0 = in process).
        synthetic_cases: if > 0 and ``data_dir`` is missing or has no case folders, write that many synthetic cases
            there first (:func:`segzoo.data.synthetic.kits19.write_kits19`, size "small").
        synthetic_seed: seed of the synthetic cases.
        synthetic_regime: appearance regime of the synthetic cases (a name in
            :data:`segzoo.data.synthetic.kits19.REGIMES`, or ``"single_appearance"``: the earlier generator).
        score_on_original_grid: validation and test batches carry each case's stored label map and geometry, so the
            task scores predictions restored to the original grid (as ``segzoo infer`` writes them).
        seed: seed of the training patches and their augmentation, passed explicitly (``seed_everything`` seeds
            torch, not the data). Patches are a function of (seed, epoch, rank, position), so a resumed run draws
            the patches of the uninterrupted one.
    """

    in_channels = 1  # CT; segzoo.cli links it to the net's in_channels
    num_classes = 3  # background, kidney, tumour; linked to the net's out_channels

    def __init__(
        self,
        data_dir: str,
        cache_dir: str | None = None,
        target_spacing: Sequence[float] | None = (3.0, 0.78125, 0.78125),
        patch_size: Sequence[int] = (48, 192, 192),
        batch_size: int = 2,
        iterations_per_epoch: int = 250,
        num_val_cases: int | float = 0.2,
        num_test_cases: int | float = 0,
        split_seed: int = 0,
        num_folds: int = 0,
        fold: int = 0,
        splits_file: str | None = None,
        foreground_oversample: float = 0.33,
        augment: bool | AugmentConfig = True,
        image_order: int = 1,
        num_workers: int = 2,
        val_num_workers: int = 0,
        preprocess_num_workers: int = 0,
        synthetic_cases: int = 0,
        synthetic_seed: int = 0,
        synthetic_regime: str = "all",
        score_on_original_grid: bool = True,
        seed: int = 0,
    ) -> None:
        super(PatchDataModule, self).__init__()  # LightningDataModule.__init__: KiTS19 needs no listing or planning
        self.save_hyperparameters()
        self.plan = None
        self._init_common(data_dir, cache_dir, target_spacing, patch_size, augment, foreground_oversample)
        self.label_names = dict(KITS19_LABELS)

    def _list_cases(self) -> list[KiTS19Case]:
        return find_kits19_cases(self.data_dir)

    def _prepare_cases(self) -> list[KiTS19Case]:
        hp = self.hparams
        if hp.synthetic_cases > 0:
            has_cases = self.data_dir.is_dir() and any(
                p.is_dir() and p.name.startswith("case_") for p in self.data_dir.iterdir()
            )
            if not has_cases:
                from segzoo.data.synthetic.kits19 import write_kits19

                print(
                    f"segzoo: {self.data_dir} holds no KiTS19 case; writing {hp.synthetic_cases} synthetic cases "
                    f"(regime '{hp.synthetic_regime}', seed {hp.synthetic_seed}) there (--data.synthetic_cases 0 to "
                    "refuse instead)",
                    file=sys.stderr,
                )
                write_kits19(
                    self.data_dir, cases=hp.synthetic_cases, seed=hp.synthetic_seed, regime=hp.synthetic_regime
                )
        return find_kits19_cases(self.data_dir)

    def _build_preprocessor(self, fingerprint: dict[str, Any]) -> CTPreprocessor:
        if self._restored is not None:  # a checkpoint's preprocessing wins over a recomputed one
            return CTPreprocessor.from_dict(self._restored)
        return CTPreprocessor.from_fingerprint(fingerprint, self.target_spacing, self.hparams.image_order)

    def _preprocessor_from_dict(self, d: dict[str, Any]) -> CTPreprocessor:
        return CTPreprocessor.from_dict(d)

    def _no_labels_message(self) -> str:
        return f"{self.data_dir}: no case has segmentation.nii.gz; training needs labelled cases"


def _files_key(case) -> list:
    """Name, size and mtime of every file of a case (what ``verified.json`` remembers)."""
    out = []
    for p in getattr(case, "files", (case.image, case.label)):
        if p is not None:
            st = Path(p).stat()
            out.append([str(p), st.st_size, st.st_mtime_ns])
    return out


def _plan(source, hp) -> dict[str, Any]:
    """The plan of ``source`` for a :class:`PatchDataModule`'s arguments ``hp`` (headers only: cheap)."""
    from segzoo.data.planning import header_fingerprint, plan_dataset

    if not source.training:
        raise DataError(f"{source.root}: no labelled training case found")
    return plan_dataset(
        header_fingerprint(source.training),
        source.channel_names,
        memory_budget_gb=hp["memory_budget_gb"],
        batch_size=hp["batch_size"],
        base_features=hp["base_features"],
        max_features=hp["max_features"],
        max_levels=hp["max_levels"],
        max_patch_voxels=hp["max_patch_voxels"],
        spacing=hp["target_spacing"],
    )


def plan_for_config(init_args: dict[str, Any]) -> dict[str, Any]:
    """The plan a :class:`PatchDataModule` built with ``init_args`` (a config's ``data.init_args``) will use; the
    CLI reads the net's topology from it before the net is built (``plan_net``)."""
    import inspect

    from segzoo.data.sources import open_source

    defaults = {k: v.default for k, v in inspect.signature(PatchDataModule.__init__).parameters.items() if k != "self"}
    hp = {**defaults, **{k: v for k, v in dict(init_args).items() if k in defaults}}
    return _plan(open_source(hp["data_dir"]), hp)


def _region_encoding(source) -> tuple[list[list[int]] | None, list[int] | None]:
    """``(regions, regions_class_order)`` of a source with nnU-Net region labels (one sigmoid output per region, in
    dataset.json's order), else ``(None, None)``."""
    if not source.regions:
        return None, None
    if not source.regions_class_order or len(source.regions_class_order) != len(source.regions):
        raise DataError(
            f"{source.root}: {len(source.regions)} region labels need 'regions_class_order' with one value each "
            "(nnU-Net's convention)"
        )
    return [list(m) for m in source.regions.values()], list(source.regions_class_order)
