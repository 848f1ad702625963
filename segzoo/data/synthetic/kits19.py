"""Domain-randomised synthetic KiTS19 cases written in the official layout (``case_XXXXX/imaging.nii.gz`` +
``segmentation.nii.gz``).

Reference: Heller et al., "The KiTS19 challenge data" (arXiv:1904.00445); used by Zhao et al., "Multi Scale Supervised
3D U-Net for Kidney and Tumor Segmentation" (KiTS19). The generator is the embedded default data of segzoo: every
command runs on it on a fresh machine. Layout, dtypes and affine convention follow the KiTS19 release:

- arrays are ``(slices, H, W)``; image int16 Hounsfield units, label uint8 (0 background, 1 kidney, 2 tumour);
- the affine is non-RAS with the slice axis first, e.g. ``[[0, 0, -dx, 0], [0, -dy, 0, 0], [-dz, 0, 0, 0], [0, 0, 0, 1]]``
  (array axis 0 carries the slice thickness ``dz``, axes 1 and 2 the in-plane spacing).

So that a model trained on it is not tuned to one appearance, every case draws its appearance from a
:class:`KiTS19Regime` (ranges, not values): contrast phase (arterial / nephrographic / delayed, each with its own HU
table), noise level and texture, in-plane spacing and slice thickness, field of view and body size, kidney count
(1-2), position, size and shape, tumour count (1-3), size (down to < 1 cm), appearance (solid, cystic,
heterogeneous) and position (exophytic, endophytic), simple renal cysts (labelled kidney, as in KiTS19),
distractors whose HU overlap kidney and tumour (liver, spleen, contrast-filled bowel, aorta, vena cava, renal
vessels, spine, gas) and streak and cupping (beam-hardening) artefacts. Named regimes (:data:`REGIMES`) split these
ranges so a model can be trained on some and tested on held-out ones (another contrast phase, thicker slices,
smaller tumours); see ``docs/data/kits19.md``.

The anatomy is drawn in millimetres. "small" (fast, laptop scale) renders the kidney region: 130-170 mm of slices
around the kidneys, a field of view of the body width x 1.05-1.35 on at most 192 x 192 pixels (2.5x the regime's
in-plane spacing, coarser where the field of view needs it). "large" is a real-size abdominal CT as the scanner
writes it: the field of view is set to the body the same way (body width x 1.05-1.35) on 512 x 512 pixels, so the
in-plane spacing is field of view / 512 (0.44-0.79 mm), and the slices cover the whole abdomen (320-480 mm from
above the liver dome to the pelvis at the regime's slice thickness), so the kidney region is a fraction of the
slices; below it the lower abdomen and pelvis hold bowel loops, the bladder and the iliac bones (what a body crop
keeps and a coarse-to-fine pass must learn to ignore).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from segzoo.data.io import save_nifti

SIZES = ("small", "large")
#: contrast phase -> HU ranges (mean of the structure, drawn per case)
PHASES: dict[str, dict[str, tuple[float, float]]] = {
    # late arterial / corticomedullary: bright cortex, dark medulla, hypervascular tumours can be brighter than
    # the medulla, spleen mottled
    "arterial": {
        "cortex": (170, 280),
        "medulla": (60, 110),
        "tumour": (70, 190),
        "aorta": (250, 450),
        "ivc": (80, 140),
        "liver": (55, 90),
        "spleen": (90, 170),
        "pelvis": (0, 20),
    },
    # nephrographic / portal venous: homogeneous kidney, hypo-enhancing tumour in the liver's range
    "nephrographic": {
        "cortex": (140, 220),
        "medulla": (125, 205),
        "tumour": (60, 130),
        "aorta": (150, 230),
        "ivc": (130, 200),
        "liver": (90, 130),
        "spleen": (100, 140),
        "pelvis": (0, 20),
    },
    # delayed / excretory: washed-out kidney, contrast in the collecting system, flat vessels
    "delayed": {
        "cortex": (95, 150),
        "medulla": (95, 150),
        "tumour": (45, 100),
        "aorta": (100, 150),
        "ivc": (100, 150),
        "liver": (70, 110),
        "spleen": (75, 115),
        "pelvis": (300, 900),
    },
}


@dataclass(frozen=True)
class KiTS19Regime:
    """Ranges a synthetic KiTS19 case draws its appearance from.

    Args:
        phases: contrast phases drawn uniformly (keys of :data:`PHASES`).
        slice_thickness: slice thickness range (mm).
        inplane_spacing: in-plane spacing range (mm) that "small" cases draw 2.5x coarser ("large" cases take field of
            view / 512, as a scanner does).
        body_scale: body size factor range (1 = a 240 x 200 mm abdomen).
        single_kidney_prob: probability of one kidney (nephrectomy / agenesis).
        tumour_radius: tumour radius range (mm); a radius < 5 mm is a lesion under 1 cm.
        tumour_count: ``(min, max)`` tumours per case (every labelled KiTS19 case has one at least).
        cystic_prob: probability that a tumour is cystic (fluid core, enhancing rim).
        heterogeneous_prob: probability that a solid tumour has a necrotic core and a strong texture.
        exophytic_prob: probability that a tumour bulges out of the kidney (else it sits inside it).
        cyst_count: ``(min, max)`` simple renal cysts per case (labelled kidney).
        noise_sigma: gaussian noise range (HU).
        texture_sigma: amplitude range (HU) of a smooth texture field over the body.
        oral_contrast_prob: probability of contrast-filled bowel loops (150-400 HU).
        streak_prob: probability of streak artefacts from a dense point.
        cupping: beam-hardening cupping range (HU darker in the body centre).
    """

    phases: tuple[str, ...] = ("arterial", "nephrographic", "delayed")
    slice_thickness: tuple[float, float] = (1.0, 5.0)
    inplane_spacing: tuple[float, float] = (0.5, 1.0)
    body_scale: tuple[float, float] = (0.85, 1.2)
    single_kidney_prob: float = 0.1
    tumour_radius: tuple[float, float] = (3.0, 30.0)
    tumour_count: tuple[int, int] = (1, 3)
    cystic_prob: float = 0.15
    heterogeneous_prob: float = 0.4
    exophytic_prob: float = 0.6
    cyst_count: tuple[int, int] = (0, 2)
    noise_sigma: tuple[float, float] = (8.0, 35.0)
    texture_sigma: tuple[float, float] = (0.0, 12.0)
    oral_contrast_prob: float = 0.4
    streak_prob: float = 0.3
    cupping: tuple[float, float] = (0.0, 30.0)

    def __post_init__(self) -> None:
        bad = [p for p in self.phases if p not in PHASES]
        if bad or not self.phases:
            raise ValueError(
                f"KiTS19Regime: phases {bad or '()'} unknown; expected a non-empty subset of {list(PHASES)}"
            )
        for name in ("slice_thickness", "inplane_spacing", "body_scale", "tumour_radius", "noise_sigma"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ValueError(f"KiTS19Regime: {name}=({lo}, {hi}) must satisfy 0 < low <= high")
        if not 1 <= self.tumour_count[0] <= self.tumour_count[1]:
            raise ValueError(f"KiTS19Regime: tumour_count={self.tumour_count} must satisfy 1 <= min <= max")


_TRAIN = KiTS19Regime(phases=("arterial", "nephrographic"), slice_thickness=(1.5, 4.0), tumour_radius=(6.0, 30.0))
#: named regimes: "all" draws everything; "train" leaves out what the three "heldout_*" regimes test
REGIMES: dict[str, KiTS19Regime] = {
    "all": KiTS19Regime(),
    "train": _TRAIN,
    "heldout_phase": dataclasses.replace(_TRAIN, phases=("delayed",)),
    "heldout_thickness": dataclasses.replace(_TRAIN, slice_thickness=(4.5, 5.0)),
    "heldout_small_tumour": dataclasses.replace(_TRAIN, tumour_radius=(3.0, 6.0)),
}
#: "heldout" cycles through the held-out regimes case by case
HELDOUT = ("heldout_phase", "heldout_thickness", "heldout_small_tumour")


def get_regime(regime: str | KiTS19Regime) -> KiTS19Regime:
    """A :class:`KiTS19Regime` from itself or a name in :data:`REGIMES`."""
    if isinstance(regime, KiTS19Regime):
        return regime
    if regime not in REGIMES:
        names = sorted(REGIMES) + ["heldout", "single_appearance"]
        raise ValueError(f"regime='{regime}': expected one of {names} or a KiTS19Regime")
    return REGIMES[regime]


def _rotation(angle_z: float, angle_y: float) -> np.ndarray:
    """Rotation about the slice axis (in-plane) then a tilt in the (slice, row) plane; acts on (z, y, x) vectors."""
    cz, sz = np.cos(angle_z), np.sin(angle_z)
    cy, sy = np.cos(angle_y), np.sin(angle_y)
    in_plane = np.array([[1, 0, 0], [0, cz, -sz], [0, sz, cz]])
    tilt = np.array([[cy, -sy, 0], [sy, cy, 0], [0, 0, 1]])
    return tilt @ in_plane


class _Canvas:
    """Millimetre coordinates of a ``(Z, Y, X)`` grid; shapes are evaluated only inside their bounding box."""

    def __init__(self, shape: tuple[int, int, int], spacing: tuple[float, float, float], z0: float | None = None):
        self.shape = shape
        self.spacing = np.asarray(spacing, dtype=np.float64)
        self.axes = [(np.arange(n) - (n - 1) / 2.0) * s for n, s in zip(shape, spacing)]  # volume centre at 0 mm
        if z0 is not None:  # first slice at z0 mm (the kidney region's centre stays at 0)
            self.axes[0] = z0 + np.arange(shape[0]) * float(spacing[0])

    def ellipsoid(
        self,
        center,
        semi_axes,
        rotation: np.ndarray | None = None,
        wobble: tuple[np.random.Generator, float] | None = None,
    ) -> tuple[tuple[slice, ...], np.ndarray, np.ndarray]:
        """``(bbox slices, boolean mask inside bbox, normalised radius r in bbox)`` of an ellipsoid (mm).

        ``wobble=(rng, amplitude)`` perturbs the radius by a smooth random field (lobulated, irregular outline).
        """
        center = np.asarray(center, dtype=np.float64)
        semi = np.asarray(semi_axes, dtype=np.float64)
        reach = semi.max() * (1.0 + (wobble[1] if wobble else 0.0))
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
        if wobble is not None and r.size:
            rng, amp = wobble
            r = r * (1.0 + amp * _smooth_field(rng, r.shape, max(r.shape) / 3.0))
        return sl, r <= 1.0, r


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], corr: float) -> np.ndarray:
    """Smooth random field of ``shape`` in [-1, 1] with correlation length ~ ``corr`` voxels (drawn coarse, zoomed)."""
    factor = max(corr, 1.0)
    coarse = tuple(max(2, int(np.ceil(n / factor)) + 1) for n in shape)
    field = rng.uniform(-1.0, 1.0, size=coarse).astype(np.float32)
    zoomed = ndimage.zoom(field, [n / c for n, c in zip(shape, coarse)], order=1, mode="nearest", grid_mode=True)
    out = np.zeros(shape, dtype=np.float32)
    sl = tuple(slice(0, min(a, b)) for a, b in zip(shape, zoomed.shape))
    out[sl] = zoomed[sl]
    return out


def _grow(sl: tuple[slice, ...], n: int, shape: tuple[int, ...]) -> tuple[slice, ...]:
    """``sl`` widened by ``n`` voxels on each side, inside ``shape``."""
    return tuple(slice(max(s.start - n, 0), min(s.stop + n, size)) for s, size in zip(sl, shape))


def kits19_affine(spacing: tuple[float, float, float]) -> np.ndarray:
    """KiTS19 "interpolated" affine for voxel sizes ``(slice, row, column)`` in mm: slice axis first, non-RAS."""
    dz, dy, dx = spacing
    return np.array(
        [[0.0, 0.0, -dx, 0.0], [0.0, -dy, 0.0, 0.0], [-dz, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]], dtype=np.float64
    )


def _u(rng: np.random.Generator, lo_hi: tuple[float, float]) -> float:
    return float(rng.uniform(*lo_hi))


def _geometry(
    rng: np.random.Generator, reg: KiTS19Regime, size: str
) -> tuple[tuple[int, int, int], tuple, float, tuple[float, float, float] | None]:
    """Grid shape, spacing (mm, array order), body scale and (large) the slice layout of one case.

    The slice layout is ``(z0, z_lo, z_hi)`` in mm: the first slice's position and the kidney region's ends (the
    kidneys sit around 0); ``None`` for "small", whose slices are the kidney region.
    """
    body = _u(rng, reg.body_scale)
    thick = _u(rng, reg.slice_thickness)
    pix = _u(rng, reg.inplane_spacing)
    if size == "large":
        fov = 2 * 125 * body * rng.uniform(1.05, 1.35)  # display field of view set to the body, as in "small"
        n_xy = 512
        pix = fov / n_xy
    else:
        pix *= 2.5
        fov = 2 * 125 * body * rng.uniform(1.05, 1.35)  # body width plus a margin
        n_xy = int(np.clip(round(fov / pix), 96, 192))
        pix = max(pix, fov / n_xy)
    extent = rng.uniform(130.0, 170.0)  # cranio-caudal coverage (mm) around the kidneys
    if size != "large":
        depth = max(int(round(extent / thick)), 16)
        return (depth, n_xy, n_xy), (thick, pix, pix), body, None
    # the whole abdomen: from 0-60 mm above the kidney region's top (liver dome) down through the pelvis
    coverage = rng.uniform(320.0, 480.0)
    above = rng.uniform(0.0, 60.0)
    depth = int(round(coverage / thick))
    z_hi = extent / 2
    z0 = z_hi + above - (depth - 1) * thick
    return (depth, n_xy, n_xy), (thick, pix, pix), body, (z0, -extent / 2, z_hi)


def _lower_abdomen(
    rng: np.random.Generator,
    cv: _Canvas,
    hu: np.ndarray,
    scale: float,
    z_lo: float,
    oral_contrast: bool,
    bladder_hu: float,
) -> None:
    """Below the kidney region of a "large" case: bowel loops (gas, and contrast when the case has oral contrast),
    the bladder (urine, or excreted contrast in the delayed phase) and the iliac wings, drawn into ``hu``."""
    bottom = float(cv.axes[0][0])
    length = z_lo - bottom
    if length <= 0:
        return
    for _ in range(int(rng.integers(4, 8)) * max(1, int(length // 80))):
        c = (rng.uniform(bottom, z_lo), rng.uniform(-75, 10) * scale, rng.uniform(-75, 75) * scale)
        ax = (rng.uniform(8, 22), rng.uniform(5, 14), rng.uniform(6, 18))
        rot = _rotation(rng.uniform(0, np.pi), rng.uniform(-0.5, 0.5))
        sl, m, _ = cv.ellipsoid(c, ax, rot, (rng, 0.2))
        kind = rng.random()
        hu[sl][m] = (
            rng.uniform(-900, -600)
            if kind < 0.4
            else (rng.uniform(150, 400) if oral_contrast and kind < 0.7 else rng.uniform(20, 60))
        )
    # pelvis: bladder low and anterior, iliac wings lateral-posterior above it
    pelvis = bottom + rng.uniform(40.0, 90.0)
    sl, m, _ = cv.ellipsoid(
        (pelvis, rng.uniform(-55, -30) * scale, rng.uniform(-10, 10)),
        (rng.uniform(25, 40), rng.uniform(25, 40) * scale, rng.uniform(35, 55) * scale),
        wobble=(rng, 0.08),
    )
    hu[sl][m] = bladder_hu
    for side in (-1.0, 1.0):
        c = (pelvis + rng.uniform(60, 100), rng.uniform(20, 45) * scale, side * rng.uniform(75, 95) * scale)
        ax = (rng.uniform(40, 60), rng.uniform(8, 14) * scale, rng.uniform(30, 42) * scale)
        sl, m, r = cv.ellipsoid(c, ax, _rotation(side * rng.uniform(0.3, 0.7), 0.0))
        hu[sl][m] = rng.uniform(250, 450)
        hu[sl][m & (r > 0.75)] = rng.uniform(700, 1100)  # cortical rim


#: the generator before domain randomisation (one appearance: nephrographic-like HU, ~3 x 2 x 2 mm, one hypo-enhancing
#: tumour of radius 6-25 mm, two kidneys, liver, bowel gas, spine, aorta and vena cava); regime "single_appearance"
SINGLE_APPEARANCE = "single_appearance"
# size -> (slice-count range, in-plane pixels, in-plane spacing range mm, slice thickness range mm)
_SINGLE_APPEARANCE_SIZES = {
    "small": ((32, 44), 128, (1.9, 2.1), (2.9, 3.1)),
    "large": ((60, 100), 512, (0.74, 0.82), (2.9, 3.1)),
}


def _single_appearance_case(rng: np.random.Generator, size: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One case of segzoo's earlier single-appearance generator (commit b3e466f), kept verbatim as a regime so the
    demo recipe is measured on it too (issue 25): the same draws give the same bytes as that commit's
    ``synth_kits19_case``."""
    (zlo, zhi), n_xy, (slo, shi), (tlo, thi) = _SINGLE_APPEARANCE_SIZES[size]
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


def synth_kits19_case(
    rng: np.random.Generator, size: str = "small", regime: str | KiTS19Regime = "all"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw one synthetic case.

    Args:
        rng: random generator (all randomness of the case comes from it).
        size: ``"small"`` (the kidney region, <= 192 x 192 pixels per slice) or ``"large"`` (a real-size
            abdominal CT: 512 x 512 pixels over a field of view set to the body, 320-480 mm of slices).
        regime: a :class:`KiTS19Regime`, a name in :data:`REGIMES`, or ``"single_appearance"`` (the earlier
            generator's one appearance, :data:`SINGLE_APPEARANCE`; its "small" cases are 32-44 slices of 128 x 128).

    Returns:
        ``(image int16 (D, H, W), label uint8 (D, H, W), affine 4x4)``.
    """
    if size not in SIZES:
        raise ValueError(f"size='{size}': expected one of {list(SIZES)}")
    if regime == SINGLE_APPEARANCE:
        return _single_appearance_case(rng, size)
    reg = get_regime(regime)
    shape, spacing, scale, layout = _geometry(rng, reg, size)
    cv = _Canvas(shape, spacing, None if layout is None else layout[0])
    phase = PHASES[reg.phases[int(rng.integers(len(reg.phases)))]]
    hu_of = {k: _u(rng, v) for k, v in phase.items()}

    hu = np.full(shape, -1000.0, dtype=np.float32)
    label = np.zeros(shape, dtype=np.uint8)
    big_z = 10_000.0  # "infinite" extent along the slice axis for cylinders
    z_lo, z_hi = (cv.axes[0][0], cv.axes[0][-1]) if layout is None else layout[1:]  # the kidney region

    # body: fat ellipse with a soft-tissue core (rows = anterior->posterior, columns = right->left)
    body_ax = np.array([big_z, rng.uniform(90, 110) * scale, rng.uniform(115, 130) * scale])
    sl, m, _ = cv.ellipsoid((0, rng.uniform(-10, 10), rng.uniform(-10, 10)), body_ax)
    hu[sl][m] = rng.uniform(-120, -80)
    core = body_ax * np.array([1.0, rng.uniform(0.72, 0.86), rng.uniform(0.75, 0.88)])
    sl, m, _ = cv.ellipsoid((0, 0, 0), core)
    hu[sl][m] = rng.uniform(30, 50)
    body_mask = np.zeros(shape, dtype=bool)
    sl, m, _ = cv.ellipsoid((0, 0, 0), body_ax)
    body_mask[sl] = m

    spine_y = rng.uniform(45, 60) * scale
    # liver (patient's right = image left, upper slices) and spleen (left, posterior-lateral): HU overlap tumour
    # and kidney depending on the phase
    liver_c = (z_hi - rng.uniform(-10, 30), rng.uniform(-25, 0) * scale, rng.uniform(-65, -40) * scale)
    liver_ax = (rng.uniform(55, 85), rng.uniform(50, 70) * scale, rng.uniform(50, 70) * scale)
    sl, m, _ = cv.ellipsoid(liver_c, liver_ax, _rotation(rng.uniform(-0.3, 0.3), 0.0), (rng, 0.1))
    hu[sl][m] = hu_of["liver"]
    spleen_c = (z_hi - rng.uniform(0, 50), spine_y - rng.uniform(0, 25), rng.uniform(60, 85) * scale)
    spleen_ax = (rng.uniform(35, 55), rng.uniform(25, 40), rng.uniform(15, 25))
    sl, m, _ = cv.ellipsoid(spleen_c, spleen_ax, _rotation(rng.uniform(-0.6, 0.0), 0.0), (rng, 0.15))
    hu[sl][m] = hu_of["spleen"]

    # bowel: gas pockets and (oral contrast) bright loops, anterior
    for _ in range(int(rng.integers(2, 6))):
        c = (rng.uniform(z_lo, z_hi), rng.uniform(-75, -30) * scale, rng.uniform(-45, 60) * scale)
        sl, m, _ = cv.ellipsoid(c, (rng.uniform(8, 20), rng.uniform(5, 12), rng.uniform(6, 15)))
        hu[sl][m] = rng.uniform(-900, -600)
    oral_contrast = rng.random() < reg.oral_contrast_prob
    if oral_contrast:
        for _ in range(int(rng.integers(3, 9))):
            c = (rng.uniform(z_lo, z_hi), rng.uniform(-60, 10) * scale, rng.uniform(-55, 70) * scale)
            ax = (rng.uniform(6, 18), rng.uniform(5, 10), rng.uniform(5, 14))
            sl, m, _ = cv.ellipsoid(c, ax, _rotation(rng.uniform(0, np.pi), rng.uniform(-0.5, 0.5)), (rng, 0.2))
            hu[sl][m] = rng.uniform(150, 400)

    if layout is not None:
        _lower_abdomen(rng, cv, hu, scale, z_lo, oral_contrast, hu_of["pelvis"])

    # kidneys: bean = ellipsoid minus a medial hilum notch, irregular outline, cortex / medulla / renal pelvis
    sides = [-1.0, 1.0]
    if rng.random() < reg.single_kidney_prob:
        sides = [sides[int(rng.integers(2))]]
    kidneys = []
    aorta_x, ivc_x = rng.uniform(10, 22) * scale, -rng.uniform(15, 25) * scale
    for side in sides:
        c = np.array(
            [rng.uniform(-20, 20), spine_y - rng.uniform(0, 18), side * rng.uniform(50, 72) * scale], dtype=np.float64
        )
        ax = np.array([rng.uniform(40, 58), rng.uniform(20, 30), rng.uniform(22, 32)]) * rng.uniform(0.85, 1.1)
        rot = _rotation(side * rng.uniform(0.1, 0.6), rng.uniform(-0.3, 0.3))
        sl, m, r = cv.ellipsoid(c, ax, rot, (rng, 0.06))
        hilum_c = c - rot @ np.array([0.0, 0.0, side * ax[2] * 0.95])
        hsl, hm, _ = cv.ellipsoid(hilum_c, ax * np.array([0.45, 0.55, 0.5]), rot)
        kidney = np.zeros(shape, dtype=bool)
        kidney[sl] = m
        kidney[hsl] &= ~hm
        parts, n_parts = ndimage.label(kidney[sl])
        if n_parts > 1:  # the notch can cut off a sliver: keep the kidney in one piece
            kidney[sl] = parts == 1 + int(np.argmax(np.bincount(parts.ravel())[1:]))
        inner = np.zeros(shape, dtype=bool)
        inner[sl] = r <= rng.uniform(0.55, 0.72)
        hu[kidney] = hu_of["cortex"] + rng.normal(0, 8)
        hu[kidney & inner] = hu_of["medulla"] + rng.normal(0, 8)
        # renal pelvis / collecting system at the hilum (urine, or contrast in the delayed phase), labelled kidney
        psl, pm, _ = cv.ellipsoid(c - rot @ np.array([0.0, 0.0, side * ax[2] * 0.35]), ax * [0.35, 0.2, 0.25], rot)
        pelvis = np.zeros(shape, dtype=bool)
        pelvis[psl] = pm
        pelvis &= kidney
        hu[pelvis] = hu_of["pelvis"]
        label[kidney] = 1
        # renal vein to the vena cava and artery to the aorta: bright tubes touching the kidney at the hilum
        for target_x, key, rad in ((ivc_x, "ivc", rng.uniform(4, 7)), (aorta_x, "aorta", rng.uniform(2.5, 4.5))):
            p0, p1 = hilum_c, np.array([c[0] + rng.uniform(-8, 8), spine_y - 15 * scale, target_x])
            n_seg = 8
            for t in np.linspace(0.0, 1.0, n_seg):
                pc = p0 + t * (p1 - p0)
                sl2, m2, _ = cv.ellipsoid(pc, (rad, rad, max(rad, np.linalg.norm(p1 - p0) / n_seg)))
                hu[sl2][m2 & (label[sl2] == 0)] = hu_of[key]
        kidneys.append((c, ax, rot, side, kidney))

    # simple renal cysts (water, labelled kidney as in KiTS19): the cystic look without being tumour
    for _ in range(int(rng.integers(reg.cyst_count[0], reg.cyst_count[1] + 1))):
        c, ax, rot, side, kidney = kidneys[int(rng.integers(len(kidneys)))]
        d = rng.normal(size=3)
        d /= np.linalg.norm(d)
        cc = c + rot @ (d * ax * rng.uniform(0.4, 1.0))
        rad = rng.uniform(3, 14)
        sl, m, _ = cv.ellipsoid(cc, (rad, rad, rad))
        cyst = np.zeros(shape, dtype=bool)
        cyst[sl] = m
        if not (cyst & kidney).any():  # fell into the hilum notch: not a renal cyst
            continue
        hu[cyst] = rng.uniform(-5, 20)
        label[cyst] = 1

    # tumours: on / in a kidney, exophytic or endophytic, solid / heterogeneous / cystic
    n_tumours = int(rng.integers(reg.tumour_count[0], reg.tumour_count[1] + 1))
    for k in range(n_tumours):
        c, ax, rot, side, kidney = kidneys[int(rng.integers(len(kidneys)))]
        radius = _u(rng, reg.tumour_radius)
        if k > 0:
            radius = min(radius, _u(rng, reg.tumour_radius))  # further lesions tend to be smaller
        for _ in range(100):
            d = rng.normal(size=3)
            d /= np.linalg.norm(d)
            if d[2] * side > -0.2:  # lateral / anterior / posterior half, away from the hilum
                break
        surface = c + rot @ (d * ax)
        inward = -(rot @ (d * ax)) / np.linalg.norm(d * ax)
        if rng.random() < reg.exophytic_prob:
            depth = radius * rng.uniform(-0.4, 0.5)  # centre up to 0.4 r outside the surface: bulges out
        else:
            depth = radius * rng.uniform(0.6, 1.1) + 2.0  # centre inside: mostly within the kidney
        t_ax = radius * rng.uniform(0.8, 1.2, size=3)
        t_rot = _rotation(rng.uniform(0, np.pi), rng.uniform(-0.5, 0.5))
        for _attempt in range(4):  # a renal tumour touches its kidney: move a detached draw inwards
            sl, m, r = cv.ellipsoid(surface + inward * depth, t_ax, t_rot, (rng, 0.12))
            tumour = np.zeros(shape, dtype=bool)
            tumour[sl] = m
            if not tumour.any():  # below the grid resolution: the nearest voxel
                t_c = surface + inward * depth
                idx = tuple(int(np.clip(np.searchsorted(a, v), 0, n - 1)) for a, v, n in zip(cv.axes, t_c, shape))
                tumour[idx] = True
            if (tumour[_grow(sl, 1, shape)] & kidney[_grow(sl, 1, shape)]).any() or (
                ndimage.binary_dilation(tumour) & kidney
            ).any():
                break
            depth += max(radius, 3.0)
        t_hu = hu_of["tumour"]
        look = rng.random()
        n_vox = int(tumour.sum())
        if look < reg.cystic_prob and radius > 6:
            hu[tumour] = t_hu + rng.normal(0, 10, size=n_vox)  # enhancing rim ...
            fluid = np.zeros(shape, dtype=bool)
            fluid[sl] = m & (r < rng.uniform(0.6, 0.85))
            hu[fluid & tumour] = rng.uniform(5, 30)  # ... around a fluid core
        elif look < reg.cystic_prob + reg.heterogeneous_prob:
            hu[tumour] = t_hu + rng.normal(0, 12, size=n_vox)
            if m.size:  # blotchy enhancement, a few voxels across
                hu[sl][m] += rng.uniform(15, 35) * _smooth_field(rng, m.shape, 2.0)[m]
            if radius > 10:
                core = np.zeros(shape, dtype=bool)
                core[sl] = m & (r < rng.uniform(0.3, 0.6))
                hu[core & tumour] -= rng.uniform(25, 60)  # necrosis
        else:
            hu[tumour] = t_hu + rng.normal(0, 6, size=n_vox)  # solid, homogeneous
        label[tumour] = 2

    # spine (cortical ring around cancellous core), spinous process, aorta and vena cava in front of it
    sp_c = (0.0, spine_y + 10 * scale, rng.uniform(-4, 4))
    sl, m, r = cv.ellipsoid(sp_c, (big_z, 17 * scale, 19 * scale))
    hu[sl][m] = rng.uniform(300, 550)
    ring = m & (r > 0.8)
    hu[sl][ring] = rng.uniform(700, 1100)
    sl, m, _ = cv.ellipsoid((0.0, spine_y + 38 * scale, 0.0), (big_z, 12 * scale, 8 * scale))
    hu[sl][m] = rng.uniform(450, 900)
    sl, m, _ = cv.ellipsoid((0.0, spine_y - 15 * scale, aorta_x), (big_z, 11 * scale, 11 * scale))
    hu[sl][m & (label[sl] == 0)] = hu_of["aorta"]
    sl, m, _ = cv.ellipsoid((0.0, spine_y - 15 * scale, ivc_x), (big_z, 9 * scale, 13 * scale))
    hu[sl][m & (label[sl] == 0)] = hu_of["ivc"]

    # texture over the body (smooth, a few mm), partial volume (blur ~0.6 mm in-plane, slice profile across slices)
    thick, pix, _ = spacing
    amp = _u(rng, reg.texture_sigma)
    if amp > 0:
        hu += amp * _smooth_field(rng, shape, rng.uniform(2.0, 6.0) / pix) * body_mask
    hu = ndimage.gaussian_filter(hu, sigma=(0.45, 0.6 / pix + 0.3, 0.6 / pix + 0.3), output=np.float32)

    # artefacts: cupping (beam hardening darkens the body centre) and streaks from a dense point
    cup = _u(rng, reg.cupping)
    if cup > 0:
        yy, xx = np.meshgrid(cv.axes[1] / body_ax[1], cv.axes[2] / body_ax[2], indexing="ij")
        hu -= (cup * np.clip(1.0 - (yy**2 + xx**2), 0.0, 1.0)).astype(np.float32)[None] * body_mask
    if rng.random() < reg.streak_prob:
        src = np.array([rng.uniform(-60, 60) * scale, rng.uniform(-60, 60) * scale])
        yy, xx = np.meshgrid(cv.axes[1] - src[0], cv.axes[2] - src[1], indexing="ij")
        pattern = np.zeros(shape[1:], dtype=np.float32)
        for j, angle in enumerate(rng.uniform(0, np.pi, size=int(rng.integers(3, 9)))):
            dist = np.abs(-np.sin(angle) * yy + np.cos(angle) * xx)
            sign = 1.0 if j % 2 == 0 else -1.0
            pattern += sign * rng.uniform(60, 250) * np.exp(-0.5 * (dist / (1.2 * pix)) ** 2)
        pattern *= np.exp(-np.hypot(yy, xx) / rng.uniform(60, 150))
        zc = rng.uniform(z_lo, z_hi)
        z_w = np.exp(-0.5 * ((cv.axes[0] - zc) / rng.uniform(5, 25)) ** 2).astype(np.float32)
        hu += z_w[:, None, None] * pattern[None]
        sl, m, _ = cv.ellipsoid((zc, *src), (3.0, 3.0, 3.0))
        hu[sl][m] = 2500.0  # the metal clip / dense calcification causing them
    hu += rng.normal(0, _u(rng, reg.noise_sigma), size=shape).astype(np.float32)
    image = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
    return image, label, kits19_affine(spacing)


def write_kits19(
    out_dir: Path,
    cases: int = 4,
    seed: int = 0,
    unlabelled: int = 0,
    size: str = "small",
    start_index: int = 0,
    regime: str | KiTS19Regime = "all",
) -> list[Path]:
    """Write synthetic KiTS19 cases in the official layout.

    Case ``i`` is drawn from ``np.random.default_rng((seed, i))``, so it is the same whatever ``cases`` and
    ``start_index`` are (deterministic per seed, index and regime).

    Args:
        out_dir: data folder; ``out_dir/case_XXXXX/`` folders are created.
        cases: number of cases to write (labelled + unlabelled).
        seed: random seed.
        unlabelled: the last ``unlabelled`` cases get no ``segmentation.nii.gz`` (like KiTS19 cases 210-299).
        size: ``"small"`` (laptop scale) or ``"large"`` (a real-size abdominal CT, 512 x 512 pixels per slice).
        start_index: index of the first case (folder ``case_{start_index:05d}``).
        regime: a :class:`KiTS19Regime`, a name in :data:`REGIMES`, or ``"heldout"`` (case ``i`` uses
            ``HELDOUT[i % 3]``: other contrast phase, thick slices, small tumours in turn), or
            ``"single_appearance"`` (the generator before domain randomisation).

    Returns:
        The case folders, in index order.
    """
    if cases < 0 or unlabelled < 0 or unlabelled > cases:
        raise ValueError(f"cases={cases}, unlabelled={unlabelled}: expected 0 <= unlabelled <= cases")
    if size not in SIZES:
        raise ValueError(f"size='{size}': expected one of {list(SIZES)}")
    if regime not in ("heldout", SINGLE_APPEARANCE):
        get_regime(regime)  # fail before writing anything
    out_dir = Path(out_dir)
    folders = []
    for k in range(cases):
        index = start_index + k
        rng = np.random.default_rng((seed, index))
        labelled = k < cases - unlabelled
        reg = HELDOUT[index % len(HELDOUT)] if regime == "heldout" else regime
        image, label, affine = synth_kits19_case(rng, size=size, regime=reg)  # unlabelled cases hold anatomy too
        folder = out_dir / f"case_{index:05d}"
        save_nifti(image, affine, folder / "imaging.nii.gz")
        if labelled:
            save_nifti(label, affine, folder / "segmentation.nii.gz")
        folders.append(folder)
    return folders
