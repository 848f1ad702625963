"""KiTS19-format phantoms from a generator written independently of ``segzoo.data.synthetic.kits19``: a test
instrument, so the demo recipe can be measured on data it was not tuned on (issue 25 item 1).

    python benchmarks/kits19_phantoms.py OUT --cases 24 --seed 0                         # training cases
    python benchmarks/kits19_phantoms.py OUT_TEST --cases 8 --seed 1 --start-index 100   # test cases

What is deliberately different from segzoo's generator (same layout: ``case_XXXXX/imaging.nii.gz`` +
``segmentation.nii.gz``, arrays ``(slices, H, W)``, labels 0 background / 1 kidney / 2 tumour):

- orientation: a proper RAS affine with an origin (not the KiTS19 "interpolated" release's axis-swapped one), slice
  index 0 cranial, 2.0-3.2 mm slices, 1.4-1.9 mm pixels on 160-192 pixels;
- shapes: a superelliptic body whose outline drifts along the slices, a fat / muscle-wall / viscera layering, psoas
  muscles beside the spine, kidneys as ellipsoids with a smooth radial harmonic perturbation and renal sinus fat
  carved out of the kidney label (segzoo labels the collecting system kidney), tumours as unions of 2-4 spheres
  grown from the kidney surface (radius 9-26 mm), bowel as random-walk tubes with a wall, a CT table under the body;
- intensity: one nephrographic-like appearance per case with its own draw (kidney 135-205 HU), tumour 45-110 HU below
  the kidney with a smooth texture, or (30%) heterogeneous with necrotic patches; visceral fat islands;
- noise: spatially correlated (white noise filtered with a 0.6-0.9 voxel gaussian, then rescaled to 10-28 HU), 40%
  stronger in the body centre than at its edge (photon starvation); image blurred by 0.5-0.9 voxel before the noise.

Case ``i`` is drawn from ``np.random.default_rng((seed, 7919, i))``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage


def _unit(rng: np.random.Generator, n: int = 1) -> np.ndarray:
    v = rng.normal(size=(n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


class _Grid:
    """World coordinates (mm, z cranial-positive, y posterior-positive, x patient-left-positive) of a (Z, Y, X) grid."""

    def __init__(self, shape: tuple[int, int, int], spacing: tuple[float, float, float]):
        self.shape, self.spacing = shape, np.asarray(spacing)
        # slice 0 is the most cranial: z decreases with the slice index
        self.z = -(np.arange(shape[0]) - (shape[0] - 1) / 2) * spacing[0]
        self.y = (np.arange(shape[1]) - (shape[1] - 1) / 2) * spacing[1]
        self.x = (np.arange(shape[2]) - (shape[2] - 1) / 2) * spacing[2]

    def box(self, centre: np.ndarray, reach: float) -> tuple[tuple[slice, ...], tuple[np.ndarray, ...]]:
        """Index slices of the axis-aligned box of half-width ``reach`` mm around ``centre`` and its offsets."""
        sl, offs = [], []
        for axis, c in zip((self.z, self.y, self.x), centre):
            inside = np.nonzero(np.abs(axis - c) <= reach)[0]
            if inside.size == 0:
                sl.append(slice(0, 0))
                offs.append(np.zeros(0))
                continue
            sl.append(slice(int(inside[0]), int(inside[-1]) + 1))
            offs.append(axis[inside[0] : inside[-1] + 1] - c)
        z, y, x = offs
        return tuple(sl), (z[:, None, None], y[None, :, None], x[None, None, :])

    def blob(
        self, centre, semi_axes, rng: np.random.Generator | None = None, bump: float = 0.0
    ) -> tuple[tuple[slice, ...], np.ndarray]:
        """Axis-aligned ellipsoid whose normalised radius is modulated by three random low-order harmonics."""
        semi = np.asarray(semi_axes, dtype=float)
        sl, (z, y, x) = self.box(np.asarray(centre, dtype=float), semi.max() * (1 + bump) + 1)
        r = np.sqrt((z / semi[0]) ** 2 + (y / semi[1]) ** 2 + (x / semi[2]) ** 2)
        if bump and rng is not None and r.size:
            d = np.stack(np.broadcast_arrays(z / semi[0], y / semi[1], x / semi[2])) / np.maximum(r, 1e-6)
            mod = np.zeros_like(r)
            for k, u in enumerate(_unit(rng, 3)):
                mod += np.cos((k + 2) * np.arccos(np.clip(np.tensordot(u, d, axes=1), -1, 1)) + rng.uniform(0, 6.3))
            r = r / (1 + bump * mod / 3)
        return sl, r <= 1.0


def _put(vol: np.ndarray, sl, mask: np.ndarray, value) -> None:
    view = vol[sl]
    view[mask] = value if np.ndim(value) == 0 else value[mask]


def phantom_case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One phantom: ``(image int16 (D, H, W) HU, label uint8 (D, H, W), RAS affine 4x4)``."""
    thick, pix = rng.uniform(2.0, 3.2), rng.uniform(1.4, 1.9)
    n_xy = int(rng.integers(160, 193))
    depth = int(round(rng.uniform(140, 185) / thick))
    g = _Grid((depth, n_xy, n_xy), (thick, pix, pix))
    hu = np.full(g.shape, -1010.0, dtype=np.float32)
    label = np.zeros(g.shape, dtype=np.uint8)

    # body: superellipse |x/a|^p + |y/b|^p <= 1, half-axes drifting along the slices; fat, muscle wall, viscera
    half_fov = n_xy * pix / 2
    a0 = min(rng.uniform(125, 160), half_fov - 8)
    b0 = min(a0 * rng.uniform(0.68, 0.82), half_fov - 20)
    p = rng.uniform(2.3, 3.2)
    drift = 1 + 0.06 * np.sin(g.z / rng.uniform(60, 120) + rng.uniform(0, 6.3))
    yy, xx = g.y[None, :, None], g.x[None, None, :]
    a, b = a0 * drift[:, None, None], b0 * drift[:, None, None]
    rho = (np.abs(xx / a) ** p + np.abs(yy / b) ** p) ** (1 / p)  # (Z, Y, X), 1 on the skin
    fat = rng.uniform(10, 28) / a0
    wall = rng.uniform(7, 12) / a0
    hu[rho <= 1] = rng.uniform(-115, -75)
    hu[rho <= 1 - fat] = rng.uniform(40, 62)
    inside = rho <= 1 - fat - wall
    hu[inside] = rng.uniform(22, 42)
    # CT table: a curved band under the back
    ty = b0 * 1.0 + rng.uniform(8, 20)
    table = (np.abs(yy - ty - 0.0008 * xx**2) < 3) & (np.abs(xx) < half_fov * 0.9)
    hu[np.broadcast_to(table, g.shape)] = rng.uniform(-300, -150)
    # visceral fat islands
    for _ in range(int(rng.integers(6, 14))):
        c = (rng.uniform(g.z[-1], g.z[0]), rng.uniform(-0.6, 0.2) * b0, rng.uniform(-0.6, 0.6) * a0)
        sl, m = g.blob(c, rng.uniform(8, 25, size=3), rng, 0.2)
        _put(hu, sl, m & inside[sl], rng.uniform(-100, -70))

    # spine and psoas (posterior midline), aorta and IVC in front of the spine
    sy = b0 * rng.uniform(0.42, 0.52)
    r_vb = rng.uniform(16, 22)
    vb = (yy - sy) ** 2 + xx**2
    bone = np.broadcast_to(vb <= r_vb**2, g.shape)
    hu[bone] = rng.uniform(220, 380)
    hu[np.broadcast_to((vb <= r_vb**2) & (vb >= (r_vb - 2.5) ** 2), g.shape)] = rng.uniform(600, 950)
    lamina = (np.abs(xx) < 7) & (yy > sy + r_vb) & (yy < sy + r_vb + 30)
    hu[np.broadcast_to(lamina, g.shape)] = rng.uniform(500, 800)
    psoas_hu = rng.uniform(42, 60)
    for side in (-1, 1):
        # psoas widens caudally
        rad = rng.uniform(8, 12) + rng.uniform(4, 10) * (g.z[0] - g.z) / max(g.z[0] - g.z[-1], 1)
        m = ((yy - sy + 4) / 1.1) ** 2 + (xx - side * (r_vb + rad[:, None, None] * 0.9)) ** 2 <= rad[:, None, None] ** 2
        hu[m & ~bone] = psoas_hu
    aorta_hu = rng.uniform(150, 240)
    hu[np.broadcast_to((yy - sy + r_vb + 13) ** 2 + (xx - 14) ** 2 <= rng.uniform(9, 13) ** 2, g.shape)] = aorta_hu
    m_ivc = ((yy - sy + r_vb + 12) / 0.8) ** 2 + (xx + 22) ** 2 <= rng.uniform(9, 12) ** 2
    hu[np.broadcast_to(m_ivc, g.shape)] = rng.uniform(110, 170)

    # liver (patient right = image columns of negative x, cranial slices) and spleen (left, posterior, cranial)
    liver_hu = rng.uniform(85, 130)
    for _ in range(3):
        c = (g.z[0] - rng.uniform(0, 40), rng.uniform(-0.3, 0.1) * b0, -rng.uniform(0.35, 0.55) * a0)
        sl, m = g.blob(c, (rng.uniform(45, 70), rng.uniform(40, 60), rng.uniform(35, 55)), rng, 0.15)
        _put(hu, sl, m & inside[sl], liver_hu)
    sl, m = g.blob(
        (g.z[0] - rng.uniform(10, 45), sy - rng.uniform(0, 20), rng.uniform(0.5, 0.65) * a0),
        (rng.uniform(30, 50), rng.uniform(22, 35), rng.uniform(14, 22)),
        rng,
        0.2,
    )
    _put(hu, sl, m & inside[sl], rng.uniform(95, 135))

    # kidneys: posterior, beside the psoas, long axis along z; renal sinus fat at the medial hilum (background)
    kidney_hu = rng.uniform(135, 205)
    kidneys = []
    for side in (-1, 1):
        c = np.array([rng.uniform(-25, 25), sy - rng.uniform(0, 15), side * (r_vb + rng.uniform(38, 58))], dtype=float)
        semi = np.array([rng.uniform(42, 58), rng.uniform(20, 28), rng.uniform(22, 30)])
        sl, m = g.blob(c, semi, rng, 0.12)
        k = np.zeros(g.shape, dtype=bool)
        k[sl] = m
        ssl, sm = g.blob(c - np.array([0, 0, side * semi[2] * 0.45]), semi * [0.45, 0.35, 0.45])
        sinus = np.zeros(g.shape, dtype=bool)
        sinus[ssl] = sm
        hu[k] = kidney_hu + rng.normal(0, 4)
        hu[k & sinus] = rng.uniform(-90, -40)
        k &= ~sinus
        label[k] = 1
        kidneys.append((c, semi, side, k))

    # bowel: random-walk tubes with a soft-tissue wall, gas / fluid / positive-contrast lumen
    for _ in range(int(rng.integers(3, 7))):
        pos = np.array([rng.uniform(g.z[-1], g.z[0]), rng.uniform(-0.7, -0.1) * b0, rng.uniform(-0.5, 0.6) * a0])
        step = _unit(rng)[0] * 6
        lumen = rng.choice([rng.uniform(-950, -700), rng.uniform(0, 25), rng.uniform(180, 320)], p=[0.45, 0.35, 0.2])
        rad = rng.uniform(7, 14)
        for _ in range(int(rng.integers(6, 16))):
            sl, m = g.blob(pos, (rad, rad, rad))
            free = (label[sl] == 0) & inside[sl]
            _put(hu, sl, m & free, rng.uniform(30, 50))
            sl, m = g.blob(pos, (rad - 2.5,) * 3)
            _put(hu, sl, m & (label[sl] == 0) & inside[sl], lumen)
            step = 0.7 * step + 0.3 * _unit(rng)[0] * 6
            pos = pos + step

    # tumours: 1 (2 with p 0.25) lobulated unions of spheres grown from a kidney's surface
    for t in range(1 + int(rng.random() < 0.25)):
        c, semi, side, k = kidneys[int(rng.integers(2))]
        while True:
            d = _unit(rng)[0]
            if d[2] * side > -0.1:  # away from the hilum
                break
        radius = rng.uniform(9, 26) * (0.7 if t else 1.0)
        surf = c + d * semi * 0.95  # d is a unit vector: d * semi lies on the ellipsoid
        centre = surf + d * radius * rng.uniform(-0.6, 0.3)
        tum = np.zeros(g.shape, dtype=bool)
        for _ in range(int(rng.integers(2, 5))):
            off = _unit(rng)[0] * radius * rng.uniform(0, 0.5)
            sl, m = g.blob(centre + off, radius * rng.uniform(0.6, 1.0, size=3))
            tum[sl] |= m
        if not (ndimage.binary_dilation(tum) & k).any():
            continue  # a draw off the kidney: no tumour rather than a floating one
        vox = np.nonzero(tum)
        base = kidney_hu - rng.uniform(45, 110)
        tex = ndimage.gaussian_filter(rng.normal(size=tum.shape).astype(np.float32), 2.0)
        tex = tex / (tex[vox].std() + 1e-6)
        hu[tum] = base + rng.uniform(6, 16) * tex[vox]
        if rng.random() < 0.3:  # heterogeneous: necrotic patches
            patches = tum & (tex < rng.uniform(-0.8, 0.0))
            hu[patches] = rng.uniform(5, 35) + 5 * tex[patches]
        label[tum] = 2

    # blur (partial volume), then correlated noise, stronger in the body centre
    hu = ndimage.gaussian_filter(hu, sigma=rng.uniform(0.5, 0.9), output=np.float32)
    noise = ndimage.gaussian_filter(rng.normal(size=g.shape).astype(np.float32), rng.uniform(0.6, 0.9))
    noise *= rng.uniform(10, 28) / noise.std()
    hu += noise * (1.0 + 0.4 * np.clip(1 - rho, 0, 1)).astype(np.float32)
    image = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)

    affine = np.zeros((4, 4))
    affine[2, 0] = -thick  # slice index -> inferior
    affine[1, 1] = -pix  # row -> posterior
    affine[0, 2] = -pix  # column -> patient left
    affine[:3, 3] = rng.uniform(-200, 200, size=3)
    affine[3, 3] = 1
    return image, label, affine


def write_phantoms(out: str | Path, cases: int, seed: int = 0, start_index: int = 0) -> list[Path]:
    """Write ``cases`` phantoms as ``out/case_XXXXX/{imaging,segmentation}.nii.gz``; returns the case folders."""
    folders = []
    for i in range(start_index, start_index + cases):
        image, label, affine = phantom_case(np.random.default_rng((seed, 7919, i)))
        folder = Path(out) / f"case_{i:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(image, affine), folder / "imaging.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), folder / "segmentation.nii.gz")
        folders.append(folder)
    return folders


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("--cases", type=int, default=24)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--start-index", type=int, default=0)
    args = p.parse_args(argv)
    for folder in write_phantoms(args.out, args.cases, args.seed, args.start_index):
        lab = np.asarray(nib.load(folder / "segmentation.nii.gz").dataobj)
        print(f"{folder.name}: {lab.shape}, kidney {(lab == 1).sum()} voxels, tumour {(lab == 2).sum()} voxels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
