"""Packaged recipes: names, composition of a dataset base with a net fragment, show/copy, --config resolution."""

from pathlib import Path

import pytest
import yaml

from segzoo.cli import main
from segzoo.recipes import copy_recipe, list_recipes, recipe_files, recipe_root, recipe_text, resolve_config_arg

ROOT = Path(__file__).resolve().parents[1] / "configs"


def test_every_yaml_is_a_recipe_or_a_fragment():
    files = {p.relative_to(ROOT).with_suffix("").as_posix() for p in ROOT.rglob("*.yaml")}
    names = set(list_recipes(include_fragments=True))
    assert files <= names
    fragments = {f for f in files if f.startswith("nets/")}
    assert fragments and not fragments & set(list_recipes())
    # every fragment composes with both 2D bases, and nothing else is composed
    composed = names - files
    assert composed == {f"{f.split('/')[1]}/{ds}" for f in fragments for ds in ("chaos", "brats")}


def test_composed_recipe_is_base_then_fragment():
    assert recipe_files("unet2d/brats") == [recipe_root() / "brats.yaml", recipe_root() / "nets" / "unet2d.yaml"]
    assert recipe_files("kits19_demo.yaml") == [recipe_root() / "kits19_demo.yaml"]
    with pytest.raises(KeyError, match="unknown recipe 'kits20'.*kits19_demo"):
        recipe_files("kits20")
    with pytest.raises(KeyError):
        recipe_files("unet2d/kits19")  # kits19 is not a base a 2D net fragment goes on


def test_config_argument_resolution(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_config_arg("kits19") == [str(ROOT / "kits19.yaml")]
    # the repository spelling works from any folder ...
    assert resolve_config_arg("configs/drnet/chaos.yaml") == [str(ROOT / "chaos.yaml"), str(ROOT / "nets/drnet.yaml")]
    # ... but a file that exists is the file, and YAML text or a missing my.yaml is left to jsonargparse
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "kits19.yaml").write_text("seed_everything: 1\n")
    assert resolve_config_arg("configs/kits19.yaml") is None
    assert resolve_config_arg("my.yaml") is None
    assert resolve_config_arg("{trainer: {max_epochs: 1}}") is None
    with pytest.raises(KeyError):
        resolve_config_arg("no_such_recipe")


def test_copy_merges_a_composed_recipe(tmp_path):
    out = copy_recipe("msdual/chaos", tmp_path)
    assert out == tmp_path / "msdual_chaos.yaml"
    merged = yaml.safe_load(out.read_text())
    base = yaml.safe_load((ROOT / "chaos.yaml").read_text())
    fragment = yaml.safe_load((ROOT / "nets" / "msdual.yaml").read_text())
    assert merged["model"]["net"] == fragment["model"]["net"]  # another class: the fragment's net replaces the base's
    assert merged["data"] == base["data"] and merged["trainer"] == base["trainer"]
    assert merged["model"]["inferer"] == base["model"]["inferer"]
    with pytest.raises(FileExistsError):
        copy_recipe("msdual/chaos", out)
    single = copy_recipe("kits19", tmp_path / "k.yaml")
    assert single.read_text() == (ROOT / "kits19.yaml").read_text()  # a plain recipe is copied as is, comments kept


def test_recipes_command(tmp_path, capsys):
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    assert "kits19_demo" in out and "unet2d/brats" in out and "brats.yaml + nets/unet2d.yaml" in out
    assert main(["recipes", "show", "drnet/chaos"]) == 0
    shown = capsys.readouterr().out
    assert "# ---- chaos.yaml" in shown and "# ---- nets/drnet.yaml" in shown
    assert recipe_text("kits19") == (ROOT / "kits19.yaml").read_text()
    assert main(["recipes", "copy", "kits19_demo", str(tmp_path / "demo.yaml")]) == 0
    assert (tmp_path / "demo.yaml").read_text() == (ROOT / "kits19_demo.yaml").read_text()
    assert main(["recipes", "copy", "kits19_demo", str(tmp_path / "demo.yaml")]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["recipes", "show", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown recipe 'nope'" in err
