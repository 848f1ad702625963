"""Exact reorientation (segzoo.data.geometry): all 48 axis permutations/flips, affines, spacing, oblique inputs."""

from __future__ import annotations

import itertools
import logging

import nibabel as nib
import numpy as np
import pytest

from segzoo.data.geometry import (
    Reorientation,
    axis_codes,
    check_axis_codes,
    majority_codes,
    obliquity_deg,
    reorient,
    spacing_from_affine,
)
from segzoo.data.synthetic.kits19 import kits19_affine

ALL_48 = [
    np.array([[p[i], f[i]] for i in range(3)], dtype=float)
    for p in itertools.permutations(range(3))
    for f in itertools.product((1, -1), repeat=3)
]


def variant(data: np.ndarray, affine: np.ndarray, ornt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same voxels stored another way: nibabel's apply_orientation with the matching affine."""
    return nib.orientations.apply_orientation(data, ornt), affine @ nib.orientations.inv_ornt_aff(ornt, data.shape)


def test_48_variants_come_back_to_the_same_array_and_affine():
    rng = np.random.default_rng(0)
    data = rng.integers(0, 1000, (5, 7, 9)).astype(np.int16)
    affine = kits19_affine((3.0, 0.8, 0.7))
    affine[:3, 3] = [10.0, -20.0, 30.0]
    codes = axis_codes(affine)
    assert codes == ("I", "P", "L")
    seen = set()
    for ornt in ALL_48:
        d2, a2 = variant(data, affine, ornt)
        seen.add(axis_codes(a2))
        back, back_affine, r = reorient(d2, a2, codes)
        np.testing.assert_array_equal(back, data)
        np.testing.assert_allclose(back_affine, affine, atol=1e-12)
        assert r.oriented_shape == data.shape
        assert spacing_from_affine(back_affine) == pytest.approx((3.0, 0.8, 0.7))
        assert r.apply_spacing(spacing_from_affine(a2)) == pytest.approx((3.0, 0.8, 0.7))
        np.testing.assert_array_equal(r.undo(back), d2)  # exact inverse
    assert len(seen) == 48  # every variant really is stored differently


def test_channels_first_and_from_transform():
    rng = np.random.default_rng(1)
    data = rng.normal(size=(2, 4, 5, 6)).astype(np.float32)
    affine = np.diag([1.0, 2.0, 3.0, 1.0])
    r = Reorientation.to_codes(affine, data.shape[1:], ("S", "L", "P"))
    moved = r.apply(data, first_axis=1)
    assert moved.shape == (2, 6, 4, 5)
    np.testing.assert_array_equal(moved[1], r.apply(data[1]))
    again = Reorientation.from_transform(r.transform.astype(int).tolist(), data.shape[1:])
    np.testing.assert_array_equal(again.undo(moved, first_axis=1), data)
    # the reoriented affine maps every voxel to the same world point
    world = affine @ [1, 2, 3, 1]
    idx = np.argwhere(r.apply(np.arange(120).reshape(4, 5, 6)) == np.arange(120).reshape(4, 5, 6)[1, 2, 3])[0]
    np.testing.assert_allclose(r.apply_affine(affine) @ [*idx, 1], world)
    with pytest.raises(ValueError, match="permutation"):
        Reorientation.from_transform([[0, 1], [0, 1], [2, 1]], (2, 2, 2))


def test_oblique_affine_goes_to_closest_axes_and_is_logged(caplog):
    angle = np.radians(12.0)
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([-1.0, -1.0, 2.5])  # LPS-like, tilted 12 degrees about z
    assert obliquity_deg(affine) == pytest.approx(12.0)
    data = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    with caplog.at_level(logging.INFO, logger="segzoo"):
        out, out_affine, r = reorient(data, affine, ("R", "A", "S"), name="tilted.nii.gz")
    assert "tilted.nii.gz: oblique affine" in caplog.text and "12.00 deg" in caplog.text
    assert r.source == ("L", "P", "S") and axis_codes(out_affine) == ("R", "A", "S")
    np.testing.assert_array_equal(out, data[::-1, ::-1, :])  # a flip, not a resampling
    assert obliquity_deg(out_affine) == pytest.approx(12.0)  # the affine still says where the voxels are


def test_axis_code_checks_and_majority():
    assert check_axis_codes(["r", "a", "s"]) == ("R", "A", "S")
    for bad in (("R", "L", "S"), ("R", "A"), ("X", "A", "S")):
        with pytest.raises(ValueError, match="axis codes"):
            check_axis_codes(bad)
    assert majority_codes([("R", "A", "S"), ("I", "P", "L"), ("I", "P", "L")]) == ("I", "P", "L")
    assert majority_codes([("R", "A", "S"), ("I", "P", "L")]) == ("R", "A", "S")  # tie: first seen
