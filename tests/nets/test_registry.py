"""Generated from the registry (timm style): every registered net builds, runs forward/backward and round-trips.

Unit tests build each net at tiny widths (``TINY``: a new registered net needs an entry, the first test says so);
the paper-width builds are marked slow.
"""

import fnmatch
import hashlib
import json
import math
from pathlib import Path

import pytest
import torch

import segzoo
from segzoo.nets import SegNet, build_net, net_example_shape

OUT = 3  # out_channels every net is built with; no registered default uses 3 for a 2D net, so it must be obeyed

# tiny widths per family, keyed by registry-name pattern (first match wins)
TINY = {
    "mss_unet*": {"base_features": 4, "max_features": 16},
    "drnet*": {"features": (8, 16, 32, 64, 128)},
    "unet2d": {"features": (8, 16, 32, 64, 128)},
    "unet_pfm": {"features": (8, 16, 32, 64, 128)},
    "cenet": {"features": (8, 16, 32, 64), "layers": (1, 1, 1, 1)},
    "denseaspp": {"growth_rate": 4, "layers": (1, 1, 1, 1), "init_features": 8, "aspp_mid": 8, "aspp_out": 4},
    "msdual": {"features": (8, 16, 32, 64), "layers": (1, 1, 1, 1), "attention_features": 8},
}


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_kwargs(name: str) -> dict:
    for pattern, kwargs in TINY.items():
        if fnmatch.fnmatch(name, pattern):
            return dict(kwargs)
    raise KeyError(name)


def _example(name, batch=2):
    return torch.randn(batch, *net_example_shape(name))


def test_every_registered_net_has_tiny_widths_and_an_example_shape():
    missing = [n for n in segzoo.list_nets() if not any(fnmatch.fnmatch(n, p) for p in TINY)]
    assert missing == [], f"add tiny widths for {missing} to TINY in tests/nets/test_registry.py"
    assert all(net_example_shape(n) for n in segzoo.list_nets())


def _check_forward_backward(net, x):
    torch.manual_seed(0)
    with torch.no_grad():  # zero-initialised gates (DANet's attention gamma) close their branch at init, by design
        for p in net.parameters():
            if p.numel() and not bool(p.any()):
                p.normal_(std=0.1)
    net.train()
    out = net(x)
    outs = out if isinstance(out, list) else [out]
    if net.deep_supervision:
        assert isinstance(out, list) and len(out) >= 2
        assert outs[0].shape[2:] == x.shape[2:]  # full resolution first, then each coarser scale
        sizes = [o.shape[2:].numel() for o in outs]
        assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == len(sizes)
    else:
        assert isinstance(out, torch.Tensor) and out.shape[2:] == x.shape[2:]
    for o in outs:
        assert tuple(o.shape[:2]) == (x.shape[0], OUT)  # every output, not only the first
        assert torch.isfinite(o).all()
    # random weights per output element: no parameter can hide behind a symmetric loss
    loss = sum((o * torch.randn(o.shape, generator=torch.Generator().manual_seed(i))).sum() for i, o in enumerate(outs))
    loss.backward()
    no_grad = [n for n, p in net.named_parameters() if p.requires_grad and p.grad is None]
    assert no_grad == [], f"parameters outside the graph: {no_grad[:5]}"
    # every weight tensor moves; a 1-D bias right before a normalisation has a gradient of exactly 0 in theory
    zero = [n for n, p in net.named_parameters() if p.requires_grad and p.ndim > 1 and not bool(p.grad.abs().sum() > 0)]
    assert zero == [], f"weights with an all-zero gradient: {zero[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())

    net.eval()
    with torch.no_grad():
        y = net(x)
    assert isinstance(y, torch.Tensor) and tuple(y.shape) == (x.shape[0], OUT, *x.shape[2:])


@pytest.mark.parametrize("name", segzoo.list_nets())
def test_tiny_builds_forward_backward(name):
    torch.manual_seed(0)
    net = segzoo.create_net(name, out_channels=OUT, **tiny_kwargs(name))
    _check_forward_backward(net, _example(name))


@pytest.mark.slow
@pytest.mark.parametrize("name", segzoo.list_nets())
def test_paper_width_builds_forward_backward(name):
    net = segzoo.create_net(name, out_channels=OUT)
    _check_forward_backward(net, _example(name))  # batch 2: batch norm at 1x1 needs more than one value


@pytest.mark.parametrize("name", segzoo.list_nets())
def test_overrides_and_rebuild(name, tmp_path):
    net = segzoo.create_net(name, out_channels=4, **tiny_kwargs(name))
    assert isinstance(net, SegNet)
    assert net.registry_name == name
    rebuilt = build_net(net.init_config)
    rebuilt.load_state_dict(net.state_dict())
    net.save_pretrained(tmp_path)
    loaded = segzoo.from_pretrained(tmp_path)
    assert loaded.registry_name == name
    x = _example(name)
    net.eval()
    loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(net(x), loaded(x))
        assert net(x).shape[1] == 4


# state-dict keys and shapes of every registered net at its tiny widths, as saved checkpoints hold them; a refactor
# that renames a module (e.g. nesting conv-norm-act in MONAI's Convolution) breaks loading and fails here
STATE_DICT_KEYS = json.loads((Path(__file__).parent / "state_dict_keys.json").read_text())


@pytest.mark.parametrize("name", segzoo.list_nets())
def test_state_dict_keys_are_those_of_saved_checkpoints(name):
    net = segzoo.create_net(name, **tiny_kwargs(name))
    text = "\n".join(f"{k} {tuple(v.shape)}" for k, v in net.state_dict().items())
    assert name in STATE_DICT_KEYS, f"record {name} in {Path(__file__).parent / 'state_dict_keys.json'}"
    stored = STATE_DICT_KEYS[name]
    assert (len(net.state_dict()), hashlib.sha256(text.encode()).hexdigest()) == (stored["keys"], stored["sha256"]), (
        f"{name}: state-dict keys or shapes changed, so checkpoints saved before no longer load"
    )


@pytest.mark.parametrize("name", segzoo.list_nets())
def test_input_size_check_from_the_divisor(name):
    """SegNet checks every input against the net's divisor: one clear error naming the net."""
    net = segzoo.create_net(name, **tiny_kwargs(name)).eval()
    shape = net_example_shape(name)
    divisor = net.divisor if isinstance(net.divisor, tuple) else (net.divisor,) * (len(shape) - 1)
    assert all(s % d == 0 for s, d in zip(shape[1:], divisor))  # the example shape is a valid input
    axis = max(range(len(divisor)), key=lambda a: divisor[a])
    if divisor[axis] == 1:
        pytest.skip("no downsampling: every size is valid")
    bad = list(shape)
    bad[1 + axis] += divisor[axis] // 2
    with pytest.raises(ValueError, match=rf"{type(net).__name__} expects .* divisible by"):
        net(torch.randn(1, *bad))
    with pytest.raises(ValueError, match="expects"):
        net(torch.randn(1, *shape)[0])  # no batch axis


@pytest.mark.parametrize("name", segzoo.list_nets())
def test_spatial_dims_outside_the_supported_ones_are_refused_by_segnet(name):
    net = segzoo.create_net(name, **tiny_kwargs(name))
    assert net.spatial_dims in net.supported_spatial_dims
    with pytest.raises(ValueError, match=rf"{type(net).__name__} is .*D: spatial_dims must be .*, got 4"):
        segzoo.create_net(name, spatial_dims=4, **tiny_kwargs(name))


def test_deep_supervision_contract_is_enforced():
    class Broken(SegNet):
        deep_supervision = True

        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 2, 1)

        def forward(self, x):
            return self.conv(x)  # a tensor where the contract wants a list in training mode

    net = Broken()
    with pytest.raises(RuntimeError, match="list of logits"):
        net(torch.randn(1, 1, 4, 4))
    net.eval()
    assert net(torch.randn(1, 1, 4, 4)).shape == (1, 2, 4, 4)


def mss_unet_parameter_count(in_channels, out_channels, kernel_size, strides, features):
    """Parameters of MSSUNet from its widths and kernels, by hand (MONAI dynunet blocks: convs without bias,
    instance norm with affine weight and bias, transposed convs without bias, 1x1 heads with bias).

    Encoder level i: two k_i convs (cin -> f_i, f_i -> f_i) + two norms. Decoder to level i: transposed conv
    f_{i+1} -> f_i with kernel = stride_{i+1}, then two k_i convs (2 f_i -> f_i, f_i -> f_i) + two norms. A head per
    level below the bottleneck: f_i * out + out.
    """
    n = 3

    def vol(k):
        return math.prod((k,) * n if isinstance(k, int) else k)

    total, cin = 0, in_channels
    for k, f in zip(kernel_size, features):
        total += cin * f * vol(k) + f * f * vol(k) + 4 * f
        cin = f
    for i in range(len(features) - 1):
        f, up = features[i], features[i + 1]
        total += up * f * vol(strides[i + 1]) + 2 * f * f * vol(kernel_size[i]) + f * f * vol(kernel_size[i]) + 4 * f
        total += f * out_channels + out_channels
    return total


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kernel_size": [3, 3, 3], "strides": [1, 2, 2], "features": [4, 8, 16]},
        {"kernel_size": [[1, 3, 3], 3], "strides": [1, [1, 2, 2]], "features": [5, 7], "in_channels": 2},
    ],
)
def test_mss_unet_parameter_count_formula_small(kwargs):
    net = segzoo.nets.MSSUNet(out_channels=3, **kwargs)
    args = {"in_channels": 1, **kwargs}
    assert sum(p.numel() for p in net.parameters()) == mss_unet_parameter_count(out_channels=3, **args)


def test_mss_unet3d_parameter_count_from_the_paper_widths():
    """The paper's KiTS19 net (widths 30-320, anisotropic first levels): the count `segzoo nets` and the docs quote."""
    from segzoo.nets.mss_unet import KITS19_KERNELS, KITS19_STRIDES, default_features

    expected = mss_unet_parameter_count(1, 3, KITS19_KERNELS, KITS19_STRIDES, default_features(5, 30, 320))
    net = segzoo.create_net("mss_unet3d")
    assert sum(p.numel() for p in net.parameters()) == expected == 14_680_712


def test_unknown_net_names_registry():
    with pytest.raises(KeyError, match="unknown net 'nope'"):
        segzoo.create_net("nope")


def test_list_pattern():
    assert all(n.startswith("mss_unet") for n in segzoo.list_nets("mss_unet*"))
    assert "mss_unet3d" in segzoo.list_nets()
