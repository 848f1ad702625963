"""Ensembles in ``segzoo infer``: average the class probabilities of several checkpoints (cross-validation folds).

``segzoo infer --ckpt RUN`` (a ``segzoo cv`` run folder: every fold's checkpoint, ``--folds 0 2`` picks some) or
``--ckpt A --ckpt B ...``: each member predicts the case with its own test-time augmentation; the mean of the members'
softmax probabilities (what the sliding-window TTA inferer returns; a logit output is softmaxed first) is restored to
the original grid and post-processed once, as nnU-Net ensembles its folds.

Members must agree on what the probabilities mean and where they lie: input channels, labels (output channels) and
preprocessing (the same target grid and intensities); otherwise one line names the first member that differs and how.
Their post-processing must agree too (a cross-validation run's own decision, taken on its out-of-fold predictions, is
given to all its folds), or ``--no-postprocess``.

Memory: the case is preprocessed once; the members run one after the other, and the first member's output becomes the
accumulator, so besides one member's inference only one ``(K, *spatial)`` float32 map is held. The members' nets stay
on the CPU and move to the device for their pass (device memory: one net).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from segzoo.checkpoint import LoadedModel
from segzoo.data.io import DataError
from segzoo.inference.labels import labels_on_original_grid
from segzoo.inference.predict import Predictor, load_predictor

CV_METRICS = "cv_metrics.json"  # written by `segzoo cv` in its run folder
FOLD_DIR = "fold_{}"


# ----------------------------------------------------------------------------------------------------- members
def cv_folds(run: str | os.PathLike) -> dict[int, Path] | None:
    """``{fold: checkpoint}`` of a ``segzoo cv`` run folder, or ``None`` when ``run`` is not one.

    The checkpoint of each fold is the one its ``cv_metrics.json`` scored; without that file (folds still training),
    every ``fold_k/checkpoints/last.ckpt`` there is.
    """
    run = Path(run)
    if not run.is_dir() or (run / "config.json").is_file():  # a pretrained folder
        return None
    record = run / CV_METRICS
    if record.is_file():
        data = _read_record(record)
        return {int(k): run / v["checkpoint"] for k, v in sorted(data["folds"].items(), key=lambda kv: int(kv[0]))}
    found = {}
    for folder in sorted(run.glob(FOLD_DIR.format("*"))):
        suffix = folder.name.split("_", 1)[1]
        if suffix.isdigit() and (folder / "checkpoints" / "last.ckpt").is_file():
            found[int(suffix)] = folder / "checkpoints" / "last.ckpt"
    return dict(sorted(found.items())) or None


def _read_record(path: Path) -> dict[str, Any]:
    from segzoo.data.io import read_json

    data = read_json(path, "cross-validation record")
    folds = data.get("folds") if isinstance(data, dict) else None
    if not isinstance(folds, dict) or not all(
        isinstance(v, dict) and isinstance(v.get("checkpoint"), str) and str(k).isdigit() for k, v in folds.items()
    ):
        raise DataError(f'{path}: not a segzoo cv record (expected "folds": {{"0": {{"checkpoint": ...}}, ...}})')
    return data


def load_members(
    ckpts: Sequence[str | os.PathLike], folds: Sequence[int] | None = None, trust: bool = False
) -> list[LoadedModel]:
    """The checkpoints of ``segzoo infer --ckpt ...`` through the safe loader, checked to agree (:func:`check_members`).

    Args:
        ckpts: checkpoint files, pretrained folders or ``segzoo cv`` run folders (each expands to its folds).
        folds: keep only these folds of the cv run folders.
        trust: unpickle checkpoints that weights-only loading refuses (see :func:`segzoo.checkpoint.load_checkpoint`).

    Raises:
        DataError: one line: a missing fold, a checkpoint that cannot be read, or members that disagree.
    """
    paths: list[tuple[Path, dict[str, Any] | None]] = []  # (checkpoint, {"postprocess": the cv decision} or None)
    any_run = False
    for ckpt in ckpts:
        run_folds = cv_folds(ckpt)
        if run_folds is None:
            paths.append((Path(ckpt), None))
            continue
        any_run = True
        record = Path(ckpt) / CV_METRICS
        decided = {"postprocess": _read_record(record).get("postprocess")} if record.is_file() else None
        chosen = sorted(run_folds) if folds is None else list(folds)
        missing = [k for k in chosen if k not in run_folds]
        if missing:
            raise DataError(f"{ckpt}: a cv run folder without fold(s) {missing}; it holds folds {sorted(run_folds)}")
        paths += [(run_folds[k], decided) for k in chosen]
    if folds is not None and not any_run:
        raise DataError(f"--folds picks folds of a segzoo cv run folder; {', '.join(map(str, ckpts))} is none")
    from segzoo import checkpoint  # looked up at call time (the one read of each file)

    members = []
    for path, decided in paths:
        loaded = checkpoint.load_checkpoint(path, trust=trust)
        if decided is not None:  # the decision taken on the out-of-fold predictions of all folds
            loaded.format = {**loaded.format, **decided}
        members.append(loaded)
    check_members(members)
    return members


def _describe(loaded: LoadedModel) -> dict[str, Any]:
    init = (getattr(loaded.net, "init_config", None) or {}).get("init_args", {})
    return {
        "channels": init.get("in_channels"),
        "labels": init.get("out_channels"),
        "preprocessing": loaded.format.get("preprocessor"),
    }


def _difference(a: Any, b: Any) -> str:
    """``a`` vs ``b`` in a few words (for preprocessing dicts: the first keys that differ)."""
    if isinstance(a, dict) and isinstance(b, dict):
        keys = [k for k in dict.fromkeys([*a, *b]) if a.get(k) != b.get(k)]
        return ", ".join(f"{k} {_short(a.get(k))} vs {_short(b.get(k))}" for k in keys[:3])
    return f"{_short(a)} vs {_short(b)}"


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 60 else text[:57] + "..."


def check_members(members: Sequence[LoadedModel]) -> None:
    """Raise one :class:`DataError` line when the members disagree on channels, labels or preprocessing."""
    if not members:
        raise DataError("an ensemble needs at least one checkpoint")
    first = _describe(members[0])
    for other in members[1:]:
        mine = _describe(other)
        differ = [k for k in first if first[k] != mine[k]]
        if differ:
            how = "; ".join(f"{k}: {_difference(first[k], mine[k])}" for k in differ)
            raise DataError(
                f"{other.source}: ensemble members must agree on channels, labels and preprocessing; it differs from "
                f"{members[0].source} in {how}"
            )


# --------------------------------------------------------------------------------------------------- predictors
@contextmanager
def _on(net: nn.Module, device: torch.device):
    """``net`` on ``device`` for the block, back on the CPU after it (an exported backend net stays where it is)."""
    movable = isinstance(net, nn.Module) and device.type != "cpu"
    if movable:
        net.to(device)
    try:
        yield net
    finally:
        if movable:
            net.to("cpu")


def _probabilities(out: torch.Tensor, inferer: Any) -> torch.Tensor:
    """The inferer's output as probabilities over axis 1 (the sliding-window TTA inferer already averages them)."""
    if isinstance(out, list | tuple):  # deep supervision in eval: full resolution first
        out = out[0]
    if getattr(inferer, "output", "logits") == "probabilities":
        return out.float()
    return torch.softmax(out.float(), dim=1)


def _accumulate(total: torch.Tensor | None, probs: torch.Tensor) -> torch.Tensor:
    if total is None:
        return probs  # the first member's output is the accumulator: no second copy
    total += probs.to(total.device)
    return total


@dataclass
class EnsemblePredictor(Predictor):
    """A :class:`~segzoo.inference.predict.Predictor` whose class scores are the members' mean probabilities.

    Everything but :meth:`predict_array` (reorientation, NIfTI and DICOM inputs, writing) is the single predictor's.
    ``net`` / ``inferer`` / ``preprocessor`` / ``postprocess`` are the first member's (shared by all: checked).
    """

    members: list[Predictor] = field(default_factory=list)

    def predict_array(self, image: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
        image = np.asarray(image)
        xt = self.prepare(image, spacing)  # once: the members share the preprocessing
        total = None
        with torch.inference_mode():
            for member in self.members:
                with _on(member.net, self.device) as net:
                    total = _accumulate(total, _probabilities(member.inferer(xt, net), member.inferer)[0])
            total /= len(self.members)  # in place, inside inference mode (the output is an inference tensor)
        return labels_on_original_grid(total, image.shape[-3:], self.preprocessor, self.postprocess)


def _check_postprocess(members: Sequence[LoadedModel]) -> None:
    first = members[0].format.get("postprocess")
    for other in members[1:]:
        if other.format.get("postprocess") != first:
            raise DataError(
                f"{other.source}: ensemble members must agree on their post-processing; it differs from "
                f"{members[0].source} ({_difference(first, other.format.get('postprocess'))}): pass --no-postprocess, "
                "or --ckpt a segzoo cv run folder (its cv_metrics.json decides the post-processing of all folds)"
            )


def load_ensemble_predictor(members: Sequence[LoadedModel], **kwargs: Any) -> Predictor:
    """:func:`~segzoo.inference.predict.load_predictor` for one member; for several an :class:`EnsemblePredictor`
    with the same settings (``kwargs``), the members' nets on the CPU until their pass."""
    if len(members) == 1:
        return load_predictor(members[0], **kwargs)
    if kwargs.get("postprocess", True):
        _check_postprocess(members)
    predictors = [load_predictor(m, **kwargs) for m in members]
    for p in predictors:
        if isinstance(p.net, nn.Module):
            p.net.to("cpu")
    first = predictors[0]
    return EnsemblePredictor(
        net=first.net,
        inferer=first.inferer,
        preprocessor=first.preprocessor,
        postprocess=first.postprocess,
        device=first.device,
        members=predictors,
    )
