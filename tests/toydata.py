"""A tiny in-memory 3D segmentation datamodule for CLI and task tests (importable as ``toydata``)."""

import json
import os
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from segzoo.data.datamodule import KiTS19DataModule


class _Blobs(Dataset):
    def __init__(self, n: int, shape: tuple[int, ...], seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.items = []
        for i in range(n):
            label = torch.zeros((1, *shape), dtype=torch.long)
            c = [int(torch.randint(s // 4, 3 * s // 4, (1,), generator=g)) for s in shape]
            sl = tuple(slice(max(0, ci - s // 4), ci + s // 4) for ci, s in zip(c, shape))
            label[(0, *sl)] = 1
            inner = tuple(slice(max(0, ci - s // 8), ci + s // 8) for ci, s in zip(c, shape))
            label[(0, *inner)] = 2
            image = label.float() + 0.3 * torch.randn((1, *shape), generator=g)
            self.items.append(
                {"image": image, "label": label, "case_id": f"toy_{seed}_{i}", "spacing": torch.ones(len(shape))}
            )

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


class EpochShuffleSampler(Sampler[int]):
    """A shuffle that depends only on ``(seed, epoch)``, so a resumed run sees the batches an uninterrupted one does.

    A plain ``shuffle=True`` DataLoader draws each epoch's order from the global torch RNG, whose state a checkpoint
    does not hold; Lightning calls ``set_epoch`` on the sampler before every epoch (as for ``DistributedSampler``).
    """

    def __init__(self, n: int, seed: int = 0) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


class ToyDataModule(pl.LightningDataModule):
    """Random blobs: label 1 a box, label 2 a box inside it; the image is the label plus noise."""

    def __init__(
        self, shape: tuple[int, ...] = (16, 32, 32), train_cases: int = 4, val_cases: int = 2, batch_size: int = 2
    ) -> None:
        super().__init__()
        self.shape, self.train_cases, self.val_cases, self.batch_size = tuple(shape), train_cases, val_cases, batch_size
        self.fingerprint = {"toy": True}

    def setup(self, stage: str) -> None:
        self.train = _Blobs(self.train_cases, self.shape, 0)
        self.val = _Blobs(self.val_cases, self.shape, 1)

    def train_dataloader(self):
        return DataLoader(self.train, batch_size=self.batch_size, sampler=EpochShuffleSampler(len(self.train)))

    def val_dataloader(self):
        return DataLoader(self.val, batch_size=1)

    test_dataloader = val_dataloader
    predict_dataloader = val_dataloader


class CountingKiTS19DataModule(KiTS19DataModule):
    """KiTS19DataModule that appends ``<pid> <global rank>`` to ``<cache_dir>/prepare_data.log`` per ``prepare_data``.

    Lets a multi-process test check that the fingerprint and preprocessing cache are built by one process only.
    At the first training batch it also writes ``<cache_dir>/train_sampler_rank<R>.json``: the class of the sampler
    Lightning actually iterates on that rank and its indices, to check ranks draw disjoint patches.
    """

    def on_after_batch_transfer(self, batch, dataloader_idx):
        trainer = self.trainer
        if trainer is not None and trainer.training and not getattr(self, "_sampler_logged", False):
            sampler = trainer.train_dataloader.sampler
            record = {"sampler": type(sampler).__name__, "epoch": trainer.current_epoch, "indices": list(sampler)}
            (Path(self.cache_dir) / f"train_sampler_rank{trainer.global_rank}.json").write_text(json.dumps(record))
            self._sampler_logged = True
        return batch

    def prepare_data(self) -> None:
        super().prepare_data()
        with open(Path(self.cache_dir) / "prepare_data.log", "a") as f:
            f.write(f"{os.getpid()} {self.trainer.global_rank if self.trainer else 0}\n")


class RankMetrics(pl.Callback):
    """Writes each rank's ``trainer.callback_metrics`` (what monitors and schedulers read on that rank) to
    ``<default_root_dir>/<fn>_metrics_rank<R>.json`` at the end of ``fit`` and of ``validate``."""

    def _dump(self, trainer: pl.Trainer, fn: str) -> None:
        values = {k: float(v) for k, v in trainer.callback_metrics.items()}
        path = Path(trainer.default_root_dir) / f"{fn}_metrics_rank{trainer.global_rank}.json"
        path.write_text(json.dumps(values, sort_keys=True))

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._dump(trainer, "fit")

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "validate":
            self._dump(trainer, "validate")
