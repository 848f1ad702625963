"""A small synthetic dataset in the field's interchange formats: nnU-Net v2 raw, Decathlon, or a MONAI datalist.

Unlike the KiTS19 / CHAOS / BraTS generators, which imitate one dataset, this one exercises what a user's own data
brings: two channels with different normalisations (``CT`` in Hounsfield units; ``T2``, an MR-like channel whose scale
changes per case with a random scanner gain), four labels (background, organ, lesion inside the organ, vessel), thick
slices (anisotropic: 0.9-1.1 mm in-plane, 2.6-3.4 mm slices) and every case stored in another orientation on disk
(RAS, LPS, slice axis first ...: the same anatomy, other voxel orders and affines), as files from different tools
and scanners arrive. ``regions=True`` writes nnU-Net region labels (``organ = [1, 2, 3]``, ``lesion = [2]``,
``vessel = [3]`` with ``regions_class_order``), as nnU-Net's BraTS datasets do.

``segzoo synth nnunet DIR`` writes it (``--form msd`` / ``datalist`` for the other two layouts).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from segzoo.data.geometry import Reorientation
from segzoo.data.io import save_nifti
from segzoo.utils import atomic_write_text

__all__ = ["FORMS", "ORIENTATIONS", "synth_nnunet_case", "write_nnunet"]

FORMS = ("nnunet", "msd", "datalist")
#: on-disk axis codes the cases cycle through (the anatomy is the same; only the stored voxel order differs)
ORIENTATIONS = (("R", "A", "S"), ("L", "P", "S"), ("S", "P", "L"), ("A", "R", "I"), ("P", "L", "S"))
LABELS = {"background": 0, "organ": 1, "lesion": 2, "vessel": 3}
REGIONS = {"background": 0, "organ": [1, 2, 3], "lesion": 2, "vessel": 3}


def _ellipsoid(grid, centre, radii) -> np.ndarray:
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1.0


def synth_nnunet_case(seed: int, shape=(56, 56, 18)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(image float32 (2, X, Y, Z), label uint8 (X, Y, Z), RAS affine)`` of one case (``seed`` decides all)."""
    rng = np.random.default_rng(seed)
    scale = shape[0] / 56.0  # the anatomy was drawn for 56 voxels in-plane: larger cases, larger organs
    shape = tuple(int(s + rng.integers(-4, 5)) if i < 2 else int(s + rng.integers(-2, 3)) for i, s in enumerate(shape))
    spacing = np.array([rng.uniform(0.9, 1.1), rng.uniform(0.9, 1.1), rng.uniform(2.6, 3.4)])
    grid = np.meshgrid(*[np.arange(n) * s / scale for n, s in zip(shape, spacing)], indexing="ij")  # mm, normalised
    extent = np.array(shape) * spacing / scale
    body = _ellipsoid(grid, extent / 2, extent * np.array([0.47, 0.42, 0.6]))
    centre = extent / 2 + rng.uniform(-4, 4, 3) * np.array([1, 1, 2])
    radii = np.array([rng.uniform(13, 18), rng.uniform(11, 16), rng.uniform(14, 20)])
    organ = _ellipsoid(grid, centre, radii) & body
    lesion_centre = centre + rng.uniform(-0.35, 0.35, 3) * radii
    lesion = _ellipsoid(grid, lesion_centre, np.full(3, rng.uniform(4.5, 7.5))) & organ
    vx, vy = centre[0] + rng.choice([-1, 1]) * rng.uniform(0.9, 1.2) * radii[0], centre[1] + rng.uniform(-6, 6)
    vessel = ((grid[0] - vx) ** 2 + (grid[1] - vy) ** 2 <= rng.uniform(2.5, 3.5) ** 2) & body & ~organ
    label = np.zeros(shape, np.uint8)
    label[organ], label[lesion], label[vessel] = 1, 2, 3
    ct = np.full(shape, -1000.0)
    ct[body] = rng.uniform(-20, 20)
    ct[organ] = rng.uniform(55, 75)
    ct[lesion] = rng.uniform(100, 130)
    ct[vessel] = rng.uniform(180, 260)
    ct += rng.normal(0, 12, shape)
    gain = rng.uniform(0.6, 1.6)
    t2 = np.zeros(shape)
    t2[body] = 120
    t2[organ] = 320
    t2[lesion] = 650
    t2[vessel] = 60
    t2 = gain * (t2 + rng.normal(0, 25, shape)).clip(0)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = rng.uniform(-100, 100, 3)
    return np.stack([ct, t2]).astype(np.float32), label, affine


def write_nnunet(
    out_dir: str | Path,
    cases: int = 8,
    seed: int = 0,
    test_cases: int = 2,
    form: str = "nnunet",
    regions: bool = False,
    shape: tuple[int, int, int] = (56, 56, 18),
    mixed_orientations: bool = True,
    **_: object,
) -> list[Path]:
    """Write ``cases`` labelled and ``test_cases`` unlabelled cases to ``out_dir``; returns the files written.

    Args:
        out_dir: the dataset folder (``Dataset501_Synth``-like; created).
        cases: labelled training cases (``imagesTr`` + ``labelsTr``).
        seed: seed of the whole dataset.
        test_cases: test cases (``imagesTs``, unlabelled for training; their labels in ``labelsTs`` to score
            predictions with ``segzoo evaluate``).
        form: ``"nnunet"`` (v2 raw, one file per channel), ``"msd"`` (Decathlon: 4D images, value -> name labels,
            ``training``/``test`` lists) or ``"datalist"`` (the nnU-Net files plus ``datalist.json``, a MONAI
            datalist with a list of channel files per image).
        regions: nnU-Net region labels in dataset.json (``form="nnunet"`` only).
        shape: voxels per case (RAS order; varied by a few voxels per case); the anatomy scales with it.
        mixed_orientations: store the cases in :data:`ORIENTATIONS` in turn (else all RAS).
    """
    if form not in FORMS:
        raise ValueError(f"form={form!r}: expected one of {FORMS}")
    if regions and form != "nnunet":
        raise ValueError("regions=True: region labels are an nnU-Net v2 dataset.json feature (form='nnunet')")
    out = Path(out_dir)
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    entries, tests = [], []
    for i in range(cases + test_cases):
        case = f"synth_{i:03d}"
        image, label, affine = synth_nnunet_case(seed * 10_000 + i, shape)
        codes = ORIENTATIONS[i % len(ORIENTATIONS)] if mixed_orientations else ("R", "A", "S")
        r = Reorientation.between_codes(("R", "A", "S"), codes, label.shape)
        image, label, affine = r.apply(image, first_axis=1), r.apply(label), r.apply_affine(affine)
        ct = np.round(image[0]).astype(np.int16)  # CT as scanners store it: integer HU
        t2 = image[1]
        train = i < cases
        folder = out / ("imagesTr" if train else "imagesTs")
        if form == "msd":
            files = [save_nifti(np.stack([ct.astype(np.float32), t2], axis=-1), affine, folder / f"{case}.nii.gz")]
        else:
            files = [
                save_nifti(ct, affine, folder / f"{case}_0000.nii.gz"),
                save_nifti(t2, affine, folder / f"{case}_0001.nii.gz"),
            ]
        written += files
        rel = [f"./{f.relative_to(out).as_posix()}" for f in files]
        if train:
            lab = save_nifti(label, affine, out / "labelsTr" / f"{case}.nii.gz")
            written.append(lab)
            entries.append({"image": rel if form == "datalist" else rel[0], "label": f"./labelsTr/{lab.name}"})
        else:  # the test cases' labels go to labelsTs, for scoring predictions (nnU-Net and segzoo ignore the folder)
            written.append(save_nifti(label, affine, out / "labelsTs" / f"{case}.nii.gz"))
            tests.append(rel if form == "datalist" else rel[0])
    if form == "msd":
        meta = {
            "name": "SegzooSynth",
            "description": "segzoo synthetic two-channel dataset (Decathlon layout)",
            "tensorImageSize": "4D",
            "modality": {"0": "CT", "1": "T2"},
            "labels": {str(v): k for k, v in LABELS.items()},
            "numTraining": cases,
            "numTest": test_cases,
            "training": entries,
            "test": tests,
        }
    else:
        meta = {
            "name": "SegzooSynth",
            "channel_names": {"0": "CT", "1": "T2"},
            "labels": REGIONS if regions else LABELS,
            "numTraining": cases,
            "file_ending": ".nii.gz",
        }
        if regions:
            meta["regions_class_order"] = [1, 2, 3]
    written.append(atomic_write_text(out / "dataset.json", json.dumps(meta, indent=2)))
    if form == "datalist":
        datalist = {
            "name": "SegzooSynth",
            "modality": {"0": "CT", "1": "T2"},
            "labels": {str(v): k for k, v in LABELS.items()},
            "training": entries,
            "test": [{"image": t} for t in tests],
        }
        written.append(atomic_write_text(out / "datalist.json", json.dumps(datalist, indent=2)))
    return written
