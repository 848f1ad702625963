"""Generated from the registry: every registered net builds with defaults and runs forward/backward."""

import pytest
import torch

import segzoo
from segzoo.nets import SegNet, build_net, net_example_shape


def _example(name):
    shape = net_example_shape(name)
    return torch.randn(2, *shape) if shape else torch.randn(2, 1, 32, 32)


@pytest.mark.parametrize("name", segzoo.list_nets())
def test_builds_forward_backward(name):
    torch.manual_seed(0)
    net = segzoo.create_net(name)
    x = _example(name)
    net.train()
    out = net(x)
    outs = out if isinstance(out, list | tuple) else [out]
    if getattr(net, "deep_supervision", False):
        assert isinstance(out, list) and len(out) >= 2
        # full resolution first, then each coarser scale
        assert outs[0].shape[2:] == x.shape[2:]
        sizes = [o.shape[2:].numel() for o in outs]
        assert sizes == sorted(sizes, reverse=True)
    else:
        assert isinstance(out, torch.Tensor)
    for o in outs:
        assert o.shape[:2] == (x.shape[0], outs[0].shape[1])
        assert torch.isfinite(o).all()
    sum(o.float().mean() for o in outs).backward()
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)

    net.eval()
    with torch.no_grad():
        y = net(x)
    assert isinstance(y, torch.Tensor)
    assert y.shape[0] == x.shape[0] and y.shape[2:] == x.shape[2:]


@pytest.mark.parametrize("name", segzoo.list_nets())
def test_overrides_and_rebuild(name, tmp_path):
    net = segzoo.create_net(name, out_channels=4)
    assert isinstance(net, SegNet)
    assert net.registry_name == name
    rebuilt = build_net(net.init_config)
    rebuilt.load_state_dict(net.state_dict())
    net.save_pretrained(tmp_path)
    loaded = segzoo.from_pretrained(tmp_path)
    x = _example(name)
    net.eval()
    loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(net(x), loaded(x))
        assert net(x).shape[1] == 4


def test_unknown_net_names_registry():
    with pytest.raises(KeyError, match="unknown net 'nope'"):
        segzoo.create_net("nope")


def test_list_pattern():
    assert all(n.startswith("mss_unet") for n in segzoo.list_nets("mss_unet*"))
    assert "mss_unet3d" in segzoo.list_nets()
