"""Synthetic CHAOS MR cases written in the real CHAOS layout: DICOM series + 8-bit PNG ground truth.

Dataset: Kavur et al., "CHAOS Challenge - combined (CT-MR) healthy abdominal organ segmentation", MedIA 2021,
as used by You et al., "DR-Net: dual-rotation network with feature map enhancement for medical image
segmentation", Complex & Intelligent Systems 2022.

Layout written (one folder per case id, ids like the real ones: 1, 2, 3, 5, 8, ...)::

    out_dir/Train_Sets/MR/<id>/T1DUAL/DICOM_anon/InPhase/IMG-0004-00002.dcm ...
    out_dir/Train_Sets/MR/<id>/T1DUAL/DICOM_anon/OutPhase/IMG-0004-00001.dcm ...
    out_dir/Train_Sets/MR/<id>/T1DUAL/Ground/IMG-0004-00002.png ...
    out_dir/Train_Sets/MR/<id>/T2SPIR/DICOM_anon/IMG-0002-00001.dcm ...
    out_dir/Train_Sets/MR/<id>/T2SPIR/Ground/IMG-0002-00001.png ...

The anatomy (body with subcutaneous fat, spine, aorta/IVC, liver on the patient's right = image left, spleen,
two kidneys with cortex/medulla) is defined analytically in patient coordinates (mm, LPS), so the T1-DUAL and
T2-SPIR acquisitions of one case sample the same patient on different slice grids, like the real data.
Contrast is sequence-specific (fat bright on T1, suppressed on T2-SPIR; out-phase shows the dark
"India ink" line at fat-water interfaces and a darker liver when it holds fat; spleen and kidneys bright on
T2), followed by partial-volume blur, a smooth multiplicative bias field and Rician noise.
Everything is deterministic given ``seed``; each case folder is written under a temporary name and renamed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segzoo.utils import atomic_dir

# real CHAOS MR training ids, continued with unused numbers when more cases are asked for
CHAOS_MR_IDS = (1, 2, 3, 5, 8, 10, 13, 15, 19, 20, 21, 22, 31, 32, 33, 34, 36, 37, 38, 39)
# ground-truth grey values of the real PNGs, index = class (background, liver, right kidney, left kidney, spleen)
CHAOS_GREY_VALUES = (0, 63, 126, 189, 252)

# (rows = cols, pixel spacing mm, T1-DUAL slice count, slice thickness mm)
_SIZES = {"small": (128, 3.0, 16, 8.0), "large": (256, 1.5, 30, 6.0)}

# tissue codes of the phantom
_AIR, _SOFT, _FAT, _LIVER, _SPLEEN, _KCORTEX, _KMEDULLA, _BONE, _CSF, _VESSEL = range(10)
# mean signal per tissue code (arbitrary scanner units, the order of the real CHAOS intensities)
_CONTRAST = {
    "in": np.array([0, 330, 850, 480, 380, 420, 300, 420, 120, 200], dtype=np.float64),
    "out": np.array([0, 310, 700, 480, 370, 400, 290, 250, 110, 190], dtype=np.float64),
    "t2": np.array([0, 200, 110, 220, 600, 650, 800, 250, 1300, 60], dtype=np.float64),
}
_MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


@dataclass
class _Ellipsoid:
    center: tuple[float, float, float]
    semi: tuple[float, float, float]
    theta: float = 0.0  # in-plane rotation (rad)

    def value(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        dx, dy, dz = x - self.center[0], y - self.center[1], z - self.center[2]
        c, s = np.cos(self.theta), np.sin(self.theta)
        u, v = c * dx + s * dy, -s * dx + c * dy
        return (u / self.semi[0]) ** 2 + (v / self.semi[1]) ** 2 + (dz / self.semi[2]) ** 2


class _Wobble:
    """Smooth random field in patient coordinates (sum of sinusoids) that roughens organ outlines."""

    def __init__(self, rng: np.random.Generator, amplitude: float, n: int = 6):
        self.k = rng.normal(size=(n, 3)) * (2 * np.pi / rng.uniform(40.0, 120.0, size=(n, 1)))
        self.k /= np.sqrt(3)
        self.phase = rng.uniform(0, 2 * np.pi, size=n)
        self.amplitude = amplitude / np.sqrt(n)

    def __call__(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        out = np.zeros(np.broadcast_shapes(x.shape, y.shape, z.shape))
        for k, p in zip(self.k, self.phase):
            out += np.sin(k[0] * x + k[1] * y + k[2] * z + p)
        return self.amplitude * out


class _Patient:
    """One synthetic abdomen, sampled on any slice grid with :meth:`sample`."""

    def __init__(self, rng: np.random.Generator):
        u = rng.uniform
        self.body = (u(145, 170), u(105, 125))
        self.fat = u(10, 22)
        spine_y = 0.45 * self.body[1]
        self.spine_y = spine_y
        zl, zs, zk = u(10, 30), u(15, 35), u(-30, -10)
        self.liver = [
            _Ellipsoid((-55 + u(-8, 8), -10 + u(-8, 8), zl), (u(65, 75), u(58, 68), u(70, 85)), u(-0.3, 0.3)),
            _Ellipsoid((5 + u(-5, 5), -45 + u(-5, 5), zl + 15), (u(35, 45), u(22, 30), u(35, 45)), u(-0.2, 0.2)),
        ]
        self.spleen = _Ellipsoid((85 + u(-6, 6), 40 + u(-6, 6), zs), (u(24, 32), u(45, 55), u(45, 55)), u(0.4, 0.8))
        tilt = u(0.3, 0.5)
        # right kidney (patient right = negative x) sits lower than the left one
        self.kidney_r = _Ellipsoid((-55 + u(-5, 5), 60 + u(-5, 5), zk - u(10, 20)), (u(24, 30), u(21, 27), 50), tilt)
        self.kidney_l = _Ellipsoid((55 + u(-5, 5), 60 + u(-5, 5), zk), (u(24, 30), u(21, 27), 50), -tilt)
        self.wobble = _Wobble(rng, 0.12)
        self.liver_fat = u(0.0, 0.12)  # fat fraction: darker liver in out-phase
        self.gain = u(0.85, 1.15)
        self.tissue_jitter = rng.uniform(0.95, 1.05, size=10)

    def sample(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Tissue codes and class labels (0 bg, 1 liver, 2 right kidney, 3 left kidney, 4 spleen) at the points."""
        shape = np.broadcast_shapes(x.shape, y.shape, z.shape)
        w = self.wobble(x, y, z)
        a, b = self.body
        scale = 1 + 0.05 * z / 100.0
        body = (x / (a * scale)) ** 2 + (y / (b * scale)) ** 2 + 0.3 * w < 1
        inner = (x / (a * scale - self.fat)) ** 2 + (y / (b * scale - self.fat)) ** 2 + 0.3 * w < 1
        tissue = np.zeros(shape, dtype=np.uint8)
        label = np.zeros(shape, dtype=np.uint8)
        tissue[body] = _FAT
        tissue[inner] = _SOFT
        liver = inner & ((self.liver[0].value(x, y, z) + w < 1) | (self.liver[1].value(x, y, z) + w < 1))
        spleen = inner & (self.spleen.value(x, y, z) + w < 1)
        organs = [(liver, _LIVER, 1), (spleen, _SPLEEN, 4)]
        for kidney, cls in ((self.kidney_r, 2), (self.kidney_l, 3)):
            mask = inner & (kidney.value(x, y, z) + 0.5 * w < 1)
            organs.append((mask, _KCORTEX, cls))
        for mask, code, cls in organs:
            tissue[mask] = code
            label[mask] = cls
        for kidney in (self.kidney_r, self.kidney_l):
            medulla = kidney.value(x, y, z) < 0.35
            tissue[medulla & ((label == 2) | (label == 3))] = _KMEDULLA
        # spine, spinal canal and the great vessels are not labelled and cut the organs
        sy = self.spine_y
        for cx, cy, r, code in ((0, sy, 17, _BONE), (0, sy + 22, 7, _CSF), (15, sy - 27, 10, _VESSEL)):
            disc = ((x - cx) ** 2 + (y - cy) ** 2 < r**2) & inner
            tissue[disc] = code
            label[disc] = 0
        ivc = ((x + 20) ** 2 + (y - sy + 30) ** 2 < 11**2) & inner
        tissue[ivc] = _VESSEL
        label[ivc] = 0
        return tissue, label


def _render(
    patient: _Patient, tissue: np.ndarray, kind: str, x: np.ndarray, y: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """MR signal (S, H, W) uint16 for tissue codes (S, H, W) and sequence kind 'in', 'out' or 't2'."""
    from scipy import ndimage

    table = _CONTRAST[kind] * patient.tissue_jitter * patient.gain
    if kind == "out":
        table[_LIVER] *= 1 - 2 * patient.liver_fat
    signal = table[tissue]
    if kind == "out":
        # opposed-phase cancellation in voxels that mix fat and water: the "India ink" outline
        fat = tissue == _FAT
        water = (tissue != _FAT) & (tissue != _AIR)
        st = np.zeros((3, 3, 3), dtype=bool)
        st[1] = True
        ink = (ndimage.binary_dilation(fat, st) & water) | (ndimage.binary_dilation(water, st) & fat)
        signal = np.where(ink, signal * rng.uniform(0.2, 0.35), signal)
    texture = ndimage.gaussian_filter(rng.standard_normal(tissue.shape), sigma=(0, 2, 2))
    signal = signal * (1 + 0.15 * texture * (tissue != _AIR))
    signal = ndimage.gaussian_filter(signal, sigma=(0, 0.6, 0.6))
    c = rng.uniform(-0.25, 0.25, size=3)
    bias = np.exp(c[0] * x / 200 + c[1] * y / 200 + c[2] * (x**2 + y**2) / 200**2)
    signal = signal * bias
    sigma = rng.uniform(0.015, 0.03) * 800 * patient.gain
    signal = np.sqrt(
        (signal + sigma * rng.standard_normal(signal.shape)) ** 2 + (sigma * rng.standard_normal(signal.shape)) ** 2
    )
    return np.clip(np.rint(signal), 0, 4095).astype(np.uint16)


def _uid(*parts: object) -> str:
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=["segzoo-chaos", *map(str, parts)])


def _write_dicom(
    path: Path,
    pixels: np.ndarray,
    *,
    case: str,
    seed: int,
    series: str,
    series_number: int,
    description: str,
    instance: int,
    position: tuple[float, float, float],
    pixel_spacing: float,
    thickness: float,
    echo_time: float,
    repetition_time: float,
) -> None:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    sop_uid = _uid(seed, case, series, instance)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = _MR_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = _MR_IMAGE_STORAGE
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = _uid(seed, case, "study")
    ds.SeriesInstanceUID = _uid(seed, case, series)
    ds.FrameOfReferenceUID = _uid(seed, case, "frame", series)
    ds.Modality = "MR"
    ds.Manufacturer = "segzoo synthetic"
    ds.PatientName = "Anonymized"
    ds.PatientID = f"CHAOS-MR-{case}"
    ds.SeriesNumber = series_number
    ds.SeriesDescription = description
    ds.InstanceNumber = instance
    ds.MagneticFieldStrength = 1.5
    ds.EchoTime = echo_time
    ds.RepetitionTime = repetition_time
    ds.ImagePositionPatient = [round(float(v), 3) for v in position]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SliceLocation = round(float(position[2]), 3)
    ds.PixelSpacing = [pixel_spacing, pixel_spacing]
    ds.SliceThickness = thickness
    ds.SpacingBetweenSlices = thickness
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)


def _sample_grid(
    patient: _Patient, rng: np.random.Generator, rows: int, spacing: float, slices: int, thickness: float
) -> dict:
    """Sample the patient on one axial slice grid: tissue codes and labels (S, H, W), slice positions, x/y grids."""
    z_top = (slices - 1) * thickness / 2 + rng.uniform(-10, 10)
    z = z_top - thickness * np.arange(slices, dtype=np.float64)
    offset = -(rows - 1) / 2 * spacing
    coords = offset + spacing * np.arange(rows, dtype=np.float64)
    zz, yy, xx = z[:, None, None], coords[None, :, None], coords[None, None, :]
    shift = rng.uniform(-8, 8, size=2)  # patient position differs between acquisitions
    tissue, label = patient.sample(xx - shift[0], yy - shift[1], zz)
    positions = [(offset, offset, float(zk)) for zk in z]
    return {"tissue": tissue, "label": label, "positions": positions, "xy": (xx, yy)}


def _save_png(path: Path, label: np.ndarray) -> None:
    from PIL import Image

    grey = np.asarray(CHAOS_GREY_VALUES, dtype=np.uint8)[label]
    Image.fromarray(grey, mode="L").save(path)


def _write_case(case_dir: Path, case: str, seed: int, size: str, rng: np.random.Generator) -> None:
    rows, spacing, t1_slices, thickness = _SIZES[size]
    patient = _Patient(rng)
    common = dict(case=case, seed=seed, pixel_spacing=spacing, thickness=thickness)

    # T1-DUAL: in- and out-phase share one slice grid (interleaved echoes of one acquisition) and one Ground
    t1 = _sample_grid(patient, rng, rows, spacing, t1_slices, thickness)
    xx, yy = t1["xy"]
    in_dir = case_dir / "T1DUAL" / "DICOM_anon" / "InPhase"
    out_dir = case_dir / "T1DUAL" / "DICOM_anon" / "OutPhase"
    ground = case_dir / "T1DUAL" / "Ground"
    for d in (in_dir, out_dir, ground):
        d.mkdir(parents=True)
    in_img = _render(patient, t1["tissue"], "in", xx, yy, rng)
    out_img = _render(patient, t1["tissue"], "out", xx, yy, rng)
    for k in range(t1_slices):
        # the real files number the interleaved echoes: out-phase odd, in-phase even
        name_in, name_out = f"IMG-0004-{2 * k + 2:05d}", f"IMG-0004-{2 * k + 1:05d}"
        _write_dicom(
            in_dir / f"{name_in}.dcm", in_img[k], series="t1in", series_number=4, description="T1 DUAL InPhase",
            instance=k + 1, position=t1["positions"][k], echo_time=4.4, repetition_time=150.0, **common,
        )  # fmt: skip
        _write_dicom(
            out_dir / f"{name_out}.dcm", out_img[k], series="t1out", series_number=5,
            description="T1 DUAL OutPhase", instance=k + 1, position=t1["positions"][k], echo_time=2.2,
            repetition_time=150.0, **common,
        )  # fmt: skip
        _save_png(ground / f"{name_in}.png", t1["label"][k])

    # T2-SPIR: its own acquisition, a slightly different number of slices
    t2_slices = t1_slices + int(rng.integers(-2, 3))
    t2 = _sample_grid(patient, rng, rows, spacing, t2_slices, thickness)
    xx, yy = t2["xy"]
    t2_dir = case_dir / "T2SPIR" / "DICOM_anon"
    ground = case_dir / "T2SPIR" / "Ground"
    for d in (t2_dir, ground):
        d.mkdir(parents=True)
    t2_img = _render(patient, t2["tissue"], "t2", xx, yy, rng)
    for k in range(t2_slices):
        name = f"IMG-0002-{k + 1:05d}"
        _write_dicom(
            t2_dir / f"{name}.dcm", t2_img[k], series="t2spir", series_number=2, description="T2 SPIR",
            instance=k + 1, position=t2["positions"][k], echo_time=80.0, repetition_time=1600.0, **common,
        )  # fmt: skip
        _save_png(ground / f"{name}.png", t2["label"][k])


def chaos_case_ids(cases: int) -> list[str]:
    """The first ``cases`` case ids: the real CHAOS MR training ids, then 40, 41, ..."""
    ids = list(CHAOS_MR_IDS)
    ids += range(40, 40 + max(0, cases - len(ids)))
    return [str(i) for i in ids[:cases]]


def write_chaos(out_dir: Path, cases: int = 4, seed: int = 0, size: str = "small") -> list[Path]:
    """Write ``cases`` synthetic CHAOS MR cases under ``out_dir/Train_Sets/MR``.

    Args:
        out_dir: dataset root (the folder holding ``Train_Sets``); created if missing.
        cases: number of cases (ids 1, 2, 3, 5, 8, ... as in the real training set).
        seed: every byte written depends only on ``seed`` (and ``cases``/``size``).
        size: ``"small"`` (128x128 pixels of 3 mm, 16 T1-DUAL slices of 8 mm; T2-SPIR 14-18 slices) or
            ``"large"`` (256x256 pixels of 1.5 mm, 30 slices of 6 mm, like the real series).

    Returns:
        The case folders ``out_dir/Train_Sets/MR/<id>``; an existing case folder of the same id is replaced.
    """
    if size not in _SIZES:
        raise ValueError(f"write_chaos: size must be one of {sorted(_SIZES)}, got {size!r}")
    if cases < 1:
        raise ValueError(f"write_chaos: cases must be >= 1, got {cases}")
    mr = Path(out_dir) / "Train_Sets" / "MR"
    mr.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, case in enumerate(chaos_case_ids(cases)):
        rng = np.random.default_rng([seed, index])
        final = mr / case
        with atomic_dir(final) as tmp:
            _write_case(tmp, case, seed, size, rng)
        paths.append(final)
    return paths
