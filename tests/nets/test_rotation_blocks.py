"""PFM / DPFM dual-rotation blocks: rotation behaviour, shapes, parameter formula, errors."""

import pytest
import torch
import torch.nn.functional as F

from segzoo.nets.blocks import DualRotationBlock, PartialConv, rotate

ANGLES = (0, 90, 180, 270)


def _block(branches=("pfm", "dpfm"), **kw):
    torch.manual_seed(0)
    return DualRotationBlock(8, 16, branches=branches, **kw).eval()


def _rotated_maps(maps, angle):
    """Rotate every direction map ``(B, G, A, C, H, W)`` by ``angle`` in its (H, W) plane."""
    return torch.stack([rotate(maps[:, :, a], angle) for a in range(maps.shape[2])], dim=2)


@pytest.mark.parametrize(
    "branches, k", [(("pfm", "dpfm"), 1), (("pfm", "dpfm"), 2), (("pfm", "dpfm"), 3), (("pfm",), 1), (("dpfm",), 3)]
)
def test_rotating_input_permutes_direction_maps(branches, k):
    # map[g, a](x) = rot(-t_a) conv_g rot(t_a) x_g, so map[g, a](rot(k) x) = rot(k) map[g, a + k](x): exact
    block = _block(branches, dpfm_depth=2)
    x = torch.randn(2, 8, 10, 14)  # non-square: the rotated input is 14 x 10
    with torch.no_grad():
        maps = block.direction_maps(x)
        maps_rot = block.direction_maps(rotate(x, 90 * k))
    expected = torch.roll(_rotated_maps(maps, 90 * k), shifts=-k, dims=2)
    assert maps_rot.shape == ((2, 4, 4, 2, 14, 10) if k % 2 else (2, 4, 4, 2, 10, 14))
    torch.testing.assert_close(maps_rot, expected, rtol=0, atol=1e-6)


def test_direction_maps_match_definition():
    """Hand computation of every (group, direction) map from the group convs, unbatched."""
    block = _block(("pfm", "dpfm"))
    x = torch.randn(1, 8, 9, 12)
    with torch.no_grad():
        maps = block.direction_maps(x)
        for g in range(4):
            xg = x[:, 2 * g : 2 * g + 2]
            for a, angle in enumerate(ANGLES):
                xr = rotate(xg, angle)
                pfm, dpfm = block.branches[0][g].conv[0], block.branches[1][g].conv[0]
                y = F.conv2d(xr, pfm.weight, pfm.bias, padding=pfm.padding)
                y = y + F.conv2d(xr, dpfm.weight, dpfm.bias, padding=dpfm.padding, dilation=dpfm.dilation)
                torch.testing.assert_close(maps[:, g, a], rotate(y, -angle), rtol=1e-5, atol=1e-6)


def test_sum_fusion_block_is_rotation_equivariant():
    block = _block(fusion="sum", dpfm_depth=2)
    x = torch.randn(2, 8, 12, 20)
    with torch.no_grad():
        torch.testing.assert_close(block(rotate(x, 90)), rotate(block(x), 90), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(block(rotate(x, 180)), rotate(block(x), 180), rtol=1e-5, atol=1e-5)


def test_concat_fusion_is_not_rotation_equivariant():
    # the default fusion weights the directions differently: rotating the input changes more than the layout
    block = _block(fusion="concat")
    x = torch.randn(2, 8, 12, 12)
    with torch.no_grad():
        assert not torch.allclose(block(rotate(x, 90)), rotate(block(x), 90), atol=1e-3)


def test_zero_angle_directions_are_identical_copies():
    block = _block(angles=(0, 0, 0, 0))
    with torch.no_grad():
        maps = block.direction_maps(torch.randn(1, 8, 8, 12))
    for a in range(1, 4):
        assert torch.equal(maps[:, :, a], maps[:, :, 0])


@pytest.mark.parametrize("angles, fusion", [(ANGLES, "concat"), ((90,), "concat"), ((0, 180), "sum")])
def test_output_shape_non_square(angles, fusion):
    block = DualRotationBlock(8, 24, angles=angles, fusion=fusion, dpfm_depth=2)
    y = block(torch.randn(2, 8, 7, 13))
    assert y.shape == (2, 24, 7, 13)
    y.sum().backward()


def test_parameter_formula():
    """Each group conv maps C_in/4 -> C_out/8 channels (paper's formula) plus biases; fusion is a 1x1 conv + BN."""
    cin, cout, ks = 16, 32, (1, 3, 5, 7)
    cg, cm = cin // 4, cout // 8

    def count(m):
        return sum(p.numel() for p in m.parameters())

    pfm = DualRotationBlock(cin, cout, branches=("pfm",))
    assert count(pfm.branches) == sum(k * k * cg * cm + cm for k in ks)
    dpfm2 = DualRotationBlock(cin, cout, branches=("dpfm",), dpfm_depth=2)
    assert count(dpfm2.branches) == 4 * (9 * cg * cm + cm + 9 * cm * cm + cm)
    assert count(pfm.fuse) == 16 * cm * cout + 2 * cout  # 4 groups x 4 directions, BN weight + bias
    norot = DualRotationBlock(cin, cout, branches=("pfm",), angles=(0,))
    assert count(norot.fuse) == 4 * cm * cout + 2 * cout
    assert count(norot.branches) == count(pfm.branches)  # directions share the group's weights


def test_dpfm_uses_dilation():
    # the impulse response of a 3x3 conv with dilation d is supported on offsets {-d, 0, d}^2
    conv = PartialConv(1, 1, kernel_size=3, dilation=3)
    with torch.no_grad():
        conv.conv[0].weight.fill_(1.0)
        conv.conv[0].bias.zero_()
        x = torch.zeros(1, 1, 15, 15)
        x[..., 7, 7] = 1
        y = conv(x)[0, 0]
    support = {(int(i) - 7, int(j) - 7) for i, j in torch.nonzero(y)}
    assert support == {(a, b) for a in (-3, 0, 3) for b in (-3, 0, 3)}


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"in_channels": 6}, "in_channels=6 must be divisible"),
        ({"out_channels": 12}, "out_channels=12 must be divisible by map_ratio=8"),
        ({"kernel_size": (1, 2, 5, 7)}, "kernel_size must be odd"),
        ({"dilations": (1, 2)}, "one entry per group"),
        ({"angles": (0, 45)}, "multiples of 90"),
        ({"branches": ("pfm", "conv")}, "branches must be"),
        ({"fusion": "max"}, "fusion must be one of"),
    ],
)
def test_bad_arguments(kwargs, match):
    args = {"in_channels": 8, "out_channels": 16, **kwargs}
    with pytest.raises(ValueError, match=match):
        DualRotationBlock(**args)


def test_wrong_input_channels():
    with pytest.raises(ValueError, match=r"expects \(B, 8, H, W\) input, got shape \(1, 4, 8, 8\)"):
        DualRotationBlock(8, 16)(torch.randn(1, 4, 8, 8))


@pytest.mark.parametrize("shape", [(9, 12), (10, 10)])
def test_unshared_direction_maps_match_definition(shape):
    """Own weights per direction: map[g, a] = rot(-a) conv_{g,a}(rot(a) x_g), by hand from each copy's weights."""
    torch.manual_seed(0)
    block = DualRotationBlock(8, 16, share_weights=False, dpfm_depth=2).eval()
    x = torch.randn(2, 8, *shape)  # non-square: the two rotation parities run as separate grouped convs
    with torch.no_grad():
        maps = block.direction_maps(x)
        for g in range(4):
            xg = x[:, 2 * g : 2 * g + 2]
            for a, angle in enumerate(ANGLES):
                xr = rotate(xg, angle)
                pfm = block.branches[0][g].conv[0]
                y = F.conv2d(
                    xr, pfm.weight.unflatten(0, (4, -1))[a], pfm.bias.unflatten(0, (4, -1))[a], padding=pfm.padding
                )
                d1, d2 = block.branches[1][g].conv[0], block.branches[1][g].conv[2]
                h = F.conv2d(xr, d1.weight.unflatten(0, (4, -1))[a], d1.bias.unflatten(0, (4, -1))[a],
                             padding=d1.padding, dilation=d1.dilation)  # fmt: skip
                h = F.conv2d(F.relu(h), d2.weight.unflatten(0, (4, -1))[a], d2.bias.unflatten(0, (4, -1))[a],
                             padding=d2.padding, dilation=d2.dilation)  # fmt: skip
                torch.testing.assert_close(maps[:, g, a], rotate(y + h, -angle), rtol=1e-5, atol=1e-5)


def test_unshared_weights_have_one_conv_per_direction():
    def count(m):
        return sum(p.numel() for p in m.parameters())

    shared, own = DualRotationBlock(16, 32), DualRotationBlock(16, 32, share_weights=False)
    assert count(own.branches) == 4 * count(shared.branches) and count(own.fuse) == count(shared.fuse)
    # rotation is no constraint without sharing: directions differ even without rotating
    same = DualRotationBlock(8, 16, angles=(0, 0, 0, 0), share_weights=False).eval()
    with torch.no_grad():
        maps = same.direction_maps(torch.randn(1, 8, 8, 8))
    assert not torch.allclose(maps[:, :, 0], maps[:, :, 1])


@pytest.mark.parametrize("share", [True, False])
def test_per_map_residual_adds_a_group_conv_to_every_direction_map(share):
    torch.manual_seed(0)
    block = DualRotationBlock(8, 16, residual_channels=12, share_weights=share).eval()
    x, res = torch.randn(2, 8, 6, 10), torch.randn(2, 12, 6, 10)
    with torch.no_grad():
        plain = block.direction_maps(x, torch.zeros_like(res)) - block.res.bias.view(1, 4, -1, 2, 1, 1)
        maps = block.direction_maps(x, res)
        w = block.res.weight.view(4, -1, 2, 3)  # (group, direction copy, C_out/8, C_res/4)
        for g in range(4):
            for a in range(4):
                conv = torch.einsum("oc,bchw->bohw", w[g, 0 if share else a], res[:, 3 * g : 3 * g + 3])
                bias = block.res.bias.view(4, -1, 2)[g, 0 if share else a].view(1, 2, 1, 1)
                torch.testing.assert_close(maps[:, g, a], plain[:, g, a] + conv + bias, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="per-map residual expects res of shape"):
        block(x)
    with pytest.raises(ValueError, match="residual_channels=6 must be"):
        DualRotationBlock(8, 16, residual_channels=6)
