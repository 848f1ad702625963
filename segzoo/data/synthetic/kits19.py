"""Synthetic KiTS19 cases written in the official layout (``case_XXXXX/imaging.nii.gz`` + ``segmentation.nii.gz``).

Reference: Heller et al., "The KiTS19 challenge data" (arXiv:1904.00445); used by Zhao et al., "Multi Scale Supervised
3D U-Net for Kidney and Tumor Segmentation" (KiTS19). The generator is the embedded default data of segzoo: every
command runs on it on a fresh machine. Layout, dtypes and affine convention follow the "interpolated" KiTS19 release:

- arrays are ``(slices, H, W)``; image int16 Hounsfield units, label uint8 (0 background, 1 kidney, 2 tumour);
- the affine is non-RAS with the slice axis first, e.g. ``[[0, 0, -dx, 0], [0, -dy, 0, 0], [-dz, 0, 0, 0], [0, 0, 0, 1]]``
  (array axis 0 carries the slice thickness ``dz`` ~ 3 mm, axes 1 and 2 the in-plane spacing).

The anatomy is drawn in millimetres, so "small" (fast) and "large" (real-sized) cases show the same body:
body ellipse (fat ~ -100 HU around soft tissue ~ 40 HU), two bean-shaped kidneys (cortex ~ 150-200 HU, medulla
lower), one tumour per labelled case protruding from a kidney (70-110 HU, hypo-enhancing against the kidney but in the
liver's range, a necrotic core in large ones,
radius 6-25 mm), distractors (liver 60-110 HU, vertebra 400-1000 HU, aorta and vena cava 150-250 HU, bowel gas
-800 HU), partial-volume gaussian blur and gaussian noise (sigma 15-25 HU) before quantising to int16.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from segzoo.data.io import save_nifti

# size name -> (slice-count range, in-plane pixels, in-plane spacing range mm, slice thickness range mm)
# "small": ~2 mm in-plane keeps a body-sized 256 mm field of view at 128x128 (fast on a laptop CPU);
# "large": real KiTS19 in-plane size (512x512 at ~0.78 mm).
_SIZES = {
    "small": ((32, 44), 128, (1.9, 2.1), (2.9, 3.1)),
    "large": ((60, 100), 512, (0.74, 0.82), (2.9, 3.1)),
}


def _rotation(angle_z: float, angle_y: float) -> np.ndarray:
    """Rotation about the slice axis (in-plane) then a tilt in the (slice, row) plane; acts on (z, y, x) vectors."""
    cz, sz = np.cos(angle_z), np.sin(angle_z)
    cy, sy = np.cos(angle_y), np.sin(angle_y)
    in_plane = np.array([[1, 0, 0], [0, cz, -sz], [0, sz, cz]])
    tilt = np.array([[cy, -sy, 0], [sy, cy, 0], [0, 0, 1]])
    return tilt @ in_plane


class _Canvas:
    """Millimetre coordinates of a ``(Z, Y, X)`` grid; shapes are evaluated only inside their bounding box."""

    def __init__(self, shape: tuple[int, int, int], spacing: tuple[float, float, float]):
        self.shape = shape
        self.spacing = np.asarray(spacing, dtype=np.float64)
        # centre of the volume at 0 mm
        self.axes = [(np.arange(n) - (n - 1) / 2.0) * s for n, s in zip(shape, spacing)]

    def ellipsoid(
        self, center, semi_axes, rotation: np.ndarray | None = None
    ) -> tuple[tuple[slice, ...], np.ndarray, np.ndarray]:
        """Return ``(bbox slices, boolean mask inside bbox, normalised radius r in bbox)`` of an ellipsoid (mm)."""
        center = np.asarray(center, dtype=np.float64)
        semi = np.asarray(semi_axes, dtype=np.float64)
        reach = semi.max()
        sl = []
        for ax, c in zip(self.axes, center):
            lo = np.searchsorted(ax, c - reach)
            hi = np.searchsorted(ax, c + reach, side="right")
            sl.append(slice(int(lo), int(max(hi, lo))))
        sl = tuple(sl)
        z = self.axes[0][sl[0]][:, None, None] - center[0]
        y = self.axes[1][sl[1]][None, :, None] - center[1]
        x = self.axes[2][sl[2]][None, None, :] - center[2]
        if rotation is None:
            r2 = (z / semi[0]) ** 2 + (y / semi[1]) ** 2 + (x / semi[2]) ** 2
        else:
            rt = rotation.T  # world -> local
            lz = rt[0, 0] * z + rt[0, 1] * y + rt[0, 2] * x
            ly = rt[1, 0] * z + rt[1, 1] * y + rt[1, 2] * x
            lx = rt[2, 0] * z + rt[2, 1] * y + rt[2, 2] * x
            r2 = (lz / semi[0]) ** 2 + (ly / semi[1]) ** 2 + (lx / semi[2]) ** 2
        r = np.sqrt(r2)
        return sl, r <= 1.0, r


def kits19_affine(spacing: tuple[float, float, float]) -> np.ndarray:
    """KiTS19 "interpolated" affine for voxel sizes ``(slice, row, column)`` in mm: slice axis first, non-RAS."""
    dz, dy, dx = spacing
    return np.array(
        [[0.0, 0.0, -dx, 0.0], [0.0, -dy, 0.0, 0.0], [-dz, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]], dtype=np.float64
    )


def synth_kits19_case(rng: np.random.Generator, size: str = "small") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw one synthetic case.

    Args:
        rng: random generator (all randomness of the case comes from it).
        size: ``"small"`` (32-44 slices of 128x128 at ~3 x 2 x 2 mm) or ``"large"`` (60-100 slices of 512x512 at
            ~3 x 0.78 x 0.78 mm).

    Returns:
        ``(image int16 (D, H, W), label uint8 (D, H, W), affine 4x4)``.
    """
    if size not in _SIZES:
        raise ValueError(f"size='{size}': expected one of {sorted(_SIZES)}")
    (zlo, zhi), n_xy, (slo, shi), (tlo, thi) = _SIZES[size]
    depth = int(rng.integers(zlo, zhi + 1))
    pix = float(rng.uniform(slo, shi))
    thick = float(rng.uniform(tlo, thi))
    shape = (depth, n_xy, n_xy)
    spacing = (thick, pix, pix)
    cv = _Canvas(shape, spacing)
    fov_xy = n_xy * pix
    scale = fov_xy / 256.0  # anatomy is sized for a 256 mm field of view; large cases (~400 mm) get a bigger body
    scale = float(np.clip(scale, 1.0, 1.35))

    hu = np.full(shape, -1000.0, dtype=np.float32)
    label = np.zeros(shape, dtype=np.uint8)
    big_z = 10_000.0  # "infinite" extent along the slice axis for cylinders

    # body: fat ellipse with a soft-tissue core (rows = anterior->posterior, columns = right->left)
    body_ax = np.array([big_z, rng.uniform(95, 110) * scale, rng.uniform(120, 125) * scale])
    sl, m, _ = cv.ellipsoid((0, 0, 0), body_ax)
    hu[sl][m] = -100.0 + rng.normal(0, 8)
    core = body_ax * np.array([1.0, rng.uniform(0.78, 0.85), rng.uniform(0.8, 0.87)])
    sl, m, _ = cv.ellipsoid((0, 0, 0), core)
    hu[sl][m] = 40.0 + rng.normal(0, 5)

    # liver: large ellipsoid on the patient's right (image left), upper slices, anterior-lateral
    z_top = cv.axes[0][-1]
    liver_c = (z_top - rng.uniform(0, 25), rng.uniform(-25, -5) * scale, rng.uniform(-60, -45) * scale)
    liver_ax = (rng.uniform(55, 80), rng.uniform(50, 65) * scale, rng.uniform(55, 70) * scale)
    sl, m, _ = cv.ellipsoid(liver_c, liver_ax, _rotation(rng.uniform(-0.3, 0.3), 0.0))
    hu[sl][m] = rng.uniform(60, 110)

    # bowel gas pockets, anterior
    for _ in range(int(rng.integers(2, 6))):
        c = (rng.uniform(cv.axes[0][0], cv.axes[0][-1]), rng.uniform(-75, -35) * scale, rng.uniform(-40, 60) * scale)
        sl, m, _ = cv.ellipsoid(c, (rng.uniform(8, 20), rng.uniform(5, 12), rng.uniform(6, 15)))
        hu[sl][m] = -800.0

    # kidneys: bean = ellipsoid minus a medial hilum notch; cortex bright, medulla darker
    spine_y = rng.uniform(48, 58) * scale
    kidneys = []
    for side in (-1.0, 1.0):
        c = np.array(
            [rng.uniform(-12, 12), spine_y - rng.uniform(5, 15), side * rng.uniform(55, 68) * scale], dtype=np.float64
        )
        ax = np.array([rng.uniform(42, 55), rng.uniform(22, 28), rng.uniform(24, 30)])
        rot = _rotation(side * rng.uniform(0.2, 0.5), rng.uniform(-0.2, 0.2))
        sl, m, r = cv.ellipsoid(c, ax, rot)
        hilum_c = c - rot @ np.array([0.0, 0.0, side * ax[2] * 0.95])
        hsl, hm, _ = cv.ellipsoid(hilum_c, ax * np.array([0.45, 0.55, 0.5]), rot)
        kidney = np.zeros(shape, dtype=bool)
        kidney[sl] = m
        kidney[hsl] &= ~hm
        cortex_hu, medulla_hu = rng.uniform(160, 200), rng.uniform(125, 150)
        inner = np.zeros(shape, dtype=bool)
        inner[sl] = r <= 0.65
        hu[kidney] = cortex_hu
        hu[kidney & inner] = medulla_hu
        label[kidney] = 1
        kidneys.append((c, ax, rot, side, kidney))

    # tumour: centre on the kidney surface (never on the hilum side) so it protrudes and touches the kidney
    c, ax, rot, side, kidney = kidneys[int(rng.integers(0, 2))]
    radius = float(rng.choice([rng.uniform(6, 10), rng.uniform(10, 25)]))  # some small, some large
    for _ in range(100):
        d = rng.normal(size=3)
        d /= np.linalg.norm(d)
        if d[2] * side > -0.2:  # lateral / anterior / posterior half, away from the hilum
            break
    surface = c + rot @ (d * ax)
    t_c = surface - rot @ (d * ax) / np.linalg.norm(d * ax) * radius * rng.uniform(0.0, 0.5)
    t_ax = radius * rng.uniform(0.8, 1.2, size=3)
    sl, m, r = cv.ellipsoid(t_c, t_ax, _rotation(rng.uniform(0, np.pi), 0.0))
    tumour = np.zeros(shape, dtype=bool)
    tumour[sl] = m
    if not (tumour & kidney).any():  # degenerate draw on very thin volumes: force overlap
        tumour |= ndimage.binary_dilation(kidney, iterations=1) & ~kidney
    # hypo-enhancing relative to cortex and medulla (as renal cell carcinoma in the nephrographic phase) but in the
    # liver's range; larger lesions get a darker necrotic core
    t_hu = rng.uniform(70, 110)
    hu[tumour] = t_hu + rng.normal(0, 12, size=int(tumour.sum()))  # heterogeneous lesion
    if radius > 12:
        core = np.zeros(shape, dtype=bool)
        core[sl] = m & (r < 0.5)
        hu[core & tumour] -= rng.uniform(25, 45)
    label[tumour] = 2

    # spine (cortical ring around cancellous core), aorta and vena cava in front of it
    sp_c = (0.0, spine_y + 10 * scale, rng.uniform(-4, 4))
    sl, m, r = cv.ellipsoid(sp_c, (big_z, 17 * scale, 19 * scale))
    hu[sl][m] = rng.uniform(400, 550)
    ring = m & (r > 0.8)
    hu[sl][ring] = rng.uniform(800, 1000)
    sl, m, _ = cv.ellipsoid((0.0, spine_y + 38 * scale, 0.0), (big_z, 12 * scale, 8 * scale))  # spinous process
    hu[sl][m] = rng.uniform(500, 900)
    sl, m, _ = cv.ellipsoid((0.0, spine_y - 15 * scale, 18 * scale), (big_z, 11, 11))
    hu[sl][m] = rng.uniform(180, 250)
    sl, m, _ = cv.ellipsoid((0.0, spine_y - 15 * scale, -20 * scale), (big_z, 9, 13))
    hu[sl][m] = rng.uniform(150, 190)

    # partial volume (blur ~0.6 mm in-plane, ~1 mm across slices, expressed in voxels) then noise, then quantise
    sigma = (1.0 / thick, 0.6 / pix + 0.3, 0.6 / pix + 0.3)
    hu = ndimage.gaussian_filter(hu, sigma=sigma, output=np.float32)
    hu += rng.normal(0, rng.uniform(15, 25), size=shape).astype(np.float32)
    image = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
    return image, label, kits19_affine(spacing)


def write_kits19(
    out_dir: Path,
    cases: int = 4,
    seed: int = 0,
    unlabelled: int = 0,
    size: str = "small",
    start_index: int = 0,
) -> list[Path]:
    """Write synthetic KiTS19 cases in the official layout.

    Case ``i`` is drawn from ``np.random.default_rng((seed, i))``, so it is the same whatever ``cases`` and
    ``start_index`` are (deterministic per seed and index).

    Args:
        out_dir: data folder; ``out_dir/case_XXXXX/`` folders are created.
        cases: number of cases to write (labelled + unlabelled).
        seed: random seed.
        unlabelled: the last ``unlabelled`` cases get no ``segmentation.nii.gz`` (like KiTS19 cases 210-299).
        size: ``"small"`` (fast: 32-44 slices of 128x128, ~3 x 2 x 2 mm) or ``"large"`` (60-100 slices of 512x512,
            ~3 x 0.78 x 0.78 mm).
        start_index: index of the first case (folder ``case_{start_index:05d}``).

    Returns:
        The case folders, in index order.
    """
    if cases < 0 or unlabelled < 0 or unlabelled > cases:
        raise ValueError(f"cases={cases}, unlabelled={unlabelled}: expected 0 <= unlabelled <= cases")
    if size not in _SIZES:
        raise ValueError(f"size='{size}': expected one of {sorted(_SIZES)}")
    out_dir = Path(out_dir)
    folders = []
    for k in range(cases):
        index = start_index + k
        rng = np.random.default_rng((seed, index))
        labelled = k < cases - unlabelled
        image, label, affine = synth_kits19_case(rng, size=size)  # unlabelled cases still hold kidneys + tumour
        folder = out_dir / f"case_{index:05d}"
        save_nifti(image, affine, folder / "imaging.nii.gz")
        if labelled:
            save_nifti(label, affine, folder / "segmentation.nii.gz")
        folders.append(folder)
    return folders
