"""``conv_norm_act``: MONAI's ``Convolution`` as the oracle, as flat layers (the state-dict keys of saved nets)."""

import pytest
import torch
from monai.networks.blocks import Convolution
from torch import nn

from segzoo.nets.blocks import conv_norm_act

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(
    ("kwargs", "monai_kwargs"),
    [
        ({"kernel_size": 3}, {"kernel_size": 3, "bias": False}),
        ({"kernel_size": 7, "stride": 2}, {"kernel_size": 7, "strides": 2, "bias": False}),
        ({"kernel_size": 3, "dilation": 3}, {"kernel_size": 3, "dilation": 3, "bias": False}),
        ({"kernel_size": 1, "bias": True}, {"kernel_size": 1, "bias": True}),
        (
            {"kernel_size": 3, "stride": 2, "bias": True, "is_transposed": True},
            {"kernel_size": 3, "strides": 2, "bias": True, "is_transposed": True},
        ),
    ],
)
def test_conv_norm_act_is_monai_convolution_flattened(kwargs, monai_kwargs):
    torch.manual_seed(0)
    ours = nn.Sequential(*conv_norm_act(4, 8, norm="batch", act="prelu", **kwargs))
    oracle = Convolution(2, 4, 8, norm="batch", act="prelu", **monai_kwargs)
    # the same layers, only named differently: MONAI nests them as conv / adn.N / adn.A
    assert [type(m) for m in ours] == [type(oracle.conv), type(oracle.adn.N), type(oracle.adn.A)]
    names = {"0.": "conv.", "1.": "adn.N.", "2.": "adn.A."}
    oracle.load_state_dict({names[k[:2]] + k[2:]: v for k, v in ours.state_dict().items()})
    with torch.no_grad():
        for m in (ours, oracle):
            m.train()
        x = torch.randn(2, 4, 12, 10)
        torch.testing.assert_close(ours(x), oracle(x), rtol=0, atol=0)


def test_conv_norm_act_options():
    pre = conv_norm_act(4, 8, 1, norm="batch", act="relu", preactivation=True)
    assert [type(m) for m in pre] == [nn.BatchNorm2d, nn.ReLU, nn.Conv2d] and pre[0].num_features == 4
    assert [type(m) for m in conv_norm_act(4, 8, norm=None, act=None)] == [nn.Conv2d]
    conv3d, norm3d, _ = conv_norm_act(2, 3, spatial_dims=3, norm="instance")
    assert isinstance(conv3d, nn.Conv3d) and isinstance(norm3d, nn.InstanceNorm3d)
    up = nn.Sequential(*conv_norm_act(4, 4, 3, stride=2, is_transposed=True))
    assert up(torch.randn(1, 4, 5, 7)).shape[2:] == (10, 14)
