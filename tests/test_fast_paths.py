"""Fast paths give the same result as the plain path: batch augmentation, torch.compile, bf16 autocast."""

from __future__ import annotations

import math
import os
import warnings

import pytest
import torch
from monai.transforms import AdjustContrast, Affine

import segzoo
from segzoo.data.augment import AugmentConfig
from segzoo.data.gpu_augment import BatchAugment, adjust_gamma, rotation_matrices

OFF = dict(rotate_prob=0.0, scale_prob=0.0, elastic_prob=0.0, gamma_prob=0.0, flip_prob=0.0)


def _aug(seed=None, **fields) -> BatchAugment:
    return BatchAugment(AugmentConfig(**fields), seed=seed)


def _batch(b=3, size=(8, 16, 16), classes=3, seed=0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "image": torch.randn(b, 1, *size, generator=g),
        "label": torch.randint(0, classes, (b, 1, *size), generator=g),
        "case_id": [f"case_{i}" for i in range(b)],
    }


def _smooth(size) -> torch.Tensor:
    axes = torch.meshgrid(*[torch.linspace(-1, 1, s) for s in size], indexing="ij")
    field = torch.sin(2 * axes[-1] + axes[-2])
    if len(size) == 3:
        field = field * torch.cos(axes[0] + axes[1])
    return field[None, None].float()


# ---------------------------------------------------------------------------- BatchAugment
def test_all_probabilities_zero_is_identity():
    batch = _batch()
    out = _aug(**OFF, seed=0)(batch)
    assert torch.equal(out["image"], batch["image"])
    assert torch.equal(out["label"], batch["label"])
    assert out["case_id"] == batch["case_id"]


def test_flip_only_equals_torch_flip_exactly():
    batch = _batch()
    out = _aug(**{**OFF, "flip_prob": 1.0}, flip_axes=(1, 2), seed=0)(batch)
    assert torch.equal(out["image"], batch["image"].flip(3, 4))
    assert torch.equal(out["label"], batch["label"].flip(3, 4))


def test_random_flips_follow_the_drawn_per_sample_mask():
    batch = _batch(b=8)
    aug = _aug(**{**OFF, "flip_prob": 0.5}, flip_axes=(0,))
    params = aug.draw(8, (8, 16, 16), torch.Generator().manual_seed(3))
    out = aug.apply(batch, **params)
    flipped = params["flip"][:, 0]
    assert 0 < int(flipped.sum()) < 8  # this seed gives a mix, so both branches are checked
    for i in range(8):
        ref = batch["image"][i].flip(1) if flipped[i] else batch["image"][i]
        assert torch.equal(out["image"][i], ref)


@pytest.mark.parametrize("angle,k", [(math.pi / 2, -1), (-math.pi / 2, 1), (math.pi, 2)])
def test_quarter_rotations_equal_rot90_exactly(angle, k):
    batch = _batch()
    aug = _aug(**OFF)
    matrix = rotation_matrices(torch.tensor([[angle, 0.0, 0.0]], dtype=torch.float64)).expand(3, 3, 3)
    out = aug.apply(batch, matrix=matrix)
    assert torch.equal(out["image"], torch.rot90(batch["image"], k, dims=(3, 4)))
    assert torch.equal(out["label"], torch.rot90(batch["label"], k, dims=(3, 4)))


@pytest.mark.parametrize(
    "size,angles,zoom",
    [((12, 20, 24), [0.4, 0.1, -0.2], 1.2), ((12, 20, 24), [-0.3, 0.0, 0.0], 0.8), ((20, 24), [0.5], 1.1)],
)
def test_rotation_and_scaling_match_monai_affine(size, angles, zoom):
    image = _smooth(size)
    n = len(size)
    matrix = rotation_matrices(torch.tensor([angles], dtype=torch.float64)) / zoom  # zoom > 1 magnifies
    out = _aug(**OFF, padding_mode="zeros").apply({"image": image}, matrix=matrix)["image"][0]
    ref = Affine(rotate_params=angles, scale_params=[1 / zoom] * n, padding_mode="zeros", image_only=True)(image[0])
    assert torch.allclose(out, torch.as_tensor(ref), atol=1e-4)
    assert (out - image[0]).abs().max() > 0.1  # the transform did something


def test_rotation_matrices_match_monai_create_rotate():
    from monai.transforms.utils import create_rotate

    angles = [0.3, -0.7, 1.1]
    ours = rotation_matrices(torch.tensor([angles], dtype=torch.float64))[0]
    assert torch.allclose(ours, torch.as_tensor(create_rotate(3, angles)[:3, :3]), atol=1e-12)


def test_constant_elastic_displacement_shifts_by_whole_voxels():
    size = (6, 10, 12)
    ramp = torch.arange(12, dtype=torch.float32).expand(1, 1, *size).clone()
    disp = torch.zeros(1, 3, 2, 2, 2)
    disp[:, 2] = 1.0  # every output voxel samples the input one voxel further along W
    out = _aug(**OFF).apply({"image": ramp}, displacement=disp)["image"]
    assert torch.allclose(out[..., :-1], ramp[..., 1:], atol=1e-5)
    assert torch.allclose(out[..., -1], ramp[..., -1])  # border padding repeats the edge


def test_gamma_matches_monai_adjust_contrast_per_sample():
    image = torch.randn(3, 2, 6, 8, 8) * 50 + 10
    gamma = torch.tensor([0.7, 1.0, 1.4], dtype=torch.float64)
    out = adjust_gamma(image, gamma)
    for i in range(3):
        ref = AdjustContrast(float(gamma[i]), retain_stats=True)(image[i])
        assert torch.allclose(out[i], torch.as_tensor(ref), rtol=1e-4, atol=1e-3)
    assert torch.allclose(out.flatten(1).mean(1), image.flatten(1).mean(1), atol=1e-3)


def test_full_augmentation_keeps_labels_shapes_and_is_seeded():
    batch = _batch(b=6, size=(8, 32, 32), classes=4)
    kwargs = dict(rotate_prob=1.0, scale_prob=1.0, elastic_prob=1.0, gamma_prob=1.0, flip_prob=0.5)
    kwargs.update(elastic_control_spacing=(4, 8, 8), padding_mode="zeros")
    out1 = _aug(**kwargs, seed=7)(batch)
    out2 = _aug(**kwargs, seed=7)(batch)
    out3 = _aug(**kwargs, seed=8)(batch)
    assert out1["image"].shape == batch["image"].shape and out1["image"].dtype == torch.float32
    assert out1["label"].shape == batch["label"].shape and out1["label"].dtype == batch["label"].dtype
    assert set(out1["label"].unique().tolist()) <= {0, 1, 2, 3}
    assert torch.equal(out1["image"], out2["image"]) and torch.equal(out1["label"], out2["label"])
    assert not torch.equal(out1["image"], out3["image"])
    assert not torch.equal(out1["label"], batch["label"])
    # an explicit generator overrides the module's own
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    aug = _aug(**kwargs, seed=0)
    assert torch.equal(aug(batch, generator=g1)["image"], aug(batch, generator=g2)["image"])


def test_2d_batches_are_supported():
    batch = _batch(b=2, size=(32, 32))
    out = _aug(rotate_prob=1.0, scale_prob=1.0, elastic_prob=1.0, flip_axes=(0, 1), seed=0)(batch)
    assert out["image"].shape == (2, 1, 32, 32)
    assert set(out["label"].unique().tolist()) <= {0, 1, 2}


def test_bad_arguments_and_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="rotate_prob"):
        _aug(rotate_prob=1.5)
    with pytest.raises(ValueError, match="padding_mode"):
        _aug(padding_mode="wrap")
    with pytest.raises(ValueError, match=r"batch\['image'\]"):
        _aug()({"image": torch.zeros(4, 4)})
    bad = {"image": torch.zeros(1, 1, 8, 8, 8), "label": torch.zeros(1, 1, 8, 8, 4, dtype=torch.long)}
    with pytest.raises(ValueError, match=r"batch\['label'\]"):
        _aug(**OFF)(bad)


def test_plugs_into_segmentation_task_training_step():
    from segzoo.tasks.segmentation import SegmentationTask

    seen = []

    class Recorder(torch.nn.Module):
        def forward(self, x):
            seen.append(x)
            return x

    class Loss(torch.nn.Module):
        def forward(self, out, label):
            return (out - label.float()).square().mean()

    aug = _aug(**{**OFF, "flip_prob": 1.0}, flip_axes=(2,))
    task = SegmentationTask(net=Recorder(), loss=Loss(), batch_augment=aug)
    batch = _batch(b=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log without a trainer
        loss = task.training_step(batch, 0)
    assert torch.equal(seen[0], batch["image"].flip(4))
    expected = (batch["image"].flip(4) - batch["label"].flip(4).float()).square().mean()
    assert torch.allclose(loss, expected)


# ---------------------------------------------------------------------------- compile, bf16
@pytest.mark.slow
def test_compiled_mss_unet_matches_eager():
    # graph capture + AOT autograd by default: inductor's C++ code generation takes minutes on a loaded 2-core CPU;
    # SEGZOO_TEST_COMPILE_BACKEND=inductor checks the full path (what `compile: true` uses)
    backend = os.environ.get("SEGZOO_TEST_COMPILE_BACKEND", "aot_eager")
    torch.manual_seed(0)
    net = segzoo.create_net("mss_unet3d_small").eval()
    x = torch.randn(1, 1, 8, 16, 16)
    with torch.no_grad():
        ref = net(x)
        try:
            out = torch.compile(net, backend=backend)(x)
        except Exception as err:  # no C++ toolchain / unsupported platform
            pytest.skip(f"torch.compile unsupported here: {type(err).__name__}: {err}")
    assert torch.allclose(out, ref, rtol=1e-3, atol=1e-4)


def test_bf16_autocast_mss_unet_close_to_fp32():
    torch.manual_seed(0)
    net = segzoo.create_net("mss_unet3d_small").eval()
    x = torch.randn(1, 1, 8, 32, 32)
    with torch.no_grad():
        ref = net(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = net(x)
    assert out.dtype == torch.bfloat16
    err = (out.float() - ref).abs().max() / ref.abs().max()
    assert err < 0.05, f"bf16 relative error {err:.3f}"
    agree = (out.float().argmax(1) == ref.argmax(1)).float().mean()
    assert agree > 0.9


# ---------------------------------------------------------------------------- channels-last memory format
@pytest.mark.parametrize("name,shape", [("mss_unet3d_small", (2, 1, 8, 32, 32)), ("drnet", (2, 1, 32, 32))])
def test_channels_last_task_step_equals_default(name, shape):
    from segzoo.losses import DeepSupervisionLoss, ExpLogLoss
    from segzoo.tasks.segmentation import SegmentationTask

    torch.manual_seed(0)
    net = segzoo.create_net(name)
    batch = {"image": torch.randn(*shape), "label": torch.randint(0, 2, (shape[0], 1, *shape[2:]))}
    losses, grads = [], []
    for channels_last in (False, True):
        copy = segzoo.create_net(name)
        copy.load_state_dict(net.state_dict())
        task = SegmentationTask(net=copy, loss=DeepSupervisionLoss(ExpLogLoss()), channels_last=channels_last)
        task.setup("fit")
        weights = [p for p in copy.parameters() if p.ndim == len(shape)]
        fmt = torch.channels_last_3d if len(shape) == 5 else torch.channels_last
        assert all(p.is_contiguous(memory_format=fmt) for p in weights) == channels_last
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # self.log without a trainer
            loss = task.training_step(dict(batch), 0)
        loss.backward()
        losses.append(loss.detach())
        grads.append(torch.cat([p.grad.flatten() for p in copy.parameters() if p.grad is not None]))
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-4, atol=1e-5)
    # the two memory formats take different oneDNN kernels, whose float32 summation orders differ: on one thread DR-Net's
    # gradients were measured to differ by up to 1.3e-3 of the largest gradient (a wrong layout differs by O(1))
    scale = float(grads[0].abs().max())
    torch.testing.assert_close(grads[1], grads[0], rtol=0, atol=5e-3 * scale)
    assert torch.nn.functional.cosine_similarity(grads[1], grads[0], dim=0) > 0.9999
