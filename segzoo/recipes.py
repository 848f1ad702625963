"""Packaged recipes: the YAML configs shipped with segzoo, usable by name from any folder.

The repository keeps them at the top (``configs/``); ``pyproject.toml`` installs that folder as the package
``segzoo.configs``, so a wheel and an editable install both read them with :mod:`importlib.resources`.

A recipe name is a config path relative to that folder without ``.yaml`` (``kits19``, ``kits19_demo``, ``chaos``,
``nets/unet2d``). A name ``<net>/<dataset>`` with ``nets/<net>.yaml`` and ``<dataset>.yaml`` is *composed*: the
dataset's base recipe, then the net fragment (``unet2d/brats`` = ``--config brats --config nets/unet2d``). ``--config``
in the ``segzoo`` command accepts a file path or a recipe name; a missing path written as
``configs/<name>.yaml`` (the repository spelling) is read as the recipe ``<name>``.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

SUFFIX = ".yaml"


def recipe_root() -> Path:
    """The folder holding the packaged recipes.

    In a source checkout run without installing (``PYTHONPATH=.``) the package ``segzoo.configs`` may resolve to
    another installation of segzoo, so the ``configs/`` folder next to this package wins when it is a checkout.
    """
    here = Path(__file__).resolve().parent
    checkout = here.parent / "configs"
    if (checkout / "__init__.py").is_file() and (here.parent / "pyproject.toml").is_file():
        return checkout
    root = resources.files("segzoo.configs")
    if not isinstance(root, Path):  # installed packages are folders; a zipped install is not supported
        raise RuntimeError(f"segzoo's recipes are not in a folder ({root!r}); install segzoo unzipped")
    return root


def _is_fragment(name: str) -> bool:
    return name.startswith("nets/")


def list_recipes(include_fragments: bool = False) -> list[str]:
    """Sorted recipe names: each YAML file, plus every composed ``<net>/<dataset>``.

    Args:
        include_fragments: also list the net fragments (``nets/<net>``), which are not runnable on their own.
    """
    root = recipe_root()
    files = sorted(p.relative_to(root).with_suffix("").as_posix() for p in root.rglob(f"*{SUFFIX}"))
    names = [n for n in files if include_fragments or not _is_fragment(n)]
    nets = [n.split("/", 1)[1] for n in files if _is_fragment(n)]
    datasets = [n for n in files if "/" not in n and _composable_base(n)]
    names += [f"{net}/{ds}" for net in nets for ds in datasets]
    return sorted(set(names))


def _composable_base(name: str) -> bool:
    """A base recipe a net fragment can be put on: it says so in its first line (the 2D dataset recipes)."""
    with open(recipe_root() / f"{name}{SUFFIX}", encoding="utf-8") as f:
        head = f.read(2048)
    return "nets/<net>" in head


def recipe_files(name: str) -> list[Path]:
    """The YAML files of recipe ``name``, in the order they are applied.

    Raises:
        KeyError: no such recipe (the message lists the available ones).
    """
    root = recipe_root()
    name = name.removesuffix(SUFFIX).strip("/")
    single = root / f"{name}{SUFFIX}"
    if single.is_file():
        return [single]
    if name.count("/") == 1:
        net, dataset = name.split("/")
        fragment, base = root / "nets" / f"{net}{SUFFIX}", root / f"{dataset}{SUFFIX}"
        if fragment.is_file() and base.is_file() and _composable_base(dataset):
            return [base, fragment]
    import difflib

    known = list_recipes()
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    raise KeyError(f"unknown recipe '{name}'; {hint}recipes: {', '.join(known)} (`segzoo recipes`)")


def resolve_config_arg(value: str) -> list[str] | None:
    """Paths for a ``--config`` value that names a recipe, or ``None`` when it is an existing file or YAML text.

    ``configs/<name>.yaml`` that does not exist in the working folder is read as the recipe ``<name>`` too.
    """
    if os.path.exists(value) or "\n" in value or value.lstrip().startswith("{"):
        return None
    name = value
    if name.startswith("configs/"):
        name = name[len("configs/") :]
    try:
        return [str(p) for p in recipe_files(name)]
    except KeyError:
        if value.endswith(SUFFIX) and not value.startswith("configs/"):
            return None  # a missing file: jsonargparse reports it with its path
        raise


def recipe_text(name: str) -> str:
    """The recipe's YAML; a composed recipe shows its files one after the other, each under a comment line."""
    files = recipe_files(name)
    if len(files) == 1:
        return files[0].read_text(encoding="utf-8")
    root = recipe_root()
    parts = [f"# ---- {p.relative_to(root).as_posix()} (applied in this order)\n{p.read_text()}" for p in files]
    return "\n".join(parts)


def copy_recipe(name: str, dest: str | os.PathLike, force: bool = False) -> Path:
    """Write recipe ``name`` to ``dest`` as one self-contained YAML file to edit.

    A composed recipe is merged into one file by jsonargparse-free YAML merging of mappings (lists and scalars of
    the later file win; a ``class_path`` change in a mapping replaces it whole).

    Raises:
        FileExistsError: ``dest`` exists and ``force`` is false.
    """
    import yaml

    from segzoo.utils import atomic_write_text

    dest = Path(dest)
    if dest.is_dir():
        dest = dest / f"{name.replace('/', '_')}{SUFFIX}"
    if dest.exists() and not force:
        raise FileExistsError(f"{dest} exists; pass --force to overwrite")
    files = recipe_files(name)
    if len(files) == 1:
        text = files[0].read_text(encoding="utf-8")
    else:
        merged: dict = {}
        for p in files:
            merged = _merge(merged, yaml.safe_load(p.read_text(encoding="utf-8")) or {})
        header = "".join(line + "\n" for line in files[0].read_text().splitlines() if line.startswith("#"))
        text = f"# segzoo recipe '{name}' ({' + '.join(p.name for p in files)}), merged into one file\n{header}"
        text += yaml.safe_dump(merged, sort_keys=False, default_flow_style=None, width=118)
    dest.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(dest, text)
    return dest


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        old = out.get(key)
        if isinstance(old, dict) and isinstance(value, dict):
            if "class_path" in value and value.get("class_path") != old.get("class_path"):
                out[key] = value
            else:
                out[key] = _merge(old, value)
        else:
            out[key] = value
    return out
