"""`segzoo show`: panels named from the orientation, drawn with the true aspect ratio, the same for any storage."""

from __future__ import annotations

import itertools

import matplotlib.pyplot as plt
import nibabel as nib
import numpy as np
import pytest

from segzoo.data.geometry import axis_codes, spacing_from_affine
from segzoo.viz import overlay_figure, plane_names


def panels(fig) -> list[tuple[str, tuple, float, np.ndarray]]:
    out = []
    for ax in fig.axes[:3]:
        img = ax.images[0]
        out.append((ax.get_title(), img.get_array().shape, float(ax.get_aspect()), np.asarray(img.get_array())))
    return out


def test_plane_names():
    assert plane_names(("R", "A", "S")) == ("sagittal", "coronal", "axial")
    assert plane_names(("I", "P", "L")) == ("axial", "coronal", "sagittal")


def test_ras_brain_panels_are_named_from_the_axis_codes():
    """BraTS-like RAS volume (x, y, z) with 3 mm slices: the axial panel is the x-y plane, not the y-z one."""
    rng = np.random.default_rng(0)
    image = rng.normal(size=(10, 12, 5)).astype(np.float32)
    affine = np.diag([1.0, 1.0, 3.0, 1.0])
    fig = overlay_figure(image, spacing=spacing_from_affine(affine), axis_codes=axis_codes(affine))
    try:
        (n0, s0, a0, _), (n1, s1, a1, _), (n2, s2, a2, _) = panels(fig)
    finally:
        plt.close(fig)
    assert (n0, n1, n2) == ("axial", "coronal", "sagittal")
    assert s0 == (12, 10) and a0 == pytest.approx(1.0)  # rows A->P, columns R->L
    assert s1 == (5, 10) and a1 == pytest.approx(3.0)  # 3 mm slices drawn 3x as tall as a 1 mm column
    assert s2 == (5, 12) and a2 == pytest.approx(3.0)


def test_every_storage_of_the_same_voxels_draws_the_same_panels():
    rng = np.random.default_rng(1)
    image = rng.normal(size=(6, 9, 7)).astype(np.float32)
    label = np.zeros(image.shape, np.uint8)
    label[2:4, 3:6, 1:3] = 1
    affine = np.array([[0, 0, -0.9, 0], [0, -0.8, 0, 0], [-3.0, 0, 0, 0], [0, 0, 0, 1.0]])  # KiTS19 layout
    ref = None
    for perm in itertools.permutations(range(3)):
        for flips in ((1, 1, 1), (-1, 1, -1)):
            ornt = np.array([[perm[i], flips[i]] for i in range(3)], dtype=float)
            img2 = nib.orientations.apply_orientation(image, ornt)
            lab2 = nib.orientations.apply_orientation(label, ornt)
            aff2 = affine @ nib.orientations.inv_ornt_aff(ornt, image.shape)
            fig = overlay_figure(img2, lab2, spacing=spacing_from_affine(aff2), axis_codes=axis_codes(aff2))
            try:
                got = [(n, s, a, arr.copy()) for n, s, a, arr in panels(fig)]
            finally:
                plt.close(fig)
            if ref is None:
                ref = got
                assert [g[0] for g in got] == ["axial", "coronal", "sagittal"]
                assert got[1][2] == pytest.approx(3.0 / 0.9)
            for (n, s, a, arr), (rn, rs, ra, rarr) in zip(got, ref):
                assert (n, s) == (rn, rs) and a == pytest.approx(ra)
                np.testing.assert_array_equal(arr, rarr)


def test_single_slice_and_volume_without_codes():
    """What the training callback draws: a 2D slice, or a volume in the training orientation without codes."""
    rng = np.random.default_rng(2)
    fig = overlay_figure(rng.normal(size=(12, 10)), (rng.random((12, 10)) > 0.5).astype(np.uint8))
    try:
        assert [ax.get_title() for ax in fig.axes if ax.get_title()] == ["axial"]
    finally:
        plt.close(fig)
    fig = overlay_figure(rng.normal(size=(4, 12, 10)), spacing=(3.0, 1.0, 1.0))
    try:
        assert [ax.get_title() for ax in fig.axes] == ["axial", "coronal", "sagittal"]
    finally:
        plt.close(fig)
