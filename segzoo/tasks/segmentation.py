"""``SegmentationTask``: the one LightningModule of segzoo.

It owns no data and builds nothing itself: the net (any ``nn.Module``), the loss (a callable taking the net's training
output and the label), the whole-case inferer (a MONAI ``Inferer``, e.g. sliding window with TTA; ``None`` = call the
net directly), the metric (a :class:`~segzoo.metrics.base.CaseMetric`), an optional post-processing callable, and the
optimizer/scheduler factories are injected, from YAML through LightningCLI or from Python.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_only
from monai.inferers import Inferer
from torch import nn

from segzoo.inference.labels import labels_on_original_grid
from segzoo.metrics.base import CaseMetric
from segzoo.metrics.dead import DeadClassCounter, confusion, label_regions
from segzoo.utils import atomic_write_text, destroy_process_group_at_exit

log = logging.getLogger(__name__)


def _subset_key(steps) -> str:
    """Name of a set of post-processing steps in the per-case score table."""
    return "+".join(steps) or "none"


def _mean_rows(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Mean of every key over rows (NaN ignored), ``case_id`` left out."""
    keys = [k for k in (rows[0] if rows else {}) if k != "case_id"]
    out = {}
    for k in keys:
        vals = [r[k] for r in rows if r.get(k) is not None and not math.isnan(r[k])]
        out[k] = float(np.mean(vals)) if vals else float("nan")
    return out


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
        postprocess: optional callable applied to each predicted label map ``(*spatial)`` before scoring. If it has
            switchable steps (``subsets()``, ``apply_subsets()``, ``decide()`` and ``with_steps()``, as
            :class:`~segzoo.inference.postprocess.KiTSPostprocess`), validation decides them (``tune_postprocess``).
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
        tune_postprocess: after every validation, keep each post-processing step only if it improves the mean
            validation score (nnU-Net's rule, ``score_key``); the decided object becomes ``self.postprocess`` (so a
            checkpoint stores it with its constructor arguments) and is what ``test`` and ``predict`` use.
        init_from: fine-tuning: a ``segzoo fit`` checkpoint, pretrained folder or ``hf-hub:ORG/NAME`` whose weights
            start the fit wherever name and shape match (the output heads stay freshly initialised when the number
            of classes differs); one summary line says what was loaded, re-initialised and unexpected
            (:mod:`segzoo.tasks.finetune`; read by the safe loader). A resumed fit (``--ckpt_path``) continues
            from its checkpoint instead.
        freeze_encoder_epochs: the optimizer leaves the net's encoder unchanged for this many epochs
            (:func:`~segzoo.tasks.finetune.encoder_parameters`).
        prediction_dir: validation and test write every scored case's label map before post-processing (on the grid it
            is scored on), its reference and spacing to ``prediction_dir/<case>.npz`` (atomically): ``segzoo cv``'s
            out-of-fold predictions, from which it scores the folds together and decides their post-processing.

    Scoring: when validation/test batches carry ``original_label`` and ``original_shape`` (``KiTS19DataModule``),
    each prediction is restored to the case's original grid with the datamodule's ``preprocessor`` and
    post-processed there (:func:`segzoo.checkpoint.labels_on_original_grid`, the path of ``segzoo infer``) and
    scored against the stored annotation; otherwise on the batch's grid. ``metrics.json`` holds the scores with
    post-processing (``mean``, ``cases``) and without (``without_postprocess``), and the decision
    (``postprocess``). The validation loss (the loss on the whole-case output, logged as ``val/loss``) is there for
    checkpoint selection on its moving average (:class:`~segzoo.tasks.callbacks.MovingAverage`).

    Dead classes: after each validation and test, a class or region of the metric (``metric.class_names()``,
    ``metric.regions()``) that no scored prediction held, or whose Dice was 0 in every case holding it, is named in
    one warning line (logger ``segzoo.tasks.segmentation``; :mod:`segzoo.metrics.dead`), in ``metrics.json``
    (``dead_classes``) and in ``self.dead_class_warning``. During a fit the line is logged when the set of dead
    classes changes, and once more when the fit ends with one.
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
        tune_postprocess: bool = True,
        init_from: str | None = None,
        freeze_encoder_epochs: int = 0,
        prediction_dir: str | None = None,
    ) -> None:
        super().__init__()
        if freeze_encoder_epochs < 0:
            raise ValueError(f"freeze_encoder_epochs must be >= 0, got {freeze_encoder_epochs}")
        self.init_from = init_from
        self.freeze_encoder_epochs = int(freeze_encoder_epochs)
        if self.freeze_encoder_epochs:
            from segzoo.tasks.finetune import encoder_parameters

            encoder_parameters(net)  # a net without a known encoder fails here, not after the data is prepared
        self.prediction_dir = prediction_dir
        self.net = net
        self.loss = loss
        self.inferer = inferer
        self.metric = metric
        self.postprocess = postprocess
        self.tune_postprocess = tune_postprocess
        self._postprocess_candidate = postprocess
        steps = tuple(getattr(postprocess, "steps", ()) or ())
        # the validated decision as a tensor, so every checkpoint format and `segzoo test --ckpt_path` restore it:
        # [decided?, step 1 on?, step 2 on?, ...] over the configured (candidate) steps
        self.register_buffer("postprocess_decision", torch.zeros(1 + len(steps), dtype=torch.uint8))
        self._case_scores: list[dict[str, Any]] = []
        self._eval_losses: list[float] = []
        self._scored_on_original = False
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_monitor = scheduler_monitor
        self.score_key = score_key
        self.metrics_file = metrics_file
        self.last_summary: dict[str, Any] | None = None
        self.dead_class_warning: str | None = None
        self._dead_names: list[str] | None = None  # at the last validation, to log only changes during a fit
        self.batch_augment = batch_augment
        self.compile = compile
        self.channels_last = channels_last
        self.num_overlays = num_overlays
        self.overlays: list[dict[str, Any]] = []
        self._train_forward = None

    def setup(self, stage: str) -> None:
        destroy_process_group_at_exit()  # under DDP (group initialised by now): ddp_spawn workers included
        if self.init_from and stage == "fit":  # a resumed fit loads its checkpoint after this, over these weights
            from segzoo.tasks.finetune import load_matching_weights, source_state_dict

            report = load_matching_weights(self.net, source_state_dict(self.init_from), self.init_from)
            if self._trainer is None or self.trainer.is_global_zero:
                print(f"segzoo: {report.summary()}", file=sys.stderr)
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
        # sync_dist: under DDP each rank's epoch mean covers its own batches only; a plateau scheduler or a stopping
        # rule watching train/loss_epoch (configs/kits19.yaml) must read the same value on every rank, or the ranks'
        # learning rates part ways. One scalar all-reduce per step; nothing on one device.
        self.log(
            "train/loss",
            loss,
            on_step=True,
            on_epoch=True,
            prog_bar=True,
            batch_size=batch["image"].shape[0],
            sync_dist=True,
        )
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.current_epoch < self.freeze_encoder_epochs:  # no gradient: the optimizer skips them (no decay either)
            from segzoo.tasks.finetune import encoder_parameters

            for p in encoder_parameters(self.net):
                p.grad = None

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
    def predict_scores(self, image: torch.Tensor) -> torch.Tensor:
        """Whole-case class scores ``(B, K, *spatial)``: what the inferer returns (the TTA inferer's default: mean
        probabilities; ``SliceInferer`` or no inferer: logits); argmax over ``K`` is the label map."""
        net = self._eval_net()
        if self.inferer is not None:
            return self.inferer(image, net)
        out = net(image)
        return out[0] if isinstance(out, list | tuple) else out

    def _eval_net(self) -> nn.Module:
        """The net, or for a region dataset (the datamodule's preprocessing holds ``regions``) the net wrapped to give
        class scores whose argmax is the label map (:class:`segzoo.nets.regions.RegionScores`)."""
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        pre = getattr(datamodule, "preprocessor", None)
        if getattr(pre, "regions", None):
            from segzoo.nets.regions import RegionScores

            return RegionScores(self.net, pre.regions_class_order, pre.num_labels)
        return self.net

    def predict_labels(self, image: torch.Tensor) -> torch.Tensor:
        """Whole-case label maps ``(B, *spatial)`` after optional post-processing."""
        pred = self.predict_scores(image).argmax(dim=1)
        if self.postprocess is not None:
            pred = torch.stack([torch.as_tensor(self.postprocess(p)) for p in pred.cpu()]).to(pred.device)
        return pred

    def _tunable(self) -> bool:
        post = self._postprocess_candidate
        return self.tune_postprocess and post is not None and hasattr(post, "apply_subsets") and bool(post.steps)

    def _eval_loss(self, out: torch.Tensor, label: torch.Tensor) -> float | None:
        """The training loss on the whole-case output (probabilities enter as their log, which softmax maps back)."""
        kind = getattr(self.inferer, "output", "logits") if self.inferer is not None else "logits"
        if kind == "labels" or out.shape[-label.ndim + 2 :] != label.shape[2:]:
            return None
        scores = torch.log(out.float().clamp_min(1e-8)) if kind == "probabilities" else out.float()
        try:
            return float(self.loss(scores, label.to(scores.device)))
        except (TypeError, ValueError, RuntimeError):  # a loss that needs the training output (a list): none
            return None

    def _eval_step(self, batch: dict[str, Any]) -> None:
        out = self.predict_scores(batch["image"])
        if "label" in batch:
            loss = self._eval_loss(out, batch["label"])
            if loss is not None:
                self._eval_losses.append(loss)
        on_original = "original_label" in batch and "original_shape" in batch
        self._scored_on_original = on_original
        preprocessor = getattr(self.trainer.datamodule, "preprocessor", None) if on_original else None
        ids = batch.get("case_id")
        tune = self._tunable() and not self.trainer.testing
        preds = []
        for i in range(out.shape[0]):
            if on_original:
                shape = tuple(int(v) for v in batch.get("oriented_shape", batch["original_shape"])[i])
                raw = labels_on_original_grid(out[i], shape, preprocessor, None)
                target = batch["original_label"][i].cpu().numpy()
                spacing = batch.get("original_spacing", batch.get("spacing"))
            else:
                raw = out[i].argmax(0).cpu().numpy()
                target = batch["label"][i, 0].cpu().numpy() if "label" in batch else None
                spacing = batch.get("spacing")
            sp = None if spacing is None else [float(v) for v in torch.as_tensor(spacing[i]).reshape(-1)]
            if tune:
                variants = {_subset_key(k): v for k, v in self._postprocess_candidate.apply_subsets(raw).items()}
                pred = variants[_subset_key(self.postprocess.steps)] if self.postprocess is not None else raw
            else:
                variants = {"none": raw}
                pred = np.asarray(self.postprocess(raw)) if self.postprocess is not None else raw
                if self.postprocess is not None:
                    variants["post"] = pred
            preds.append(pred)
            if self.prediction_dir is not None and target is not None:
                self._write_prediction(str(ids[i]) if ids is not None else str(i), raw, target, sp, on_original)
            if self.metric is not None and target is not None:
                case_id = str(ids[i]) if ids is not None else str(len(self._case_scores))
                scores = {k: self.metric.score_case(v, target, sp) for k, v in variants.items()}
                # voxel counts per (reference, predicted) class of each variant: the dead-class check's input
                counts = {k: confusion(v, target, out.shape[1]) for k, v in variants.items()}
                self._case_scores.append(
                    {"case_id": case_id, "scores": scores, "confusion": counts, "num_classes": int(out.shape[1])}
                )
        if len(self.overlays) < self.num_overlays and "label" in batch:
            if on_original:  # the picture is drawn on the preprocessed grid, where the image is
                grid = out.argmax(1).cpu()
                if self.postprocess is not None:
                    grid = torch.stack([torch.as_tensor(np.asarray(self.postprocess(g.numpy()))) for g in grid])
                self._keep_overlay(batch, grid)
            else:
                self._keep_overlay(batch, torch.as_tensor(np.stack(preds)))

    def _write_prediction(
        self, case_id: str, raw: np.ndarray, target: np.ndarray, spacing: list | None, on_original: bool
    ) -> None:
        from segzoo.utils import atomic_path

        with atomic_path(Path(self.prediction_dir) / f"{case_id}.npz", suffix=".tmp.npz") as tmp:
            np.savez_compressed(
                tmp,
                prediction=np.asarray(raw, dtype=np.uint8),
                reference=np.asarray(target).astype(np.uint8),
                spacing=np.asarray(spacing if spacing is not None else [], dtype=np.float64),
                on_original_grid=np.asarray(on_original),
            )

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch)

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        probs = self.predict_scores(batch["image"])
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
        self._case_scores, self._eval_losses = [], []
        if self.metric is not None:
            self.metric.reset()

    def on_test_epoch_start(self) -> None:
        self.on_validation_epoch_start()

    def _restore_decision(self) -> None:
        """Adopt the decision held in ``postprocess_decision`` (e.g. just loaded from a checkpoint)."""
        post = self._postprocess_candidate
        flags = self.postprocess_decision.tolist()
        if post is None or not hasattr(post, "with_steps") or not flags or not flags[0]:
            return
        kept = [step for step, on in zip(post.steps, flags[1:]) if on]
        if self.postprocess is None or tuple(getattr(self.postprocess, "steps", ())) != tuple(kept):
            self.postprocess = post.with_steps(kept)

    def on_validation_start(self) -> None:
        self._restore_decision()

    def on_test_start(self) -> None:
        self._restore_decision()

    def on_predict_start(self) -> None:
        self._restore_decision()

    def _gather_rows(self, rows: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        rows = self.metric.per_case() if rows is None else rows
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
        if self._eval_losses:
            losses = [self._eval_losses]
            if self.trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
                losses = [None] * self.trainer.world_size
                torch.distributed.all_gather_object(losses, self._eval_losses)
            flat = [v for part in losses for v in part]
            # gathered above, so every rank holds the same value; sync_dist (a mean of equal values) keeps it so
            self.log(f"{prefix}/loss", float(np.mean(flat)), sync_dist=True, batch_size=1)
        table = self._gather_rows(self._case_scores)
        if not table:
            return
        post_info = None
        if self._tunable() and prefix == "val":
            candidate = self._postprocess_candidate
            means = {
                s: self._score(_mean_rows([r["scores"][_subset_key(s)] for r in table])) for s in candidate.subsets()
            }
            if any(v is None for v in means.values()):
                raise KeyError("tune_postprocess needs a score: set score_key or use a metric with */dice keys")
            self.postprocess = candidate.decide(means, num_cases=len(table), metric=self.score_key or "mean dice")
            self.postprocess_decision.copy_(
                torch.tensor([1, *[s in self.postprocess.steps for s in candidate.steps]], dtype=torch.uint8)
            )
        if self.postprocess is None:
            key = "none"
        elif self._tunable() and prefix == "val":
            key = _subset_key(self.postprocess.steps)
        else:
            key = "post" if "post" in table[0]["scores"] else _subset_key(self.postprocess.steps)
        if self.postprocess is not None:
            post_info = {
                "class_path": f"{type(self.postprocess).__module__}.{type(self.postprocess).__qualname__}",
                "steps": list(getattr(self.postprocess, "steps", []) or []),
                "validation": getattr(self.postprocess, "validation", None),
            }
        self.metric.rows = [{"case_id": r["case_id"], **r["scores"][key]} for r in table]
        summary = self.metric.summary()
        means = summary["mean"]
        score = self._score(means)
        if score is not None:
            means = {**means, "score": score}
            summary["mean"] = means
        logged = {f"{prefix}/{k}": v for k, v in means.items()}
        if post_info is not None:
            raw_rows = [{"case_id": r["case_id"], **r["scores"]["none"]} for r in table]
            raw_mean = _mean_rows(raw_rows)
            raw_score = self._score(raw_mean)
            if raw_score is not None:
                raw_mean["score"] = raw_score
            summary["without_postprocess"] = {"mean": raw_mean, "cases": raw_rows}
            summary["postprocess"] = post_info
            logged.update({f"{prefix}/no_postprocess/{k}": v for k, v in raw_mean.items()})
        summary["scored_on"] = "original grid" if self._scored_on_original else "preprocessed grid"
        summary["dead_classes"] = self._check_dead_classes(table, key, prefix)
        self.log_dict(logged, sync_dist=True, batch_size=1)  # from the gathered table: equal on every rank
        self.last_summary = summary
        if write_file and self.metrics_file:
            self._write_summary(summary)

    def _check_dead_classes(self, table: list[dict[str, Any]], key: str, prefix: str) -> list[str]:
        """Name the dead classes of the scored predictions (``key``) in one warning line; return their phrases."""
        rows = [r for r in table if key in r.get("confusion", {})]
        if not rows:
            self.dead_class_warning = None
            return []
        num_classes = max(r["num_classes"] for r in rows)
        names = getattr(self.metric, "class_names", lambda: ())()
        regions = getattr(self.metric, "regions", lambda: {})()
        counter = DeadClassCounter(label_regions(num_classes, names, regions))
        for r in rows:
            counter.add_confusion(r["confusion"][key])
        dead = counter.dead_names()
        self.dead_class_warning = counter.warning("validation" if prefix == "val" else prefix)
        # during a fit only a change is news (an untrained net starts with every class dead); the fit's end restates it
        news = self.trainer.state.fn != "fit" or dead != self._dead_names
        self._dead_names = dead
        if self.dead_class_warning and news and self.trainer.is_global_zero:
            log.warning(self.dead_class_warning)
        return counter.dead()

    def on_fit_end(self) -> None:
        if self.dead_class_warning and self.trainer.is_global_zero:
            log.warning("segzoo fit ended with " + self.dead_class_warning.removeprefix("segzoo: "))

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
