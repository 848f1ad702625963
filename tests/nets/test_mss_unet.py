import pytest
import torch

from segzoo.nets import MSSUNet, create_net


def test_default_kits_config_widths_and_scales():
    net = create_net("mss_unet3d")
    assert net.features == (30, 60, 120, 240, 320)
    assert net.divisor == (8, 16, 16)
    x = torch.randn(1, 1, 16, 32, 32)
    outs = net(x)
    assert [tuple(o.shape[2:]) for o in outs] == [(16, 32, 32), (16, 16, 16), (8, 8, 8), (4, 4, 4)]
    net.eval()
    assert net(x).shape == (1, 3, 16, 32, 32)


def test_heads_always_built_checkpoint_loads_without_deep_supervision():
    ds = create_net("mss_unet3d_small", deep_supervision=True)
    plain = create_net("mss_unet3d_small", deep_supervision=False)
    plain.load_state_dict(ds.state_dict())  # strict: same keys
    plain.train()
    assert isinstance(plain(torch.randn(1, 1, 16, 32, 32)), torch.Tensor)


def test_num_ds_heads_limits_outputs():
    net = create_net("mss_unet3d_small", num_ds_heads=2)
    assert len(net(torch.randn(1, 1, 16, 32, 32))) == 2


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="kernel_size"):
        MSSUNet(kernel_size=(3, 3), strides=(1, 2, 2))
    with pytest.raises(ValueError, match="features"):
        MSSUNet(features=(8, 16))
