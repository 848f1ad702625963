"""Shared target handling for segzoo losses: class-index label maps in either ``(B, 1, *spatial)`` or ``(B, *spatial)``."""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager

import torch

# set while a caller has already checked the value range of the target it passes on (deep supervision: the
# full-resolution label is checked once; its nearest-downsampled copies hold a subset of its values)
_RANGE_CHECKED: contextvars.ContextVar[bool] = contextvars.ContextVar("segzoo_target_range_checked", default=False)


@contextmanager
def target_range_checked() -> Iterator[None]:
    """Within this block :func:`class_index_target` skips the value-range check (one device sync) of targets."""
    token = _RANGE_CHECKED.set(True)
    try:
        yield
    finally:
        _RANGE_CHECKED.reset(token)


def class_index_target(logits: torch.Tensor, target: torch.Tensor, name: str = "target") -> torch.Tensor:
    """Return ``target`` as a ``long`` tensor of shape ``(B, *spatial)`` matching ``logits`` ``(B, K, *spatial)``.

    Args:
        logits: network output, shape ``(B, K, *spatial)``.
        target: class indices, shape ``(B, 1, *spatial)`` or ``(B, *spatial)``; integer or integral float values
            in ``0..K-1``.
        name: how the target is called in error messages.

    Raises:
        ValueError: on a shape that matches neither layout, non-integral values or values outside ``0..K-1``.
    """
    if logits.ndim < 3:
        raise ValueError(f"logits must have shape (B, K, *spatial), got {tuple(logits.shape)}")
    batch, classes, spatial = logits.shape[0], logits.shape[1], tuple(logits.shape[2:])
    if target.ndim == logits.ndim and target.shape[1] == 1 and tuple(target.shape[2:]) == spatial:
        target = target[:, 0]
    if target.shape[0] != batch or tuple(target.shape[1:]) != spatial:
        raise ValueError(
            f"{name} must have shape (B, 1, *spatial) or (B, *spatial) = {(batch, 1, *spatial)} or "
            f"{(batch, *spatial)} to match logits {tuple(logits.shape)}, got {tuple(target.shape)}"
        )
    if _RANGE_CHECKED.get():
        return target if target.dtype == torch.long else target.long()
    if target.is_floating_point():
        rounded = target.round()
        if not torch.equal(rounded, target):
            raise ValueError(f"{name} must hold integer class indices (a label map), got non-integral values")
        target = rounded
    target = target.long()
    if target.numel():
        lo, hi = torch.stack(torch.aminmax(target)).tolist()  # one pass and one device sync on an accelerator
        if lo < 0 or hi >= classes:
            raise ValueError(
                f"{name} values must be class indices in 0..{classes - 1} (logits have {classes} channels), "
                f"got values in {lo}..{hi}"
            )
    return target
