"""A whole-case net output -> the label map a user sees: restore to the original grid, argmax, post-process,
``uint8``. Written once; ``segzoo infer``, ``segzoo predict``, ensembles and test-time scoring all call it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch


def labels_on_original_grid(
    output: torch.Tensor | np.ndarray,
    original_shape: Sequence[int],
    preprocessor: Any | None = None,
    postprocess: Callable | None = None,
) -> np.ndarray:
    """``uint8`` label map of shape ``original_shape`` from one case's whole-case output ``(K, *spatial)``.

    With a ``preprocessor`` (``restore(scores, shape)``) the class scores are resampled back to the original grid
    before the argmax; without one the output is already on that grid. ``postprocess`` (a label-map callable) runs
    last, on the original grid, as in ``segzoo infer``, ``segzoo predict`` and test-time scoring.
    """
    if preprocessor is not None:
        labels = np.asarray(preprocessor.restore(output, tuple(int(s) for s in original_shape)))
    else:
        out = torch.as_tensor(output)
        labels = out.argmax(0).cpu().numpy()
    if postprocess is not None:
        labels = np.asarray(postprocess(labels))
    return labels.astype(np.uint8)
