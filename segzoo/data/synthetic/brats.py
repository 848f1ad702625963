"""Synthetic BraTS cases written in the real BraTS 2018-2021 layout: four co-registered MR modalities + seg NIfTI.

Dataset: Menze et al., "The Multimodal Brain Tumor Image Segmentation Benchmark (BRATS)", IEEE TMI 2015, and
Bakas et al., arXiv:1811.02629, as used by You et al., "DR-Net: dual-rotation network with feature map
enhancement for medical image segmentation", Complex & Intelligent Systems 2022.

Layouts written::

    layout="flat" (BraTS 2019-2021):  out_dir/BraTS2021_00000/BraTS2021_00000_{t1,t1ce,t2,flair,seg}.nii.gz
    layout="2018":                    out_dir/{HGG,LGG}/Brats18_2013_0_1/Brats18_2013_0_1_{t1,...,seg}.nii.gz

Each case is a skull-stripped brain (ellipsoid with grey-matter cortex, white matter, deep grey nuclei, lateral
ventricles and an interhemispheric fissure) holding one glioma with the BraTS labels nested as in real data:
necrotic/non-enhancing core (1) inside the enhancing rim (4) inside the peritumoural oedema (2). Every fourth
case (k % 4 == 1, the "LGG" ones) has a non-enhancing core (labels 0/1/2 only), as many real LGG cases do.
Contrast per modality: T1 oedema and core dark, T1ce enhancing rim bright, T2 CSF/oedema/necrosis bright,
FLAIR oedema bright and CSF dark; then partial-volume blur, a smooth bias field and Rician noise; zero outside
the brain. Images are int16 and seg uint8 like the real files; the affine is the real BraTS one,
``diag(-sx, -sy, sz)`` with the y origin at ``(Y - 1) * sy`` (1 mm, 240x240x155 for ``size="large"``).
Deterministic per ``seed``; each case folder is written under a temporary name and renamed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segzoo.utils import atomic_dir

BRATS_MODALITIES = ("t1", "t1ce", "t2", "flair")

# shape (X, Y, Z) and voxel size (mm); "small" keeps the real field of view at a coarser voxel size
_SIZES = {"small": ((96, 96, 48), (2.5, 2.5, 3.25)), "large": ((240, 240, 155), (1.0, 1.0, 1.0))}

# tissue codes
_BG, _CSF, _GM, _WM, _OEDEMA, _NECROSIS, _ENHANCING, _NONENH = range(8)
_CONTRAST = {
    "t1": np.array([0, 150, 450, 620, 380, 220, 480, 300], dtype=np.float64),
    "t1ce": np.array([0, 160, 470, 640, 400, 200, 1100, 320], dtype=np.float64),
    "t2": np.array([0, 1500, 750, 500, 1150, 1350, 850, 1250], dtype=np.float64),
    "flair": np.array([0, 120, 520, 420, 1000, 600, 750, 950], dtype=np.float64),
}


def _wobble(rng: np.random.Generator, amplitude: float, wavelength: tuple[float, float], n: int = 6):
    """A smooth random field f(x, y, z) in mm (sum of sinusoids): grid independent and deterministic."""
    k = rng.normal(size=(n, 3)) / np.sqrt(3) * (2 * np.pi / rng.uniform(*wavelength, size=(n, 1)))
    phase = rng.uniform(0, 2 * np.pi, size=n)
    scale = amplitude / np.sqrt(n)

    def field(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        out = np.zeros(np.broadcast_shapes(x.shape, y.shape, z.shape))
        for kk, p in zip(k, phase):
            out += np.sin(kk[0] * x + kk[1] * y + kk[2] * z + p)
        return scale * out

    return field


def _ellipsoid(x, y, z, center, semi) -> np.ndarray:
    return ((x - center[0]) / semi[0]) ** 2 + ((y - center[1]) / semi[1]) ** 2 + ((z - center[2]) / semi[2]) ** 2


def _phantom(
    rng: np.random.Generator, x: np.ndarray, y: np.ndarray, z: np.ndarray, enhancing: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Tissue codes and BraTS labels on the grid given by broadcastable mm coordinates (x, y, z)."""
    from scipy import ndimage

    u = rng.uniform
    semi = (u(62, 72), u(80, 90), u(58, 66))
    center = (0.0, u(-4, 4), u(-8, -2))
    shape_noise = _wobble(rng, 0.12, (60, 140))
    gyri = _wobble(rng, 0.25, (12, 25), n=10)
    f = _ellipsoid(x, y, z, center, semi) + shape_noise(x, y, z)
    brain = f < 1
    tissue = np.where(brain, _WM, _BG).astype(np.uint8)
    tissue[brain & (f + 0.08 * gyri(x, y, z) > 0.72)] = _GM
    for side in (-1, 1):
        deep = _ellipsoid(x, y, z, (side * 13, center[1] + 4, center[2]), (10, 15, 10)) < 1
        tissue[deep] = _GM
        ventricle = _ellipsoid(x, y, z, (side * 8, center[1] - 4, center[2] + 10), (u(5, 7), u(24, 30), u(8, 11))) < 1
        tissue[ventricle] = _CSF
    tissue[brain & (np.abs(x) < 1.5) & (f > 0.55) & (z > center[2] - 10)] = _CSF

    # glioma: one noisy distance field thresholded at nested radii keeps the labels nested
    while True:
        c = (rng.choice([-1, 1]) * u(22, 40), center[1] + u(-35, 35), center[2] + u(-12, 22))
        if _ellipsoid(c[0], c[1], c[2], center, semi) < 0.35:
            break
    r_tc = u(12, 20)
    r_nc = r_tc * u(0.45, 0.65)
    r_ed = r_tc + u(8, 18)
    irregular = _wobble(rng, 0.2, (25, 60))
    d = np.sqrt((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) * (1 + irregular(x, y, z))
    # whole tumour = the connected piece holding the centre; each inner region is also eroded by one voxel
    # (6-connectivity) so that nesting holds exactly: 1 touches only 1/4 (or 1/2), 4 touches no background
    pieces, _ = ndimage.label(brain & (d < r_ed))
    centre_index = tuple(int(np.argmin(np.abs(np.ravel(a) - v))) for a, v in zip((x, y, z), c))
    whole = pieces == pieces[centre_index]
    core = ndimage.binary_erosion(whole) & (d < r_tc)
    label = np.zeros(tissue.shape, dtype=np.uint8)
    label[whole] = 2
    tissue[whole] = _OEDEMA
    if enhancing:
        necrosis = ndimage.binary_erosion(core) & (d < r_nc)
        label[core], tissue[core] = 4, _ENHANCING
        label[necrosis], tissue[necrosis] = 1, _NECROSIS
    else:
        label[core], tissue[core] = 1, _NONENH
    return tissue, label


def _render(tissue: np.ndarray, modality: str, spacing: tuple[float, ...], rng: np.random.Generator) -> np.ndarray:
    """int16 MR image for a tissue-code volume (X, Y, Z)."""
    from scipy import ndimage

    table = _CONTRAST[modality] * rng.uniform(0.95, 1.05, size=len(_CONTRAST[modality])) * rng.uniform(0.8, 1.2)
    brain = tissue != _BG
    signal = table[tissue]
    sigma_vox = [3.0 / s for s in spacing]
    texture = ndimage.gaussian_filter(rng.standard_normal(tissue.shape), sigma=sigma_vox)
    signal *= 1 + 0.4 * texture * brain
    signal = ndimage.gaussian_filter(signal, sigma=0.6)  # partial volume
    axes = [np.linspace(-1, 1, n) for n in tissue.shape]
    gx, gy, gz = np.meshgrid(*axes, indexing="ij", sparse=True)
    c = rng.uniform(-0.2, 0.2, size=4)
    signal *= np.exp(c[0] * gx + c[1] * gy + c[2] * gz + c[3] * (gx**2 + gy**2))
    sigma = rng.uniform(0.02, 0.04) * table[_WM]
    signal = np.sqrt(
        (signal + sigma * rng.standard_normal(signal.shape)) ** 2 + (sigma * rng.standard_normal(signal.shape)) ** 2
    )
    signal[~brain] = 0  # skull-stripped, zero background as in the real data
    return np.clip(np.rint(signal), 0, np.iinfo(np.int16).max).astype(np.int16)


def brats_affine(spacing: tuple[float, float, float], shape: tuple[int, int, int]) -> np.ndarray:
    """The BraTS affine: x and y flipped (LPS-like), origin of y at the far edge, as in the released files."""
    sx, sy, sz = spacing
    return np.array([[-sx, 0, 0, 0], [0, -sy, 0, (shape[1] - 1) * sy], [0, 0, sz, 0], [0, 0, 0, 1]], dtype=np.float64)


def brats_case_names(cases: int, layout: str = "flat") -> list[tuple[str, str]]:
    """``(subfolder, case name)`` for ``cases`` cases: ``("", "BraTS2021_00000")`` or ``("HGG", "Brats18_...")``.

    Case k is a low-grade ("LGG", no enhancing tumour) case when ``k % 4 == 1``.
    """
    if layout == "flat":
        ids = [n for n in range(3 * cases) if n % 3 != 1][:cases]  # the real 2021 ids skip numbers too
        return [("", f"BraTS2021_{n:05d}") for n in ids]
    if layout == "2018":
        out = []
        for k in range(cases):
            centre = ("2013_{k}", "CBICA_A{a}{b}", "TCIA0{t}_{n}")[k % 3]
            name = centre.format(k=k, a=chr(65 + (k // 26) % 26), b=chr(65 + k % 26), t=1 + k % 9, n=100 + k)
            out.append(("LGG" if k % 4 == 1 else "HGG", f"Brats18_{name}_1"))
        return out
    raise ValueError(f"write_brats: layout must be 'flat' or '2018', got {layout!r}")


def write_brats(out_dir: Path, cases: int = 4, seed: int = 0, size: str = "small", layout: str = "flat") -> list[Path]:
    """Write ``cases`` synthetic BraTS cases under ``out_dir``.

    Args:
        out_dir: dataset root; created if missing.
        cases: number of cases.
        seed: every value written depends only on ``seed`` (and the other arguments).
        size: ``"small"`` (96x96x48 voxels of 2.5x2.5x3.25 mm: the real field of view, coarser) or ``"large"``
            (240x240x155 at 1 mm, the real geometry).
        layout: ``"flat"`` (``<case>/<case>_<mod>.nii.gz``, BraTS 2019-2021 naming ``BraTS2021_00000``) or
            ``"2018"`` (the same under ``HGG/`` and ``LGG/``, names like ``Brats18_2013_0_1``).

    Returns:
        The case folders; an existing case folder of the same name is replaced.
    """
    if size not in _SIZES:
        raise ValueError(f"write_brats: size must be one of {sorted(_SIZES)}, got {size!r}")
    if cases < 1:
        raise ValueError(f"write_brats: cases must be >= 1, got {cases}")
    names = brats_case_names(cases, layout)
    shape, spacing = _SIZES[size]
    affine = brats_affine(spacing, shape)
    # mm coordinates of the voxel centres relative to the middle of the field of view
    x, y, z = (
        ((np.arange(n) - (n - 1) / 2) * s).reshape([-1 if a == i else 1 for a in range(3)])
        for i, (n, s) in enumerate(zip(shape, spacing))
    )
    from segzoo.data.io import save_nifti

    paths = []
    for k, (group, name) in enumerate(names):
        rng = np.random.default_rng([seed, k])
        parent = Path(out_dir) / group if group else Path(out_dir)
        parent.mkdir(parents=True, exist_ok=True)
        tissue, label = _phantom(rng, x, y, z, enhancing=k % 4 != 1)
        final = parent / name
        with atomic_dir(final) as tmp:
            for modality in BRATS_MODALITIES:
                save_nifti(_render(tissue, modality, spacing, rng), affine, tmp / f"{name}_{modality}.nii.gz")
            save_nifti(label, affine, tmp / f"{name}_seg.nii.gz")
        paths.append(final)
    return paths
