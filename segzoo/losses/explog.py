"""Exponential logarithmic loss and a label-map cross-entropy.

Reference: K. C. L. Wong, M. Moradi, H. Tang, T. Syeda-Mahmood, "3D Segmentation with Exponential Logarithmic
Loss for Highly Unbalanced Object Sizes", MICCAI 2018 (arXiv:1809.00076). Used by Zhao et al., "Multi Scale
Supervised 3D U-Net for Kidney and Tumor Segmentation" (KiTS19).

For soft Dice + cross-entropy use ``monai.losses.DiceCELoss(to_onehot_y=True, softmax=True)`` directly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segzoo.losses._target import class_index_target

# (-ln x)^gamma has an infinite derivative at x = 1 (Dice or probability exactly 1): clamp -ln x from below so the
# gradient there is zero instead of inf * 0 = NaN.
_MIN_NEG_LOG = 1e-6
# Dice and probabilities are clamped to this before the logarithm so ln never sees 0.
_MIN_LOG_ARG = 1e-12


def _class_weight_buffer(class_weights: Sequence[float] | None, name: str) -> torch.Tensor | None:
    if class_weights is None:
        return None
    weights = torch.as_tensor([float(w) for w in class_weights], dtype=torch.float32)
    if (
        weights.ndim != 1
        or weights.numel() == 0
        or bool((weights < 0).any())
        or not bool(torch.isfinite(weights).all())
    ):
        raise ValueError(f"{name} must be a non-empty sequence of finite, non-negative floats, got {class_weights!r}")
    return weights


def _check_weights_match(weights: torch.Tensor | None, classes: int, name: str) -> None:
    if weights is not None and weights.numel() != classes:
        raise ValueError(f"{name} has {weights.numel()} entries but the logits have {classes} classes")


class ExpLogLoss(nn.Module):
    """Exponential logarithmic loss (Wong et al. 2018).

    ``L = w_dice * mean_c[(-ln Dice_c)^gamma_dice] + w_ce * mean_x[w_{c(x)} * (-ln p_{c(x)}(x))^gamma_ce]``

    with softmax probabilities ``p`` and the soft Dice ``Dice_c = (2 * sum(p_c * g_c) + smooth) /
    (sum(p_c) + sum(g_c) + smooth)``. The CE-like term is a plain mean over all voxels of the batch (the paper's
    ``E_x``), i.e. the class weights scale each voxel's term and are not renormalised.

    Choices where the paper is silent (see ``docs/losses_metrics.md``):

    * ``dice_reduction="batch"`` (default): one Dice per class with sums over the batch and all voxels, so a class
      absent from one patch does not produce a near-zero Dice for that sample; ``"sample"``: one Dice per sample
      and class, averaged over samples (then classes).
    * ``include_background`` only affects the Dice term; the cross-entropy term always covers every class.
    * ``-ln Dice`` and ``-ln p`` are clamped to at least 1e-6 before the power, so gradients stay finite when a
      class is absent or predicted perfectly (``(-ln x)^0.3`` has an infinite slope at ``x = 1``).

    Args:
        w_dice: weight of the Dice term (paper: 0.8).
        w_ce: weight of the cross-entropy term (paper: 0.2).
        gamma_dice: exponent of the Dice term (paper: 0.3).
        gamma_ce: exponent of the cross-entropy term (paper: 0.3).
        class_weights: per-class weights ``w_c`` of the cross-entropy term, one per logit channel (e.g.
            background, kidney, tumour); ``None`` means all 1. The paper uses ``((sum_k f_k) / f_c)^0.5`` with
            class frequencies ``f``; here they are set by hand.
        include_background: whether channel 0 takes part in the Dice term.
        smooth: additive smoothing ``epsilon`` of the soft Dice (paper: 1).
        dice_reduction: ``"batch"`` or ``"sample"`` (see above).
        log_dice_classes: logit channels whose Dice term is ``(-ln Dice_c)^gamma_dice``; the other classes take the
            linear ``1 - Dice_c`` (the Dice loss of ``monai.losses.DiceLoss``). ``None`` (default): every class, the
            paper's loss. A class whose Dice has collapsed keeps a gradient ``1 / Dice_c`` times the linear one under
            the logarithm, so naming only a small class (e.g. ``[2]``, the tumour) keeps pulling it back while the
            other classes keep the linear term; that larger pull still competes with them for the same steps (on the
            KiTS19 demo it cost the kidney, docs/experiments.md). Our option, not the paper's
            (docs/losses_metrics.md).

    Shapes:
        logits ``(B, K, *spatial)``; target ``(B, 1, *spatial)`` or ``(B, *spatial)`` class indices ``0..K-1``.
        Returns a scalar.
    """

    checks_target = True  # raises on labels outside 0..K-1 (DeepSupervisionLoss then checks once per call)

    def __init__(
        self,
        w_dice: float = 0.8,
        w_ce: float = 0.2,
        gamma_dice: float = 0.3,
        gamma_ce: float = 0.3,
        class_weights: Sequence[float] | None = None,
        include_background: bool = True,
        smooth: float = 1.0,
        dice_reduction: str = "batch",
        log_dice_classes: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if dice_reduction not in ("batch", "sample"):
            raise ValueError(f"dice_reduction must be 'batch' or 'sample', got {dice_reduction!r}")
        if gamma_dice <= 0 or gamma_ce <= 0:
            raise ValueError(f"gamma_dice and gamma_ce must be > 0, got {gamma_dice} and {gamma_ce}")
        if smooth < 0:
            raise ValueError(f"smooth must be >= 0, got {smooth}")
        self.w_dice = float(w_dice)
        self.w_ce = float(w_ce)
        self.gamma_dice = float(gamma_dice)
        self.gamma_ce = float(gamma_ce)
        self.include_background = bool(include_background)
        self.smooth = float(smooth)
        self.dice_reduction = dice_reduction
        if log_dice_classes is not None:
            indices = list(log_dice_classes)
            if any(isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in indices) or len(set(indices)) != len(
                indices
            ):
                raise ValueError(f"log_dice_classes must be distinct channel indices >= 0, got {log_dice_classes!r}")
            log_dice_classes = sorted(indices)
        self.log_dice_classes = log_dice_classes
        self.register_buffer("class_weights", _class_weight_buffer(class_weights, "class_weights"), persistent=False)

    def soft_dice(self, probs: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
        """Soft Dice per class: ``(K,)`` for ``"batch"`` reduction, ``(B, K)`` for ``"sample"``."""
        dims = tuple(range(2, probs.ndim))
        if self.dice_reduction == "batch":
            dims = (0, *dims)
        intersection = (probs * onehot).sum(dims)
        denominator = probs.sum(dims) + onehot.sum(dims)
        return (2.0 * intersection + self.smooth) / (denominator + self.smooth)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Compute the loss.

        Args:
            logits: ``(B, K, *spatial)`` unnormalised scores.
            target: ``(B, 1, *spatial)`` or ``(B, *spatial)`` class indices.

        Returns:
            Scalar loss.
        """
        labels = class_index_target(logits, target)
        classes = logits.shape[1]
        _check_weights_match(self.class_weights, classes, "class_weights")
        logits = logits.float()
        log_probs = F.log_softmax(logits, dim=1)
        loss = logits.new_zeros(())
        if self.w_dice != 0:
            onehot = F.one_hot(labels, classes).movedim(-1, 1).to(log_probs.dtype)
            dice = self.soft_dice(log_probs.exp(), onehot)
            terms = -torch.log(dice.clamp(min=_MIN_LOG_ARG))
            terms = terms.clamp(min=_MIN_NEG_LOG).pow(self.gamma_dice)
            if self.log_dice_classes is not None:
                if self.log_dice_classes and self.log_dice_classes[-1] >= classes:
                    raise ValueError(
                        f"log_dice_classes {self.log_dice_classes} name a channel >= {classes} (the logits' classes)"
                    )
                use_log = torch.zeros(classes, dtype=torch.bool, device=dice.device)
                use_log[self.log_dice_classes] = True
                terms = torch.where(use_log, terms, 1.0 - dice)
            if not self.include_background:
                if classes < 2:
                    raise ValueError("include_background=False needs at least 2 classes")
                terms = terms[..., 1:]
            loss = loss + self.w_dice * terms.mean()
        if self.w_ce != 0:
            neg_log_p = -log_probs.gather(1, labels.unsqueeze(1)).squeeze(1)
            term = neg_log_p.clamp(min=_MIN_NEG_LOG).pow(self.gamma_ce)
            if self.class_weights is not None:
                term = self.class_weights.to(term.device)[labels] * term
            loss = loss + self.w_ce * term.mean()
        return loss


class CELoss(nn.Module):
    """Cross-entropy on label maps with optional per-class weights (the loss of the DR-Net experiments).

    A thin wrapper over :func:`torch.nn.functional.cross_entropy` that accepts ``(B, 1, *spatial)`` targets and
    takes the class weights as plain floats (so it can be configured from YAML).

    Args:
        class_weights: one weight per logit channel, or ``None`` for unweighted. With weights, the mean is the
            weighted mean (PyTorch's convention: divided by the sum of the voxels' weights).
        label_smoothing: PyTorch's label smoothing in ``[0, 1)``.

    Shapes:
        logits ``(B, K, *spatial)``; target ``(B, 1, *spatial)`` or ``(B, *spatial)`` class indices ``0..K-1``.
        Returns a scalar.
    """

    checks_target = True  # raises on labels outside 0..K-1 (DeepSupervisionLoss then checks once per call)

    def __init__(self, class_weights: Sequence[float] | None = None, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = float(label_smoothing)
        self.register_buffer("class_weights", _class_weight_buffer(class_weights, "class_weights"), persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Compute the mean cross-entropy over all voxels of the batch.

        Args:
            logits: ``(B, K, *spatial)`` unnormalised scores.
            target: ``(B, 1, *spatial)`` or ``(B, *spatial)`` class indices.

        Returns:
            Scalar loss.
        """
        labels = class_index_target(logits, target)
        _check_weights_match(self.class_weights, logits.shape[1], "class_weights")
        weight = None if self.class_weights is None else self.class_weights.to(logits.device, torch.float32)
        return F.cross_entropy(logits.float(), labels, weight=weight, label_smoothing=self.label_smoothing)
