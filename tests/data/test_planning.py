"""Planning: nnU-Net's rules by hand, and the KiTS19 recipe's hand topology from KiTS-like spacing."""

import pytest
import yaml

from segzoo.data.planning import estimate_memory_gb, normalization_for, plan_dataset, plan_topology, target_spacing
from segzoo.recipes import recipe_files


def test_normalization_by_channel_name():
    assert [normalization_for(n) for n in ("CT", "ct", "T2", "FLAIR", "noNorm", "rescale_to_0_1")] == [
        "ct",
        "ct",
        "zscore",
        "zscore",
        "none",
        "rescale_0_1",
    ]


def test_target_spacing_anisotropy_rule():
    # median (3.0, 0.8, 0.8) and a coarse axis 3.75x the finest with few slices: the 10th percentile of that axis
    spacings = [[z, 0.8, 0.8] for z in (1.0, 2.0, 3.0, 3.0, 5.0)]
    shapes = [[40, 512, 512]] * 5
    assert target_spacing(spacings, shapes) == pytest.approx([1.4, 0.8, 0.8])
    # isotropic enough: the median
    assert target_spacing([[1.0, 1.0, 1.2], [1.0, 1.0, 1.0]], [[100, 100, 100]] * 2) == pytest.approx([1.0, 1.0, 1.1])


def test_kits_like_spacing_gives_the_kits19_recipe_topology():
    topo = plan_topology([48, 192, 192], [3.0, 0.78125, 0.78125], max_levels=5)
    assert topo["strides"] == [1, [1, 2, 2], 2, 2, 2]
    assert topo["kernel_size"] == [[1, 3, 3], 3, 3, 3, 3]
    (path,) = recipe_files("kits19")
    net = yaml.safe_load(path.read_text())["model"]["net"]["init_args"]
    assert net["strides"] == topo["strides"]
    # the one documented departure (docs/data/own_data.md): the recipe keeps in-plane kernels at level 1, where the
    # pooled in-plane spacing (1.5625 mm) is within 2x of the slices (3 mm), so nnU-Net's rule gives 3x3x3
    assert net["kernel_size"][1] == [1, 3, 3] and topo["kernel_size"][1] == 3
    assert net["kernel_size"][:1] + net["kernel_size"][2:] == topo["kernel_size"][:1] + topo["kernel_size"][2:]


def test_levels_until_the_feature_map_is_small():
    topo = plan_topology([48, 192, 192], [3.0, 0.78125, 0.78125], max_levels=None)
    assert len(topo["strides"]) == 6 and topo["divisor"] == [8, 32, 32]  # 48 / 8 = 6 and 192 / 32 = 6 >= 4
    assert plan_topology([20, 20, 20], [1, 1, 1], max_levels=None)["strides"] == [1, 2, 2]  # 20 -> 10 -> 5 < 8: stop


def test_patch_fits_the_memory_budget():
    fp = {"spacings": [[1.0, 1.0, 1.0]] * 3, "shapes": [[300, 300, 300]] * 3}
    big = plan_dataset(fp, ["CT"], memory_budget_gb=8.0)
    small = plan_dataset(fp, ["CT"], memory_budget_gb=1.0)
    assert big["estimated_memory_gb"] <= 8.0 and small["estimated_memory_gb"] <= 1.0
    assert small["patch_size"] < big["patch_size"] or sum(small["patch_size"]) < sum(big["patch_size"])
    for plan in (big, small):
        assert all(p % d == 0 for p, d in zip(plan["patch_size"], plan["divisor"]))
        mem = estimate_memory_gb(plan["patch_size"], plan["strides"], 2, 30, 320)
        assert abs(mem - plan["estimated_memory_gb"]) < 1e-3
