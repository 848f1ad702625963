"""DR-Net: parameter count, shapes, the ablation variants, and a tiny overfit."""

import pytest
import torch
from torch import nn

import segzoo
from segzoo.nets import DRNet
from segzoo.nets.blocks import DualRotationBlock


def _count(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _blocks(net: nn.Module) -> list[DualRotationBlock]:
    return [m for m in net.modules() if isinstance(m, DualRotationBlock)]


def _convs(net: nn.Module) -> list[nn.Conv2d]:
    return [m for m in net.modules() if isinstance(m, nn.Conv2d)]


@pytest.mark.parametrize("kwargs, paper", [({}, 2_700_581), ({"in_channels": 4, "out_channels": 4}, 2_704_156)])
def test_parameter_count_near_paper(kwargs, paper):
    n = _count(segzoo.create_net("drnet", **kwargs))
    assert abs(n - paper) / paper < 0.10
    # pinned so that an unintended architecture change shows up
    assert n == {2_700_581: 2_790_309, 2_704_156: 2_791_140}[paper]


def test_layout():
    net = segzoo.create_net("drnet")
    blocks = _blocks(net)
    assert len(blocks) == 8  # encoder 2-5 and decoder 1-4
    for b in blocks:
        assert b.angles == (0, 90, 180, 270) and b.branch_kinds == ("pfm", "dpfm")
    depth = [len([m for m in b.branches[1][0].conv if isinstance(m, nn.Conv2d)]) for b in blocks]
    assert depth == [1, 1, 2, 2, 2, 2, 1, 1]  # encoder 2, 3, 4, 5, decoder 1, 2, 3, 4
    assert not any(isinstance(m, DualRotationBlock) for m in net.enc1.modules())
    assert not any(isinstance(m, DualRotationBlock) for m in net.dec5.modules())


def test_non_square_input_and_errors():
    net = DRNet(in_channels=2, out_channels=3, features=(8, 16, 32, 64, 128)).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 2, 32, 48)).shape == (1, 3, 32, 48)
    with pytest.raises(ValueError, match="divisible by 16"):
        net(torch.randn(1, 2, 40, 48))
    with pytest.raises(ValueError, match="spatial_dims must be 2"):
        DRNet(spatial_dims=3)
    with pytest.raises(ValueError, match="5 encoder widths"):
        DRNet(features=(32, 64, 128, 256))
    with pytest.raises(ValueError, match="skip_fusion"):
        DRNet(skip_fusion="max")


@pytest.mark.parametrize(
    "name, angles", [("drnet_norot", (0, 0, 0, 0)), ("drnet_rot0", (0,)), ("drnet_rot90", (90,)), ("drnet_rot180", (180,)),
                     ("drnet_rot270", (270,))]
)  # fmt: skip
def test_rotation_ablations(name, angles):
    net = segzoo.create_net(name)
    assert {b.angles for b in _blocks(net)} == {angles}
    # same group convs as DR-Net; only the fusion input shrinks when there is a single direction
    default = segzoo.create_net("drnet")
    assert _count(nn.ModuleList(b.branches for b in _blocks(net))) == _count(
        nn.ModuleList(b.branches for b in _blocks(default))
    )
    assert (_count(net) == _count(default)) == (len(angles) == 4)


def test_convolution_ablations():
    default = segzoo.create_net("drnet")
    assert max(c.dilation[0] for c in _convs(default)) == 4 and max(c.kernel_size[0] for c in _convs(default)) == 7

    pfm = segzoo.create_net("drnet_pfm")
    assert {b.branch_kinds for b in _blocks(pfm)} == {("pfm", "pfm")}
    assert all(c.dilation == (1, 1) for c in _convs(pfm))

    dpfm = segzoo.create_net("drnet_dpfm")
    assert {b.branch_kinds for b in _blocks(dpfm)} == {("dpfm", "dpfm")}
    block_convs = [c for b in _blocks(dpfm) for c in b.branches.modules() if isinstance(c, nn.Conv2d)]
    assert all(c.kernel_size == (3, 3) for c in block_convs)
    assert {c.dilation[0] for c in block_convs} == {1, 2, 3, 4}


def test_no_residual_ablation():
    nores, default = segzoo.create_net("drnet_nores"), segzoo.create_net("drnet")
    residual_params = sum(_count(m) for m in [*default.enc_res, *default.dec_res, default.dec5_res])
    assert residual_params > 0
    assert _count(nores) == _count(default) - residual_params
    assert all(isinstance(m, nn.Identity) for m in [*nores.enc_res, *nores.dec_res, nores.dec5_res])


def test_residual_paths_change_the_output():
    torch.manual_seed(0)
    net = DRNet(features=(8, 16, 32, 64, 128)).eval()
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        y = net(x)
        for m in [*net.enc_res, *net.dec_res, net.dec5_res]:
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)
        y_zero = net(x)
        net.residual = False
        torch.testing.assert_close(net(x), y_zero)  # zeroed residual convs == no residual paths
    assert not torch.allclose(y, y_zero)


@pytest.mark.slow
def test_tiny_overfit_lowers_cross_entropy():
    torch.manual_seed(0)
    # the drnet layout at 1/4 width keeps this fast on a CPU; the paper's optimiser settings
    net = segzoo.create_net("drnet", out_channels=3, features=(8, 16, 32, 64, 128))
    x = torch.randn(2, 1, 64, 64)
    y = torch.zeros(2, 64, 64, dtype=torch.long)
    y[:, 16:40, 20:48] = 1
    y[:, 44:60, 8:24] = 2
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, betas=(0.9, 0.999))
    net.train()
    losses = []
    for _ in range(5):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses
