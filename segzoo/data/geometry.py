"""Voxel geometry: spacing and orientation from an affine, and exact reorientation (axis permutation + flip).

Images from other tools come in any axis order and direction (KiTS19 stores (slices, H, W) pointing I/P/L,
``nibabel.as_closest_canonical``, ITK and dcm2niix write R/A/S slices-last, DICOM-derived files L/P/S). segzoo brings
every image to the orientation the net was trained on (the axis codes recorded in the dataset fingerprint) by an
exact permutation and flip of the voxel array - never by resampling - and maps predictions back with the inverse,
so a label map comes back voxel for voxel on the input's own array. The orientation maths is nibabel's
(``io_orientation``, ``ornt_transform``, ``apply_orientation``, ``inv_ornt_aff``). See ``docs/inference.md``.

Axis codes name the world direction each array axis points to (nibabel's RAS+ convention): ``("I", "P", "L")`` is
the KiTS19 layout, ``("R", "A", "S")`` the canonical one.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

log = logging.getLogger("segzoo")

# an affine whose axes lie farther than this from the closest world axes is "oblique" (reported, still exact)
OBLIQUE_TOLERANCE_DEG = 1e-3


def spacing_from_affine(affine: np.ndarray) -> tuple[float, ...]:
    """Voxel size in mm per array axis: the column norms of ``affine[:3, :3]`` (works for any axis order)."""
    affine = np.asarray(affine, dtype=np.float64)
    n = affine.shape[0] - 1
    return tuple(float(v) for v in np.linalg.norm(affine[:n, :n], axis=0))


def axis_codes(affine: np.ndarray) -> tuple[str, ...]:
    """World direction of each array axis (closest axis for an oblique affine), e.g. ``("R", "A", "S")``."""
    import nibabel as nib

    return tuple(str(c) for c in nib.orientations.aff2axcodes(np.asarray(affine, dtype=np.float64)))


def obliquity_deg(affine: np.ndarray) -> float:
    """Largest angle, in degrees, between an array axis and the world axis closest to it (0 for axis-aligned)."""
    m = np.asarray(affine, dtype=np.float64)[:3, :3]
    norms = np.linalg.norm(m, axis=0)
    norms[norms == 0] = 1.0
    cosines = np.abs(m / norms).max(axis=0)
    return float(np.degrees(np.arccos(np.clip(cosines.min(), -1.0, 1.0))))


def check_axis_codes(codes: Sequence[str], what: str = "orientation") -> tuple[str, str, str]:
    """``codes`` as a tuple of 3 upper-case letters naming one direction of each world axis; ValueError otherwise."""
    codes = tuple(str(c).upper() for c in codes)
    pairs = {"L": 0, "R": 0, "P": 1, "A": 1, "I": 2, "S": 2}
    if len(codes) != 3 or any(c not in pairs for c in codes) or len({pairs[c] for c in codes}) != 3:
        raise ValueError(
            f"{what}={codes}: expected 3 axis codes, one of L/R, one of P/A and one of I/S (e.g. ('R', 'A', 'S'))"
        )
    return codes  # type: ignore[return-value]


def _inverse(transform: np.ndarray) -> np.ndarray:
    inv = np.empty_like(transform)
    for axis, (new_axis, flip) in enumerate(transform):
        inv[int(new_axis)] = [axis, flip]
    return inv


@dataclass(frozen=True)
class Reorientation:
    """The exact axis permutation + flip that takes one image's voxel array to the target axis codes, and back.

    Build it with :meth:`to_codes`; :meth:`apply` and :meth:`undo` are exact inverses (``undo(apply(a)) == a``).

    Attributes:
        transform: nibabel orientation transform ``(3, 2)``: row ``i`` = (target axis of stored axis ``i``, flip).
        shape: stored spatial shape.
        source: axis codes of the stored array.
        target: axis codes after :meth:`apply`.
        oblique_deg: :func:`obliquity_deg` of the stored affine.
    """

    transform: np.ndarray
    shape: tuple[int, ...]
    source: tuple[str, ...]
    target: tuple[str, ...]
    oblique_deg: float = 0.0

    @classmethod
    def to_codes(
        cls, affine: np.ndarray, shape: Sequence[int], target: Sequence[str] | None, name: object = "image"
    ) -> Reorientation:
        """Reorientation of an array of spatial ``shape`` with ``affine`` to ``target`` codes (``None``: identity).

        An oblique affine is brought to its closest axes (a permutation and flip, no resampling) and the log says so,
        naming ``name``.
        """
        import nibabel as nib

        affine = np.asarray(affine, dtype=np.float64)
        shape = tuple(int(s) for s in shape)
        source = axis_codes(affine)
        if target is None:
            target = source
        target = check_axis_codes(target)
        start = nib.orientations.io_orientation(affine)
        transform = nib.orientations.ornt_transform(start, nib.orientations.axcodes2ornt(target))
        tilt = obliquity_deg(affine)
        if tilt > OBLIQUE_TOLERANCE_DEG:  # a warning, so it shows without any logging setup (fit, scripts)
            log.warning(
                "%s: oblique affine (axes up to %.2f deg from the world axes); reoriented to the closest axes %s "
                "by permutation/flip only, no resampling",
                name,
                tilt,
                "".join(target),
            )
        return cls(transform, shape, source, tuple(target), tilt)

    @classmethod
    def between_codes(cls, source: Sequence[str], target: Sequence[str], shape: Sequence[int]) -> Reorientation:
        """Reorientation of an array of spatial ``shape`` whose axes point to ``source`` codes, to ``target``."""
        import nibabel as nib

        source, target = check_axis_codes(source, "source"), check_axis_codes(target, "target")
        transform = nib.orientations.ornt_transform(
            nib.orientations.axcodes2ornt(source), nib.orientations.axcodes2ornt(target)
        )
        return cls(transform, tuple(int(s) for s in shape), source, target)

    @classmethod
    def from_transform(cls, transform: Sequence[Sequence[int]], shape: Sequence[int]) -> Reorientation:
        """Rebuild from a stored ``transform`` (e.g. a cached case's ``orientation_transform``) and stored shape."""
        t = np.asarray(transform, dtype=np.float64).reshape(3, 2)
        if sorted(t[:, 0].astype(int).tolist()) != [0, 1, 2] or not np.all(np.isin(t[:, 1], (-1, 1))):
            raise ValueError(f"orientation transform {t.tolist()}: expected a permutation of 0..2 with flips +-1")
        return cls(t, tuple(int(s) for s in shape), (), ())

    @property
    def is_identity(self) -> bool:
        return bool(np.array_equal(self.transform, [[0, 1], [1, 1], [2, 1]]))

    @property
    def oriented_shape(self) -> tuple[int, ...]:
        """Spatial shape after :meth:`apply`."""
        out = [0, 0, 0]
        for n, (axis, _) in zip(self.shape, self.transform):
            out[int(axis)] = n
        return tuple(out)

    def _move(self, array: np.ndarray, transform: np.ndarray, first_axis: int) -> np.ndarray:
        import nibabel as nib

        array = np.asarray(array)
        if array.ndim < first_axis + 3:
            raise ValueError(f"expected 3 spatial axes from axis {first_axis}, got an array of shape {array.shape}")
        if np.array_equal(transform, [[0, 1], [1, 1], [2, 1]]):
            return array
        moved = np.moveaxis(array, range(first_axis, first_axis + 3), range(3))  # spatial first (nibabel's order)
        out = nib.orientations.apply_orientation(moved, transform)
        return np.ascontiguousarray(np.moveaxis(out, range(3), range(first_axis, first_axis + 3)))

    def apply(self, array: np.ndarray, first_axis: int = 0) -> np.ndarray:
        """Stored order -> target order; the 3 spatial axes start at ``first_axis`` (1 for ``(C, *spatial)``)."""
        return self._move(array, self.transform, first_axis)

    def undo(self, array: np.ndarray, first_axis: int = 0) -> np.ndarray:
        """Target order -> stored order: the exact inverse of :meth:`apply`."""
        return self._move(array, _inverse(self.transform), first_axis)

    def apply_affine(self, affine: np.ndarray) -> np.ndarray:
        """The affine of the reoriented array (same world position of every voxel: ``affine @ inv_ornt_aff``)."""
        import nibabel as nib

        return np.asarray(affine, dtype=np.float64) @ nib.orientations.inv_ornt_aff(self.transform, self.shape)

    def apply_spacing(self, spacing: Sequence[float]) -> tuple[float, ...]:
        """Per-axis values (voxel size, shape) of the stored order, in the target order."""
        out = [0.0, 0.0, 0.0]
        for value, (axis, _) in zip(spacing, self.transform):
            out[int(axis)] = float(value)
        return tuple(out)


def reorient(
    array: np.ndarray, affine: np.ndarray, target: Sequence[str] | None, first_axis: int = 0, name: object = "image"
) -> tuple[np.ndarray, np.ndarray, Reorientation]:
    """``(array in target orientation, its affine, the Reorientation)`` for an array with 3 spatial axes."""
    shape = np.asarray(array).shape[first_axis : first_axis + 3]
    r = Reorientation.to_codes(affine, shape, target, name=name)
    return r.apply(array, first_axis), r.apply_affine(affine), r


def majority_codes(codes: Sequence[Sequence[str]]) -> tuple[str, ...]:
    """The most frequent axis codes (ties: the first seen), e.g. the training orientation of a dataset."""
    counts: dict[tuple[str, ...], int] = {}
    for c in codes:
        counts[tuple(c)] = counts.get(tuple(c), 0) + 1
    if not counts:
        raise ValueError("majority_codes: no axis codes given")
    return max(counts, key=lambda c: counts[c])  # dicts keep insertion order: ties go to the first seen
