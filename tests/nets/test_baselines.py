"""2D baselines: U-Net (and its PFM variant), CE-Net, DenseASPP, MS-Dual."""

import pytest
import torch
from torch import nn

import segzoo
from segzoo.nets import CENet, DenseASPP, MSDual, UNet2D
from segzoo.nets.baselines.cenet import DACBlock, RMPBlock
from segzoo.nets.baselines.msdual import ChannelAttention, PositionAttention
from segzoo.nets.blocks import DualRotationBlock

# small widths keep these fast; the registry test covers the default widths
SMALL = {
    "unet2d": lambda **kw: UNet2D(features=(8, 16, 32, 64, 128), **kw),
    "cenet": lambda **kw: CENet(features=(8, 16, 32, 64), layers=(1, 1, 1, 1), **kw),
    "denseaspp": lambda **kw: DenseASPP(
        growth_rate=4, layers=(1, 1, 1, 1), init_features=8, aspp_mid=8, aspp_out=4, **kw
    ),
    "msdual": lambda **kw: MSDual(features=(8, 16, 32, 64), layers=(1, 1, 1, 1), attention_features=8, **kw),
}
DIVISOR = {"unet2d": 16, "cenet": 32, "denseaspp": 8, "msdual": 32}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_non_square_shape_and_size_check(name):
    net = SMALL[name](in_channels=4, out_channels=3).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 4, 64, 96)).shape == (1, 3, 64, 96)
    with pytest.raises(ValueError, match=f"divisible by {DIVISOR[name]}"):
        net(torch.randn(1, 4, 64 + DIVISOR[name] // 2, 64))
    with pytest.raises(ValueError, match="spatial_dims must be 2"):
        SMALL[name](spatial_dims=3)


@pytest.mark.parametrize("name", ["unet2d", "cenet", "denseaspp", "msdual"])
def test_registered_defaults(name):
    net = segzoo.create_net(name, in_channels=4, out_channels=4)
    assert net.init_config["init_args"]["in_channels"] == 4
    first = next(m for m in net.modules() if isinstance(m, nn.Conv2d))
    assert first.in_channels == 4


def test_unet_pfm_replaces_all_but_the_first_conv():
    plain, pfm = segzoo.create_net("unet2d"), segzoo.create_net("unet_pfm")
    assert not any(isinstance(m, DualRotationBlock) for m in plain.modules())
    first, second = pfm.down[0]
    assert isinstance(first[0], nn.Conv2d) and first[0].kernel_size == (3, 3)
    assert isinstance(second, DualRotationBlock)
    blocks = [m for m in pfm.modules() if isinstance(m, DualRotationBlock)]
    assert len(blocks) == 2 * (len(pfm.down) + len(pfm.up)) - 1
    assert {b.branch_kinds for b in blocks} == {("pfm",)} and {b.angles for b in blocks} == {(0, 90, 180, 270)}
    n_plain, n_pfm = (sum(p.numel() for p in n.parameters()) for n in (plain, pfm))
    assert n_pfm < 0.6 * n_plain  # the paper: "the number of parameters is greatly reduced"


def test_dac_receptive_field_is_19():
    """Branch 4 cascades 3x3 convs with dilations 1, 3, 5: receptive field 1 + 2 * (1 + 3 + 5) = 19."""
    dac = DACBlock(1)
    with torch.no_grad():
        for conv in (dac.dilate1, dac.dilate2, dac.dilate3, dac.conv1x1):
            conv.weight.fill_(0.1)
            conv.bias.zero_()
    x = torch.ones(1, 1, 41, 41, requires_grad=True)  # positive pre-activations: every ReLU passes gradient
    dac(x)[0, 0, 20, 20].backward()
    rows = torch.nonzero(x.grad[0, 0].abs().sum(dim=1)).flatten()
    assert (rows.min().item(), rows.max().item()) == (20 - 9, 20 + 9)


def test_rmp_block_channels_and_small_inputs():
    rmp = RMPBlock(6)
    x = torch.randn(2, 6, 12, 12)
    y = rmp(x)
    assert y.shape == (2, 10, 12, 12)
    torch.testing.assert_close(y[:, :6], x)
    # kernel 2 on a 12x12 map: 6x6 pooled map, upsampled; a 2x2 map clamps kernels 3, 5, 6 to 2
    assert rmp(torch.randn(1, 6, 2, 2)).shape == (1, 10, 2, 2)


def test_position_attention_matches_hand_computation():
    torch.manual_seed(0)
    pam = PositionAttention(16)
    with torch.no_grad():
        pam.gamma.fill_(0.5)
        x = torch.randn(2, 16, 5, 7)
        q, k, v = (conv(x).flatten(2) for conv in (pam.query, pam.key, pam.value))  # (B, C', N)
        attn = torch.softmax(q.transpose(1, 2) @ k, dim=-1)  # (B, N, N), rows: query positions
        expected = x + 0.5 * (v @ attn.transpose(1, 2)).view_as(x)
        torch.testing.assert_close(pam(x), expected, rtol=1e-4, atol=1e-5)


def test_channel_attention_matches_hand_computation():
    cam = ChannelAttention()
    with torch.no_grad():
        cam.gamma.fill_(2.0)
        x = torch.randn(2, 4, 3, 5)
        f = x.flatten(2)
        e = f @ f.transpose(1, 2)
        attn = torch.softmax(e.max(dim=-1, keepdim=True).values - e, dim=-1)
        torch.testing.assert_close(cam(x), x + 2.0 * (attn @ f).view_as(x))


def test_attention_starts_as_identity():
    x = torch.randn(1, 8, 4, 4)
    torch.testing.assert_close(PositionAttention(8)(x), x)
    torch.testing.assert_close(ChannelAttention()(x), x)


def test_denseaspp_output_stride_8_and_dense_head():
    net = SMALL["denseaspp"](in_channels=1, out_channels=2)
    feat = net.backbone(torch.randn(1, 1, 64, 64))
    assert feat.shape[-2:] == (8, 8)
    assert net.classifier[1].in_channels == feat.shape[1] + 5 * 4  # 5 atrous layers of aspp_out=4 channels
    convs = [[m for m in layer if isinstance(m, nn.Conv2d)] for layer in net.aspp]
    assert [c[1].dilation[0] for c in convs] == [3, 6, 12, 18, 24]
    # original code: the first atrous layer starts with its 1x1 conv (bn_start=False), the others with BN-ReLU
    assert isinstance(net.aspp[0][0], nn.Conv2d) and all(isinstance(layer[0], nn.BatchNorm2d) for layer in net.aspp[1:])
    # and the backbone ends with a BN, no ReLU: its output has negative values
    assert isinstance(net.backbone[-1], nn.BatchNorm2d) and (feat < 0).any()


def test_unet_dropout_ends_the_contracting_path():
    net = SMALL["unet2d"](in_channels=1, out_channels=2)
    assert [type(d).__name__ for d in net.drop] == ["Identity", "Identity", "Identity", "Dropout", "Dropout"]
    assert net.drop[-1].p == 0.5
    x = torch.randn(1, 1, 32, 32)
    net.eval()
    with torch.no_grad():
        y = net(x)
        net.train()
        assert not torch.allclose(net(x), net(x))  # dropout is active in training
        assert all(isinstance(d, nn.Identity) for d in SMALL["unet2d"](dropout=0.0).drop)
    assert y.shape == (1, 2, 32, 32)


def test_msdual_follows_the_original_code():
    net = SMALL["msdual"](in_channels=1, out_channels=3)
    assert not hasattr(net, "refine") and len(net.step1) == 4
    # one semantic encoder-decoder per step, shared by the four scales
    calls = []
    net.semantic1.register_forward_hook(lambda m, a, o: calls.append(1))
    net(torch.randn(1, 1, 64, 64))
    assert len(calls) == 4
    # PReLU throughout; PAM and CAM between 3x3 conv-norm-act layers
    assert any(isinstance(m, nn.PReLU) for m in net.modules()) and not any(
        isinstance(m, nn.ReLU) for m in net.modules()
    )
    for branch in (net.step1[0].pam, net.step1[0].cam):
        assert isinstance(branch[1], PositionAttention | ChannelAttention)
        assert branch[0][0].kernel_size == (3, 3) and branch[2][0].kernel_size == (3, 3)
