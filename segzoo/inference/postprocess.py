"""KiTS19 connected-component post-processing of a predicted label map, built so it never deletes a real organ.

Reference: W. Zhao et al., "Multi Scale Supervised 3D U-Net for Kidney and Tumor Segmentation", KiTS19 challenge,
2019 (arXiv:2004.08108): "a patient has at most two kidneys and a tumour sticks to a kidney", so the paper keeps at
most the two largest kidney (+tumour) components and drops tumour that is not attached to a kidney. Like nnU-Net
(Isensee et al., Nature Methods 2021), each step is a switch that validation turns on only where it improves the mean
composite Dice (:meth:`KiTSPostprocess.decide`); the decision is kept in the object's constructor arguments, so a
checkpoint that stores them carries it.

What the paper does not say, and we chose (see ``docs/inference.md``):

- Components are taken on kidney + tumour together (``label > 0``), so a tumour is judged with the kidney it sits on
  ("tumour touching the kept kidney+tumour component is kept", not only tumour touching label-1 voxels).
- Fragments: components closer than ``fragment_gap`` voxels form one organ, so a kidney split in two by a thin gap
  counts once and cannot push the other kidney out of the two slots.
- "Detached tumour" is a component with no kidney voxel at all. It is removed only when it is smaller than
  ``detached_tumour_fraction`` of the largest organ: a kidney predicted entirely as tumour is as large as a kidney
  and stays.
- Small components: an organ smaller than ``min_relative_size`` x the largest organ (or than ``min_component_size``
  voxels) is removed; a real kidney is not small next to the other kidney.
- Keeping the ``max_kidney_components`` largest organs (the paper's rule) is **off by default**: when the net
  predicts a large false positive elsewhere (a liver or spleen predicted as kidney), size cannot tell it from a
  kidney and the cap deletes the real kidney with its tumour. It stays available, and validated, as a switch.
- Connectivity: 26-neighbourhood by default (6 and 18 available). Removed voxels become background (0).
- Ties in size are broken by the order of ``scipy.ndimage.label`` (first voxel in C order), so the result is
  deterministic.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from scipy import ndimage

CONNECTIVITY_RANK = {6: 1, 18: 2, 26: 3}

#: the switchable steps, in the order they run and in the order validation decides them
STEPS = ("remove_detached_tumour", "remove_small", "keep_largest")


class KiTSPostprocess:
    """Connected-component clean-up of a KiTS19 label map (0 background, 1 kidney, 2 tumour).

    Steps, each a switch (see the module docstring for why each is safe):

    1. ``remove_detached_tumour``: drop components with no kidney voxel that are smaller than
       ``detached_tumour_fraction`` of the largest organ;
    2. ``remove_small`` (on when ``min_relative_size > 0`` or ``min_component_size > 0``): drop organs smaller than
       ``min_relative_size`` x the largest organ or than ``min_component_size`` voxels;
    3. ``keep_largest``: keep only the ``max_kidney_components`` largest organs.

    An "organ" is a group of kidney+tumour components that lie within ``fragment_gap`` voxels of each other.

    Args:
        max_kidney_components: how many organs ``keep_largest`` keeps (the paper: 2, one per kidney).
        keep_largest: enable step 3 (off by default: it cannot tell a large false positive from a kidney).
        remove_detached_tumour: enable step 1.
        min_component_size: step 2's absolute threshold in voxels (0 = off).
        min_relative_size: step 2's threshold as a fraction of the largest organ (0 = off).
        detached_tumour_fraction: step 1 keeps a tumour-only organ at least this fraction of the largest organ.
        fragment_gap: components whose gap is at most this many voxels (rounded up to even) form one organ (0 = every
            component is an organ).
        connectivity: neighbourhood for components and for "touching": 6 (faces), 18 (faces+edges) or 26 (all).
        kidney_label: label value of kidney.
        tumour_label: label value of tumour.
        validation: the evidence behind a validated decision (written by :meth:`decide`; JSON-serialisable), kept
            so a checkpoint shows why a step is on or off. Not used by the computation.

    Call:
        ``post(label_map)`` with an integer label map ``(*spatial)`` (3 spatial axes), numpy array or torch tensor
        on any device; returns the same type, dtype, shape and device.
    """

    def __init__(
        self,
        max_kidney_components: int = 2,
        keep_largest: bool = False,
        remove_detached_tumour: bool = True,
        min_component_size: int = 0,
        min_relative_size: float = 0.1,
        detached_tumour_fraction: float = 0.25,
        fragment_gap: int = 2,
        connectivity: int = 26,
        kidney_label: int = 1,
        tumour_label: int = 2,
        validation: dict[str, Any] | None = None,
    ) -> None:
        if max_kidney_components < 1:
            raise ValueError(f"max_kidney_components must be >= 1, got {max_kidney_components}")
        if min_component_size < 0:
            raise ValueError(f"min_component_size must be >= 0 voxels, got {min_component_size}")
        if not 0.0 <= min_relative_size <= 1.0:
            raise ValueError(f"min_relative_size must be a fraction in [0, 1], got {min_relative_size}")
        if not 0.0 <= detached_tumour_fraction <= 1.0:
            raise ValueError(f"detached_tumour_fraction must be a fraction in [0, 1], got {detached_tumour_fraction}")
        if fragment_gap < 0:
            raise ValueError(f"fragment_gap must be >= 0 voxels, got {fragment_gap}")
        if connectivity not in CONNECTIVITY_RANK:
            raise ValueError(f"connectivity must be one of {tuple(CONNECTIVITY_RANK)}, got {connectivity}")
        if kidney_label == tumour_label or min(kidney_label, tumour_label) < 1:
            raise ValueError(
                f"kidney_label and tumour_label must be distinct positive labels, got {kidney_label}, {tumour_label}"
            )
        self.max_kidney_components = int(max_kidney_components)
        self.keep_largest = bool(keep_largest)
        self.remove_detached_tumour = bool(remove_detached_tumour)
        self.min_component_size = int(min_component_size)
        self.min_relative_size = float(min_relative_size)
        self.detached_tumour_fraction = float(detached_tumour_fraction)
        self.fragment_gap = int(fragment_gap)
        self.connectivity = int(connectivity)
        self.kidney_label = int(kidney_label)
        self.tumour_label = int(tumour_label)
        self.validation = validation
        self.structure = ndimage.generate_binary_structure(3, CONNECTIVITY_RANK[connectivity])

    def __repr__(self) -> str:
        return f"KiTSPostprocess(steps={list(self.steps)})"

    # ------------------------------------------------------------------------------------------------ switches
    @property
    def steps(self) -> tuple[str, ...]:
        """The enabled steps, in the order they run."""
        on = {
            "remove_detached_tumour": self.remove_detached_tumour,
            "remove_small": self.min_relative_size > 0 or self.min_component_size > 0,
            "keep_largest": self.keep_largest,
        }
        return tuple(s for s in STEPS if on[s])

    def init_args(self) -> dict[str, Any]:
        """The constructor arguments (plain values) that rebuild this object."""
        return {
            "max_kidney_components": self.max_kidney_components,
            "keep_largest": self.keep_largest,
            "remove_detached_tumour": self.remove_detached_tumour,
            "min_component_size": self.min_component_size,
            "min_relative_size": self.min_relative_size,
            "detached_tumour_fraction": self.detached_tumour_fraction,
            "fragment_gap": self.fragment_gap,
            "connectivity": self.connectivity,
            "kidney_label": self.kidney_label,
            "tumour_label": self.tumour_label,
            "validation": self.validation,
        }

    def with_steps(self, steps: Iterable[str], validation: dict[str, Any] | None = None) -> KiTSPostprocess:
        """A copy with only ``steps`` (a subset of :attr:`steps`) enabled; thresholds of enabled steps are kept."""
        steps = set(steps)
        unknown = steps - set(self.steps)
        if unknown:
            raise ValueError(f"steps {sorted(unknown)} are not enabled in {self!r}; choose from {list(self.steps)}")
        args = self.init_args()
        args["remove_detached_tumour"] = "remove_detached_tumour" in steps
        args["keep_largest"] = "keep_largest" in steps
        if "remove_small" not in steps:
            args["min_relative_size"], args["min_component_size"] = 0.0, 0
        args["validation"] = validation
        return KiTSPostprocess(**args)

    def subsets(self) -> list[tuple[str, ...]]:
        """Every subset of the enabled steps (what :meth:`decide` needs scored), the empty one first."""
        return [c for r in range(len(self.steps) + 1) for c in itertools.combinations(self.steps, r)]

    def decide(
        self, mean_score: dict[tuple[str, ...], float], num_cases: int | None = None, metric: str = "composite/dice"
    ) -> KiTSPostprocess:
        """nnU-Net's rule: starting from no post-processing, add each enabled step in order and keep it only if the
        mean validation score strictly improves.

        Args:
            mean_score: mean validation score of every subset of :attr:`steps` (keys as :meth:`subsets` gives them,
                in step order).
            num_cases: number of validation cases behind the means (recorded).
            metric: name of the score (recorded).

        Returns:
            A copy with the kept steps enabled and ``validation`` holding the evidence.
        """
        kept: tuple[str, ...] = ()
        record = []
        for step in self.steps:
            trial = tuple(s for s in self.steps if s in kept or s == step)
            without, with_ = float(mean_score[kept]), float(mean_score[trial])
            keep = with_ > without
            record.append({"step": step, "without": without, "with": with_, "kept": keep})
            if keep:
                kept = trial
        evidence = {"metric": metric, "num_cases": num_cases, "decisions": record, "kept": list(kept)}
        return self.with_steps(kept, validation=evidence)

    # ------------------------------------------------------------------------------------------------ computation
    def __call__(self, label_map: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Post-process ``label_map`` ``(*spatial)``; see the class docstring."""
        if isinstance(label_map, torch.Tensor):
            out = self.apply_numpy(label_map.detach().cpu().numpy())
            return torch.from_numpy(out).to(label_map.device)
        if isinstance(label_map, np.ndarray):
            return self.apply_numpy(label_map)
        raise TypeError(f"label_map must be a numpy array or torch tensor, got {type(label_map).__name__}")

    def _organs(self, foreground: np.ndarray) -> tuple[np.ndarray, int]:
        """Organ index of every foreground voxel (0 = background): components, merged across ``fragment_gap``."""
        components, n = ndimage.label(foreground, structure=self.structure)
        if n <= 1 or self.fragment_gap == 0:
            return components, n
        # grow every component by ceil(g / 2) steps of the structure: two components whose gap is <= g voxels
        # (g rounded up to even) then touch, and land in one grown group
        half = (self.fragment_gap + 1) // 2
        grown = ndimage.binary_dilation(foreground, structure=self.structure, iterations=half)
        groups, _ = ndimage.label(grown, structure=self.structure)
        organ_of_component = np.zeros(n + 1, dtype=np.int64)
        # every component lies inside exactly one grown group; read it at any of its voxels
        first = ndimage.labeled_comprehension(groups, components, np.arange(1, n + 1), np.max, np.int64, 0)
        organ_of_component[1:] = first
        _, relabel = np.unique(organ_of_component, return_inverse=True)  # 0 stays 0 (no group id is 0 inside)
        organs = relabel[components]
        return organs, int(relabel.max())

    def apply_numpy(self, labels: np.ndarray) -> np.ndarray:
        """The numpy implementation; returns a new array of the same dtype."""
        return self.apply_subsets(labels, [self.steps])[self.steps]

    def apply_subsets(
        self, labels: np.ndarray, subsets: Sequence[tuple[str, ...]] | None = None
    ) -> dict[tuple[str, ...], np.ndarray]:
        """``{subset: labels post-processed with only those steps}`` for each subset of :attr:`steps` (default all),
        sharing one component analysis (what validation needs to decide the steps)."""
        if labels.ndim != 3:
            raise ValueError(f"label_map must be a 3D label map (*spatial), got shape {labels.shape}")
        if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
            raise ValueError(f"label_map must hold integer class indices, got dtype {labels.dtype}")
        allowed = (0, self.kidney_label, self.tumour_label)
        bad = np.setdiff1d(np.unique(labels), allowed)
        if bad.size:
            raise ValueError(f"label_map has values {bad.tolist()[:10]} outside the expected labels {allowed}")
        subsets = [tuple(s) for s in (self.subsets() if subsets is None else subsets)]
        unknown = {step for sub in subsets for step in sub} - set(self.steps)
        if unknown:
            raise ValueError(f"steps {sorted(unknown)} are not enabled in {self!r}; choose from {list(self.steps)}")
        if not any(subsets):
            return {s: labels.copy() for s in subsets}
        organs, n = self._organs(labels > 0)
        if n == 0:
            return {s: labels.copy() for s in subsets}
        sizes = np.bincount(organs.ravel(), minlength=n + 1)
        largest = sizes[1:].max()
        kidney_voxels = np.bincount(organs[labels == self.kidney_label], minlength=n + 1)
        drop = {
            "remove_detached_tumour": (kidney_voxels == 0) & (sizes < self.detached_tumour_fraction * largest),
            "remove_small": (sizes < self.min_relative_size * largest) | (sizes < self.min_component_size),
        }
        results = {}
        for subset in subsets:
            keep = np.ones(n + 1, dtype=bool)
            for step in ("remove_detached_tumour", "remove_small"):
                if step in subset:
                    keep &= ~drop[step]
            keep[0] = False
            if "keep_largest" in subset:
                ids = np.flatnonzero(keep)
                ids = ids[np.argsort(-sizes[ids], kind="stable")]  # stable: equal sizes keep scipy's label order
                keep[ids[self.max_kidney_components :]] = False
            keep[0] = True  # background stays background
            out = labels.copy()
            out[~keep[organs]] = 0
            results[subset] = out
        return results


def score_subsets(post: KiTSPostprocess, labels: np.ndarray, score: Any) -> dict[tuple[str, ...], Any]:
    """``{subset: score(labels post-processed with that subset of steps)}`` for every subset (for :meth:`decide`)."""
    return {s: score(out) for s, out in post.apply_subsets(labels).items()}
