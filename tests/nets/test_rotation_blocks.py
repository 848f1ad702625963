"""PFM / DPFM dual-rotation blocks: rotation behaviour, shapes, parameter formula, errors."""

import pytest
import torch
import torch.nn.functional as F

from segzoo.nets.blocks import DualRotationBlock, PartialConv, rotate

ANGLES = (0, 90, 180, 270)


def _randomise_norms(module):
    """Random running statistics and affine weights, so that an eval-mode norm is not the identity."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 2.0)
                m.bias.normal_()
    return module


def _block(branches=("pfm", "dpfm"), **kw):
    torch.manual_seed(0)
    return _randomise_norms(DualRotationBlock(8, 16, branches=branches, **kw).eval())


def _norm_act(block, y, g, a):
    """The block's map norm + ReLU applied by hand to the map ``y`` of group ``g``, direction ``a``."""
    bn = block.map_norm[0]
    c = y.shape[1]
    first = (g * (1 if block.share_weights else len(block.angles)) + (0 if block.share_weights else a)) * c
    sl = slice(first, first + c)
    scale = (bn.weight[sl] / torch.sqrt(bn.running_var[sl] + bn.eps)).view(1, -1, 1, 1)
    return F.relu((y - bn.running_mean[sl].view(1, -1, 1, 1)) * scale + bn.bias[sl].view(1, -1, 1, 1))


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


@pytest.mark.parametrize("map_norm_act", [True, False])
def test_direction_maps_match_definition(map_norm_act):
    """Hand computation of every (group, direction) map from the group convs (and the map norm), unbatched."""
    block = _block(("pfm", "dpfm"), map_norm_act=map_norm_act)
    x = torch.randn(1, 8, 9, 12)
    with torch.no_grad():
        maps = block.direction_maps(x)
        for g in range(4):
            xg = x[:, 2 * g : 2 * g + 2]
            for a, angle in enumerate(ANGLES):
                xr = rotate(xg, angle)
                pfm, dpfm = block.branches[0][g].conv[0], block.branches[1][g].conv[0]
                assert (pfm.bias is None) == map_norm_act  # a norm follows: no bias
                y = F.conv2d(xr, pfm.weight, pfm.bias, padding=pfm.padding)
                y = y + F.conv2d(xr, dpfm.weight, dpfm.bias, padding=dpfm.padding, dilation=dpfm.dilation)
                y = rotate(y, -angle)
                expected = _norm_act(block, y, g, a) if map_norm_act else y
                torch.testing.assert_close(maps[:, g, a], expected, rtol=1e-5, atol=1e-5)


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
    """Each group conv maps C_in/4 -> C_out/8 channels (paper's formula); the maps' BN replaces the last convs'
    biases; fusion is a 1x1 conv + BN."""
    cin, cout, ks = 16, 32, (1, 3, 5, 7)
    cg, cm = cin // 4, cout // 8

    def count(m):
        return sum(p.numel() for p in m.parameters())

    pfm = DualRotationBlock(cin, cout, branches=("pfm",))
    assert count(pfm.branches) == sum(k * k * cg * cm for k in ks)
    assert count(pfm.map_norm) == 2 * 4 * cm  # one BN channel per (group, channel), shared by the directions
    linear = DualRotationBlock(cin, cout, branches=("pfm",), map_norm_act=False)
    assert count(linear.branches) == sum(k * k * cg * cm + cm for k in ks) and linear.map_norm is None
    dpfm2 = DualRotationBlock(cin, cout, branches=("dpfm",), dpfm_depth=2)
    assert count(dpfm2.branches) == 4 * (9 * cg * cm + cm + 9 * cm * cm)  # the inner conv keeps its bias
    # two branches: the 2 * 4 * cm biases dropped equal the BN's weight + bias, so the count is unchanged
    both, both_linear = DualRotationBlock(cin, cout), DualRotationBlock(cin, cout, map_norm_act=False)
    assert count(both) == count(both_linear)
    unshared = DualRotationBlock(cin, cout, branches=("pfm",), share_weights=False)
    assert count(unshared.map_norm) == 2 * 16 * cm  # own norm per direction
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
    block = _randomise_norms(DualRotationBlock(8, 16, share_weights=False, dpfm_depth=2).eval())
    x = torch.randn(2, 8, *shape)  # non-square: the two rotation parities run as separate grouped convs
    with torch.no_grad():
        maps = block.direction_maps(x)
        for g in range(4):
            xg = x[:, 2 * g : 2 * g + 2]
            for a, angle in enumerate(ANGLES):
                xr = rotate(xg, angle)
                pfm = block.branches[0][g].conv[0]
                y = F.conv2d(xr, pfm.weight.unflatten(0, (4, -1))[a], padding=pfm.padding)
                d1, d2 = block.branches[1][g].conv[0], block.branches[1][g].conv[2]
                h = F.conv2d(xr, d1.weight.unflatten(0, (4, -1))[a], d1.bias.unflatten(0, (4, -1))[a],
                             padding=d1.padding, dilation=d1.dilation)  # fmt: skip
                h = F.conv2d(F.relu(h), d2.weight.unflatten(0, (4, -1))[a], padding=d2.padding,
                             dilation=d2.dilation)  # fmt: skip
                expected = _norm_act(block, rotate(y + h, -angle), g, a)  # own norm per direction
                torch.testing.assert_close(maps[:, g, a], expected, rtol=1e-5, atol=1e-5)


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
    block = _randomise_norms(DualRotationBlock(8, 16, residual_channels=12, share_weights=share).eval())
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


def _fold_residual_into_pfm(block):
    """For a residual input equal to ``x``: add each group's residual 1x1 conv to the centre tap (and bias) of that
    group's PFM conv and zero the residual conv. Exact when the maps are linear up to the residual."""
    with torch.no_grad():
        w = block.res.weight.unflatten(0, (block.groups, -1))  # (G, C_out/8, C_in/G, 1, 1), shared weights
        b = block.res.bias.unflatten(0, (block.groups, -1))
        for g, pconv in enumerate(block.branches[0]):
            conv = pconv.conv[0]
            k = conv.kernel_size[0] // 2
            conv.weight[:, :, k, k] += w[g, :, :, 0, 0]
            if conv.bias is not None:
                conv.bias += b[g]
        block.res.weight.zero_()
        block.res.bias.zero_()


@pytest.mark.parametrize("map_norm_act", [True, False])
def test_per_map_residual_folds_into_the_branches_only_when_the_maps_are_linear(map_norm_act):
    # issue 25: with linear maps (segzoo before) the residual of x itself, the encoder's case, is one more centre tap
    # of the PFM conv, i.e. no path at all; with norm + act on the maps it goes around a nonlinearity
    block = _block(residual_channels=8, map_norm_act=map_norm_act, dpfm_depth=2)
    x = torch.randn(2, 8, 10, 12)
    with torch.no_grad():
        y = block(x, x)
        _fold_residual_into_pfm(block)
        folded = block(x, x)
    if map_norm_act:
        assert (folded - y).abs().max() > 0.1
    else:
        torch.testing.assert_close(folded, y, rtol=1e-5, atol=1e-5)


def test_per_map_residual_cannot_be_folded_into_the_branches():
    # without the residual a direction map is act(norm(.)) >= 0 (ReLU) whatever the branch and norm weights; with it
    # the maps take negative values, so no choice of those weights reproduces them (the linear maps of
    # map_norm_act=False fold exactly, test above)
    block = _block(residual_channels=8, dpfm_depth=2)
    x = torch.randn(2, 8, 10, 12)
    with torch.no_grad():
        with_res = block.direction_maps(x, x)
        assert with_res.min() < -0.1
        for seed in range(3):  # any other branch and norm weights: never negative without the residual
            torch.manual_seed(seed)
            for p in [*block.branches.parameters(), *block.map_norm.parameters()]:
                p.normal_()
            block.res.weight.zero_()
            block.res.bias.zero_()
            assert block.direction_maps(x, x).min() >= 0
