"""``SegmentationTask``: the one LightningModule of segzoo.

It owns no data and builds nothing itself: the net (any ``nn.Module``), the loss (a callable taking the net's training
output and the label), the whole-case inferer (a MONAI ``Inferer``, e.g. sliding window with TTA; ``None`` = call the
net directly), the metric (a :class:`~segzoo.metrics.base.CaseMetric`), an optional post-processing callable, and the
optimizer/scheduler factories are injected, from YAML through LightningCLI or from Python.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_only
from monai.inferers import Inferer
from torch import nn

from segzoo.metrics.base import CaseMetric
from segzoo.utils import atomic_write_text


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the message names the step and the batch's cases."""


_CHANNELS_LAST = {4: torch.channels_last, 5: torch.channels_last_3d}


def to_channels_last(module: nn.Module) -> nn.Module:
    """Put every 4D / 5D parameter of ``module`` (convolution weights) in channels-last memory format, in place.

    ``nn.Module.to(memory_format=...)`` takes one format for all parameters, which fails on a net holding both 4D
    and 5D weights; here each gets its own (``channels_last`` / ``channels_last_3d``).
    """
    for param in module.parameters():
        fmt = _CHANNELS_LAST.get(param.ndim)
        if fmt is not None and not param.is_contiguous(memory_format=fmt):
            param.data = param.data.contiguous(memory_format=fmt)
    return module


def _adam(params) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=3e-4)


class SegmentationTask(pl.LightningModule):
    """Train, validate, test and predict any segzoo net.

    Args:
        net: the segmentation net; in training it may return a list of logits (deep supervision).
        loss: callable ``loss(net_output, label)`` with ``label`` of shape ``(B, 1, *spatial)``.
        inferer: whole-case inferer for validation/test/predict (``inferer(image, net)`` returning logits or
            probabilities ``(B, K, *spatial)``); ``None`` runs the net on the whole input.
        metric: per-case metric accumulated over validation/test; its mean values are logged as ``val/<key>``.
        postprocess: optional callable applied to each predicted label map ``(*spatial)`` before scoring.
        optimizer: optimizer factory (default Adam, lr 3e-4 as in the KiTS19 paper).
        scheduler: LR scheduler factory; ``ReduceLROnPlateau`` watches ``scheduler_monitor``.
        scheduler_monitor: logged value a plateau scheduler watches (the paper: the training loss).
        score_key: metric key logged again as ``val/score`` (checkpoint selection); ``None`` = mean of all
            ``*/dice`` keys.
        metrics_file: file name under ``trainer.default_root_dir`` for per-case and mean results of
            ``validate``/``test`` (like nnU-Net's ``summary.json``); ``None`` disables it.
        batch_augment: optional module applied to the whole training batch after it reached the device
            (``batch_augment(batch) -> batch``, at the start of ``training_step``), e.g. GPU augmentation so CPU
            workers only crop.
        compile: wrap the net's training forward in ``torch.compile``.
        channels_last: keep the net's convolution weights and the training batches in channels-last memory format
            (``channels_last_3d`` for 3D nets), which tensor-core convolution kernels prefer; the numbers are the
            same (see ``docs/benchmarks.md`` for the measured effect).
        num_overlays: validation cases per epoch kept as 2D slices (image, label, prediction) in
            ``self.overlays`` for loggers to draw.
    """

    def __init__(
        self,
        net: nn.Module,
        loss: nn.Module,
        inferer: Inferer | None = None,
        metric: CaseMetric | None = None,
        postprocess: Callable | None = None,
        optimizer: OptimizerCallable = _adam,
        scheduler: LRSchedulerCallable | None = None,
        scheduler_monitor: str = "train/loss_epoch",
        score_key: str | None = None,
        metrics_file: str | None = "metrics.json",
        batch_augment: nn.Module | None = None,
        compile: bool = False,
        channels_last: bool = False,
        num_overlays: int = 2,
    ) -> None:
        super().__init__()
        self.net = net
        self.loss = loss
        self.inferer = inferer
        self.metric = metric
        self.postprocess = postprocess
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_monitor = scheduler_monitor
        self.score_key = score_key
        self.metrics_file = metrics_file
        self.last_summary: dict[str, Any] | None = None
        self.batch_augment = batch_augment
        self.compile = compile
        self.channels_last = channels_last
        self.num_overlays = num_overlays
        self.overlays: list[dict[str, Any]] = []
        self._train_forward = None

    def setup(self, stage: str) -> None:
        if self.channels_last:
            to_channels_last(self.net)
        if self.compile and self._train_forward is None:
            # kept out of the module tree so the state dict has no duplicate "_orig_mod" keys
            self.__dict__["_train_forward"] = torch.compile(self.net)

    # ---------------------------------------------------------------- training
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        if self.batch_augment is not None:  # the batch is already on the device here
            batch = self.batch_augment(batch)
        image = batch["image"]
        if self.channels_last:
            image = image.contiguous(memory_format=_CHANNELS_LAST[image.ndim])
        out = (self._train_forward or self.net)(image)
        loss = self.loss(out, batch["label"])
        if not torch.isfinite(loss):
            cases = batch.get("case_id", "?")
            raise NonFiniteLossError(
                f"non-finite training loss ({loss.item()}) at global step {self.global_step}, epoch "
                f"{self.current_epoch}, batch {batch_idx}; cases in the batch: {cases}"
            )
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=batch["image"].shape[0])
        return loss

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "monitor": self.scheduler_monitor, "interval": "epoch"},
        }

    # -------------------------------------------------------------- evaluation
    def predict_logits(self, image: torch.Tensor) -> torch.Tensor:
        """Whole-case output ``(B, K, *spatial)`` (logits or probabilities; argmax is what counts)."""
        if self.inferer is not None:
            return self.inferer(image, self.net)
        out = self.net(image)
        return out[0] if isinstance(out, list | tuple) else out

    def predict_labels(self, image: torch.Tensor) -> torch.Tensor:
        """Whole-case label maps ``(B, *spatial)`` after optional post-processing."""
        pred = self.predict_logits(image).argmax(dim=1)
        if self.postprocess is not None:
            pred = torch.stack([torch.as_tensor(self.postprocess(p)) for p in pred.cpu()]).to(pred.device)
        return pred

    def _eval_step(self, batch: dict[str, Any]) -> None:
        pred = self.predict_labels(batch["image"])
        if len(self.overlays) < self.num_overlays:
            self._keep_overlay(batch, pred)
        if self.metric is not None:
            self.metric.update(pred, batch["label"][:, 0], batch.get("case_id"), batch.get("spacing"))

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch)

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        probs = self.predict_logits(batch["image"])
        return {"case_id": batch.get("case_id"), "output": probs}

    def _keep_overlay(self, batch: dict[str, Any], pred: torch.Tensor) -> None:
        """Keep the axial slice through the label's highest class (the lesion) of the batch's first case."""
        image, label, p = batch["image"][0, 0], batch["label"][0, 0], pred[0]
        if image.ndim == 3:
            top = label == label.max()
            z = int(top.nonzero()[:, 0].float().mean().round()) if top.any() else image.shape[0] // 2
            image, label, p = image[z], label[z], p[z]
        ids = batch.get("case_id")
        self.overlays.append(
            {
                "case_id": str(ids[0]) if ids is not None else str(len(self.overlays)),
                "image": image.float().cpu().numpy(),
                "label": label.cpu().numpy(),
                "pred": p.cpu().numpy(),
            }
        )

    def on_validation_epoch_start(self) -> None:
        self.overlays = []
        if self.metric is not None:
            self.metric.reset()

    on_test_epoch_start = on_validation_epoch_start

    def _gather_rows(self) -> list[dict[str, Any]]:
        rows = self.metric.per_case()
        if self.trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list[Any] = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(gathered, rows)
            seen, rows = set(), []
            for part in gathered:
                for r in part:  # a DistributedSampler may repeat cases to even out ranks
                    if r["case_id"] not in seen:
                        seen.add(r["case_id"])
                        rows.append(r)
        return rows

    def _finish_eval(self, prefix: str, write_file: bool) -> None:
        if self.metric is None or self.trainer.sanity_checking:
            return
        self.metric.rows = self._gather_rows()
        summary = self.metric.summary()
        means = summary["mean"]
        score = self._score(means)
        if score is not None:
            means = {**means, "score": score}
            summary["mean"] = means
        self.log_dict({f"{prefix}/{k}": v for k, v in means.items()}, sync_dist=False, batch_size=1)
        self.last_summary = summary
        if write_file and self.metrics_file:
            self._write_summary(summary)

    def _score(self, means: dict[str, float]) -> float | None:
        if self.score_key is not None:
            if self.score_key not in means:
                raise KeyError(f"score_key '{self.score_key}' is not a metric key; available: {sorted(means)}")
            return means[self.score_key]
        dice = [v for k, v in means.items() if k.endswith("/dice") and not math.isnan(v)]
        return float(sum(dice) / len(dice)) if dice else None

    @rank_zero_only
    def _write_summary(self, summary: dict[str, Any]) -> None:
        path = Path(self.trainer.default_root_dir) / self.metrics_file
        atomic_write_text(path, json.dumps(summary, indent=2, default=float))

    def on_validation_epoch_end(self) -> None:
        # during fit the file is refreshed every validation epoch; `segzoo validate` writes it once
        self._finish_eval("val", write_file=True)

    def on_test_epoch_end(self) -> None:
        self._finish_eval("test", write_file=True)

    # -------------------------------------------------------------- checkpoint
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store what ``segzoo infer`` needs beside the weights, as plain JSON data under ``segzoo_format``.

        The net's constructor config, the inferer's (its window size), the post-processing's and the datamodule's
        preprocessing (``trainer.datamodule.preprocessor``, when it has one): see :mod:`segzoo.checkpoint`. Nothing
        that needs unpickling goes into the checkpoint, so ``torch.load(weights_only=True)`` reads it.
        """
        from segzoo.checkpoint import FORMAT_KEY, checkpoint_format

        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        checkpoint[FORMAT_KEY] = checkpoint_format(
            self.net, self.inferer, self.postprocess, getattr(datamodule, "preprocessor", None)
        )
