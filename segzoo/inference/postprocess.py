"""KiTS19 connected-component post-processing of a predicted label map.

Reference: W. Zhao et al., "Multi Scale Supervised 3D U-Net for Kidney and Tumor Segmentation", KiTS19 challenge,
2019 (arXiv:2004.08108): keep at most the two largest kidney (+tumour) components and drop tumour components that do
not touch kidney.

Choices where the paper is silent (see ``docs/inference.md``):

- Connectivity: 26-neighbourhood by default (a diagonal contact connects, as in MONAI's
  ``KeepLargestConnectedComponent`` default); 6 and 18 are available.
- Order: detached tumour is removed *first*, then small components, then all but the largest kidney(+tumour)
  components, so a large false-positive tumour blob cannot take one of the two kidney slots. After this order every
  remaining tumour component touches kidney and at most ``max_kidney_components`` foreground components remain.
- Removed voxels become background (0).
- Ties in component size are broken by the order of ``scipy.ndimage.label`` (first voxel in C order), so the result
  is deterministic.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

CONNECTIVITY_RANK = {6: 1, 18: 2, 26: 3}


class KiTSPostprocess:
    """Connected-component clean-up of a KiTS19 label map (0 background, 1 kidney, 2 tumour).

    Args:
        max_kidney_components: how many of the largest connected components of kidney+tumour (label > 0) to keep
            (the paper: 2, one per kidney).
        keep_largest: enable the "keep the largest components" step.
        remove_detached_tumour: enable the "drop tumour components that touch no kidney voxel" step.
        min_component_size: kidney+tumour components with fewer voxels are removed (0 = off).
        connectivity: neighbourhood for components and for "touching": 6 (faces), 18 (faces+edges) or 26 (all).
        kidney_label: label value of kidney.
        tumour_label: label value of tumour.

    Call:
        ``post(label_map)`` with an integer label map ``(*spatial)`` (3 spatial axes), numpy array or torch tensor
        on any device; returns the same type, dtype, shape and device.
    """

    def __init__(
        self,
        max_kidney_components: int = 2,
        keep_largest: bool = True,
        remove_detached_tumour: bool = True,
        min_component_size: int = 0,
        connectivity: int = 26,
        kidney_label: int = 1,
        tumour_label: int = 2,
    ) -> None:
        if max_kidney_components < 1:
            raise ValueError(f"max_kidney_components must be >= 1, got {max_kidney_components}")
        if min_component_size < 0:
            raise ValueError(f"min_component_size must be >= 0 voxels, got {min_component_size}")
        if connectivity not in CONNECTIVITY_RANK:
            raise ValueError(f"connectivity must be one of {tuple(CONNECTIVITY_RANK)}, got {connectivity}")
        if kidney_label == tumour_label or min(kidney_label, tumour_label) < 1:
            raise ValueError(
                f"kidney_label and tumour_label must be distinct positive labels, got {kidney_label}, {tumour_label}"
            )
        self.max_kidney_components = int(max_kidney_components)
        self.keep_largest = keep_largest
        self.remove_detached_tumour = remove_detached_tumour
        self.min_component_size = int(min_component_size)
        self.connectivity = connectivity
        self.kidney_label = kidney_label
        self.tumour_label = tumour_label
        self.structure = ndimage.generate_binary_structure(3, CONNECTIVITY_RANK[connectivity])

    def __call__(self, label_map: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Post-process ``label_map`` ``(*spatial)``; see the class docstring."""
        if isinstance(label_map, torch.Tensor):
            out = self.apply_numpy(label_map.detach().cpu().numpy())
            return torch.from_numpy(out).to(label_map.device)
        if isinstance(label_map, np.ndarray):
            return self.apply_numpy(label_map)
        raise TypeError(f"label_map must be a numpy array or torch tensor, got {type(label_map).__name__}")

    def apply_numpy(self, labels: np.ndarray) -> np.ndarray:
        """The numpy implementation; returns a new array of the same dtype."""
        if labels.ndim != 3:
            raise ValueError(f"label_map must be a 3D label map (*spatial), got shape {labels.shape}")
        if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
            raise ValueError(f"label_map must hold integer class indices, got dtype {labels.dtype}")
        allowed = (0, self.kidney_label, self.tumour_label)
        bad = np.setdiff1d(np.unique(labels), allowed)
        if bad.size:
            raise ValueError(f"label_map has values {bad.tolist()[:10]} outside the expected labels {allowed}")
        out = labels.copy()
        if self.remove_detached_tumour:
            tumour, n = ndimage.label(out == self.tumour_label, structure=self.structure)
            if n:
                near_kidney = ndimage.binary_dilation(out == self.kidney_label, structure=self.structure)
                touching = np.unique(tumour[near_kidney & (tumour > 0)])
                detached = np.ones(n + 1, dtype=bool)
                detached[touching] = False
                detached[0] = False
                out[detached[tumour]] = 0
        if self.keep_largest or self.min_component_size > 0:
            components, n = ndimage.label(out > 0, structure=self.structure)
            if n:
                sizes = np.bincount(components.ravel(), minlength=n + 1)
                keep = np.zeros(n + 1, dtype=bool)
                ids = np.arange(1, n + 1)
                ids = ids[sizes[1:] >= self.min_component_size]
                if self.keep_largest:
                    # stable sort: equal sizes keep scipy's label order
                    ids = ids[np.argsort(-sizes[ids], kind="stable")][: self.max_kidney_components]
                keep[ids] = True
                out[~keep[components]] = 0
        return out
