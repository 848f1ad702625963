"""One AugmentConfig for every augmentation path: the CPU chain and BatchAugment draw from the same distributions.

The CPU chain (``build_kits19_transforms``: ``RandSpatialAugmentd`` + MONAI gamma and flips) and the on-device
``BatchAugment`` are different code; both read the same config. Here many parameter draws of each are compared
(rates by a binomial bound, values by a two-sample Kolmogorov-Smirnov test at fixed seeds), and a config that differs
in one range is shown to be told apart, so the comparison can fail.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from monai.transforms import RandHistogramShift
from scipy.stats import ks_2samp

from segzoo.data.augment import AugmentConfig, SliceAugmentConfig, resolve_augment
from segzoo.data.gpu_augment import BatchAugment, SampleAugment, histogram_shift_batch
from segzoo.data.transforms import RandSpatialAugmentd, build_kits19_transforms

PATCH = (8, 16, 16)
N = 3000


def _decompose(matrix: np.ndarray) -> tuple[float, float]:
    """(zoom, rotation angle) of ``matrix = R / zoom`` (3x3)."""
    zoom = float(np.linalg.det(matrix)) ** (-1 / 3)
    rot = matrix * zoom
    return zoom, float(np.arccos(np.clip((np.trace(rot) - 1) / 2, -1, 1)))


def cpu_draws(cfg: AugmentConfig, n: int = N) -> dict[str, np.ndarray]:
    """Parameters drawn by the CPU chain's own ``randomize`` calls (what ``__call__`` would apply)."""
    chain = build_kits19_transforms(PATCH, cfg)
    chain.set_random_state(seed=0)
    spatial, gamma_t, *flips = chain.transforms
    out = {k: [] for k in ("zoom", "angle", "elastic", "corner", "gamma", "flip")}
    for _ in range(n):
        spatial.randomize()
        m = np.eye(3) if spatial._matrix is None else spatial._matrix
        zoom, angle = _decompose(m)
        out["zoom"].append(zoom)
        out["angle"].append(angle)
        out["elastic"].append(spatial._displacement is not None)
        if spatial._displacement is not None:  # align_corners: the corner voxel is a control point
            out["corner"].append(spatial._displacement[:, 0, 0, 0].numpy())
        gamma_t.randomize(None)
        if gamma_t._do_transform:
            gamma_t.adjuster.randomize(None)
        out["gamma"].append(gamma_t.adjuster.gamma_value if gamma_t._do_transform else 1.0)
        flip = []
        for f in flips:
            f.randomize(None)
            flip.append(f._do_transform)
        out["flip"].append(flip)
    return {k: np.array(v) for k, v in out.items()}


def gpu_draws(cfg: AugmentConfig, n: int = N) -> dict[str, np.ndarray]:
    params = BatchAugment(cfg).draw(n, PATCH, torch.Generator().manual_seed(1))
    zoom, angle = zip(*(_decompose(m) for m in params["matrix"].numpy()))
    disp = params["displacement"]
    elastic = (disp.flatten(1).abs().amax(1) > 0).numpy() if disp is not None else np.zeros(n, bool)
    corner = disp[elastic][:, :, 0, 0, 0].numpy() if disp is not None else np.zeros((0, 3))
    return {
        "zoom": np.array(zoom),
        "angle": np.array(angle),
        "elastic": elastic,
        "corner": corner,
        "gamma": params["gamma"].numpy(),
        "flip": params["flip"].numpy(),
    }


def _same_rate(a: np.ndarray, b: np.ndarray) -> bool:
    p = (a.mean() + b.mean()) / 2
    return abs(a.mean() - b.mean()) <= 4 * math.sqrt(max(p * (1 - p), 1e-4) * (1 / len(a) + 1 / len(b)))


def _same_values(a: np.ndarray, b: np.ndarray) -> bool:
    return ks_2samp(a, b).pvalue > 1e-3


def _compare(cpu: dict, gpu: dict) -> list[str]:
    """Names of the parameters whose distributions differ."""
    bad = []
    rotated = [d["angle"] > 1e-6 for d in (cpu, gpu)]
    scaled = [np.abs(d["zoom"] - 1) > 1e-9 for d in (cpu, gpu)]
    gamma_on = [d["gamma"] != 1 for d in (cpu, gpu)]
    for name, (a, b) in {"rotate_prob": rotated, "scale_prob": scaled, "gamma_prob": gamma_on,
                         "elastic_prob": (cpu["elastic"], gpu["elastic"])}.items():  # fmt: skip
        if not _same_rate(a, b):
            bad.append(name)
    for axis in range(cpu["flip"].shape[1]):
        if not _same_rate(cpu["flip"][:, axis], gpu["flip"][:, axis]):
            bad.append(f"flip axis {axis}")
    if not _same_values(cpu["angle"][rotated[0]], gpu["angle"][rotated[1]]):
        bad.append("rotate_range")
    if not _same_values(cpu["zoom"][scaled[0]], gpu["zoom"][scaled[1]]):
        bad.append("scale_range")
    if not _same_values(cpu["gamma"][gamma_on[0]], gpu["gamma"][gamma_on[1]]):
        bad.append("gamma_range")
    for axis in range(3):
        if not _same_values(cpu["corner"][:, axis], gpu["corner"][:, axis]):
            bad.append(f"elastic_magnitude axis {axis}")
    return bad


def test_cpu_chain_and_batch_augment_draw_alike():
    cfg = AugmentConfig(rotate_prob=0.5, scale_prob=0.4, elastic_prob=0.3, gamma_prob=0.6, flip_prob=0.3)
    cpu = cpu_draws(cfg)
    assert _compare(cpu, gpu_draws(cfg)) == []
    # the comparison can fail: one range or one probability changed on the GPU side is told apart
    assert _compare(cpu, gpu_draws(dataclasses.replace(cfg, scale_range=(0.8, 1.4)))) == ["scale_range"]
    assert _compare(cpu, gpu_draws(dataclasses.replace(cfg, gamma_prob=0.5))) == ["gamma_prob"]
    shifted = gpu_draws(dataclasses.replace(cfg, elastic_magnitude=(1.0, 4.0, 6.0)))
    assert _compare(cpu, shifted) == ["elastic_magnitude axis 2"]


def test_defaults_are_todays_and_shared():
    """The defaults did not move (nnU-Net's, see docs/choices.md) and every path reads the same object."""
    cfg = AugmentConfig()
    assert (cfg.rotate_prob, cfg.scale_prob, cfg.elastic_prob, cfg.gamma_prob, cfg.flip_prob) == (
        0.2,
        0.2,
        0.2,
        0.3,
        0.5,
    )
    assert cfg.rotate_range == (math.pi / 6, 0.0, 0.0) and cfg.scale_range == (0.7, 1.4)
    assert cfg.elastic_magnitude == (1.0, 4.0, 4.0) and cfg.elastic_control_spacing == (8, 32, 32)
    assert cfg.gamma_range == (0.7, 1.5) and cfg.flip_axes == (0, 1, 2) and cfg.padding_mode == "border"
    assert (cfg.intensity_scale_prob, cfg.noise_prob) == (0.0, 0.0)
    assert BatchAugment().config == cfg
    spatial = RandSpatialAugmentd(("image", "label"), PATCH)
    assert (spatial.rotate_prob, spatial.rotate_range, spatial.scale_range) == (0.2, cfg.rotate_range, (0.7, 1.4))
    chain = build_kits19_transforms(PATCH)
    assert [type(t).__name__ for t in chain.transforms] == ["RandSpatialAugmentd", "RandAdjustContrastd"] + [
        "RandFlipd"
    ] * 3  # no intensity scaling or noise by default: the chain (and its seeds) is the one before the config
    assert chain.transforms[1].prob == 0.3 and [t.prob for t in chain.transforms[2:]] == [0.5] * 3
    s = SliceAugmentConfig()  # the 2D slices: what datamodule_2d hard-coded before
    assert (s.rotate_prob, s.rotate_range, s.scale_range) == (0.5, (math.pi / 12,), (0.9, 1.1))
    assert (s.intensity_scale_prob, s.intensity_scale_range, s.noise_prob, s.noise_std) == (0.5, 0.1, 0.2, 0.05)
    assert (s.elastic_prob, s.gamma_prob, s.flip_axes, s.padding_mode) == (0.0, 0.0, (), "zeros")


def test_intensity_scale_and_noise_match_monai():
    """BatchAugment's intensity scaling and noise draw as MONAI's RandScaleIntensity / RandGaussianNoise do."""
    cfg = AugmentConfig(rotate_prob=0, scale_prob=0, elastic_prob=0, gamma_prob=0, flip_prob=0, flip_axes=(),
                        intensity_scale_prob=0.5, intensity_scale_range=0.1, noise_prob=0.4, noise_std=0.05)  # fmt: skip
    p = BatchAugment(cfg).draw(N, (8, 8), torch.Generator().manual_seed(0))
    chain = build_kits19_transforms(PATCH, cfg)
    chain.set_random_state(seed=0)
    scale_t, noise_t = chain.transforms[2:4]
    factors, stds = [], []
    for _ in range(N):
        scale_t.randomize(None)  # the dict transform draws whether it fires; its inner transform the value
        if scale_t._do_transform:
            scale_t.scaler.randomize(None)
        factors.append(1 + scale_t.scaler.factor if scale_t._do_transform else 1.0)
        noise_t.randomize(None)
        if noise_t._do_transform:
            noise_t.rand_gaussian_noise.randomize(torch.zeros(400))
        stds.append(float(np.std(noise_t.rand_gaussian_noise.noise)) if noise_t._do_transform else 0.0)
    factors, gpu_f = np.array(factors), p["intensity_scale"].numpy()
    assert _same_rate(factors != 1, gpu_f != 1) and _same_values(factors[factors != 1], gpu_f[gpu_f != 1])
    stds, gpu_s = np.array(stds), p["noise_std"].numpy()
    assert _same_rate(stds > 0, gpu_s > 0) and gpu_s.max() <= 0.05
    assert abs(stds[stds > 0].mean() - 0.025) < 0.002 and abs(gpu_s[gpu_s > 0].mean() - 0.025) < 0.002
    # applied: a constant image scaled by the drawn factor, noise of the drawn std
    image = torch.ones(N, 1, 8, 8)
    out = BatchAugment(dataclasses.replace(cfg, noise_prob=0.0)).apply(
        {"image": image}, intensity_scale=p["intensity_scale"]
    )
    torch.testing.assert_close(out["image"][:, 0, 0, 0].double(), p["intensity_scale"])


def test_sample_augment_is_batch_augment_on_one_sample():
    """The 2D slices' CPU path is the on-device code on a batch of one: same output for the same generator state."""
    cfg = SliceAugmentConfig(rotate_prob=1.0, scale_prob=1.0)
    g = torch.Generator().manual_seed(0)
    item = {"image": torch.randn(2, 32, 32, generator=g), "label": torch.randint(0, 4, (1, 32, 32), generator=g)}
    out = SampleAugment(cfg).set_random_state(5)(dict(item, case_id="c"))
    ref = BatchAugment(cfg)({k: v[None] for k, v in item.items()}, generator=torch.Generator().manual_seed(5))
    assert out["case_id"] == "c" and out["image"].shape == (2, 32, 32) and out["label"].shape == (1, 32, 32)
    assert torch.equal(out["image"], ref["image"][0]) and torch.equal(out["label"], ref["label"][0])
    assert not torch.equal(out["image"], item["image"])


def test_resolve_and_validation():
    assert resolve_augment(False) is None and resolve_augment(True) == AugmentConfig()
    assert resolve_augment(True, SliceAugmentConfig) == SliceAugmentConfig()
    from_ckpt = resolve_augment(AugmentConfig(rotate_prob=0.5).to_dict())  # lists, as a checkpoint holds them
    assert from_ckpt == AugmentConfig(rotate_prob=0.5)
    with pytest.raises(ValueError, match="unknown field"):
        resolve_augment({"rotation": 1})
    with pytest.raises(ValueError, match="gamma_prob=1.5"):
        AugmentConfig(gamma_prob=1.5)
    with pytest.raises(ValueError, match="scale_range"):
        AugmentConfig(scale_range=(1.2, 0.8))
    with pytest.raises(ValueError, match="padding_mode"):
        AugmentConfig(padding_mode="wrap")


def test_augment_is_settable_from_yaml_and_command_line(tmp_path):
    """The option LightningCLI builds from the type hint: a nested dict in a config, dotted keys on the command line."""
    import lightning as L
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(L.LightningDataModule, "data")
    config = tmp_path / "data.yaml"
    config.write_text(
        "data:\n  class_path: segzoo.data.KiTS19DataModule\n  init_args:\n    data_dir: d\n"
        "    augment: {rotate_prob: 0.5, gamma_range: [0.8, 1.25]}\n"
    )
    parser.add_argument("--config", action="config")
    cfg = parser.parse_args(["--config", str(config), "--data.init_args.augment.elastic_prob", "0.0"])
    dm = parser.instantiate_classes(cfg).data
    assert dm.augment == AugmentConfig(rotate_prob=0.5, gamma_range=(0.8, 1.25), elastic_prob=0.0)
    assert dm.hparams["augment"]["rotate_prob"] == 0.5 and isinstance(dm.hparams["augment"], dict)  # plain data
    off = parser.instantiate_classes(parser.parse_args(["--config", str(config), "--data.init_args.augment", "false"]))
    assert off.data.augment is None and off.data.train_transforms() is None
    chaos = parser.parse_args(
        ["--data", "segzoo.data.CHAOSDataModule", "--data.init_args.augment", "{rotate_prob: 0.3}"]
    )
    dm2 = parser.instantiate_classes(chaos).data
    assert dm2.augment == SliceAugmentConfig(rotate_prob=0.3)  # the 2D defaults for every other field


def test_intensity_and_histogram_shift_match_monai():
    """BatchAugment's intensity shift and histogram shift draw and map as MONAI's RandShiftIntensity /
    RandHistogramShift do: offsets and the remapped value of a ramp are compared as distributions, and one set of
    control points maps a ramp exactly as MONAI's interpolation does."""
    cfg = AugmentConfig(rotate_prob=0, scale_prob=0, elastic_prob=0, gamma_prob=0, flip_prob=0, flip_axes=(),
                        intensity_shift_prob=0.6, intensity_shift_range=0.5,
                        histogram_shift_prob=0.7, histogram_shift_points=(4, 8))  # fmt: skip
    p = BatchAugment(cfg).draw(N, (8, 8), torch.Generator().manual_seed(0))
    chain = build_kits19_transforms(PATCH, cfg)
    chain.set_random_state(seed=0)
    names = [type(t).__name__ for t in chain.transforms]
    shift_t, hist_t = (chain.transforms[names.index(k)] for k in ("RandShiftIntensityd", "RandHistogramShiftd"))
    ramp = torch.linspace(-2, 3, 101).view(1, 1, 101)
    offsets, mids = [], []
    for _ in range(N):
        shift_t.randomize(None)
        if shift_t._do_transform:
            shift_t.shifter.randomize(None)
        offsets.append(shift_t.shifter._offset if shift_t._do_transform else 0.0)
        mids.append(float(hist_t({"image": ramp.clone()})["image"][0, 0, 37]))
    offsets, gpu_o = np.array(offsets), p["intensity_shift"].numpy()
    assert _same_rate(offsets != 0, gpu_o != 0) and _same_values(offsets[offsets != 0], gpu_o[gpu_o != 0])
    assert gpu_o.min() >= -0.5 and gpu_o.max() <= 0.5
    gpu_mid = histogram_shift_batch(ramp.expand(N, 1, 101), p["histogram_shift"])[:, 0, 37].numpy()
    mids, ref = np.array(mids), float(ramp[0, 0, 37])
    assert _same_rate(~np.isclose(mids, ref), ~np.isclose(gpu_mid, ref))
    assert _same_values(mids[~np.isclose(mids, ref)], gpu_mid[~np.isclose(gpu_mid, ref)])
    # the comparison can fail: fewer control points shift further
    other = BatchAugment(dataclasses.replace(cfg, histogram_shift_points=(3, 3))).draw(N, (8, 8), torch.Generator())
    far = histogram_shift_batch(ramp.expand(N, 1, 101), other["histogram_shift"])[:, 0, 37].numpy()
    assert not _same_values(mids[~np.isclose(mids, ref)], far[~np.isclose(far, ref)])
    # one draw applied: MONAI's interpolation with the same points, the image's min / max kept
    row = p["histogram_shift"][int(np.flatnonzero(~np.isnan(p["histogram_shift"][:, 0].numpy()))[0])]
    pts = row[~torch.isnan(row)].numpy()
    mono = RandHistogramShift(num_control_points=len(pts), prob=1.0)
    mono.reference_control_points, mono.floating_control_points = np.linspace(0, 1, len(pts)), pts
    mono._do_transform = True
    expected = mono(ramp.clone(), randomize=False)
    got = histogram_shift_batch(ramp.clone(), row[None])
    torch.testing.assert_close(got, expected.float(), atol=1e-5, rtol=0)
    assert float(got.min()) == pytest.approx(-2) and float(got.max()) == pytest.approx(3)
    with pytest.raises(ValueError, match="histogram_shift_points"):
        AugmentConfig(histogram_shift_points=(2, 5))
