"""The layer rules of docs/architecture.md, read from the source (no import runs): who may import whom.

A rule broken here is a design change: change docs/architecture.md with it.
"""

import ast
from pathlib import Path

import pytest

SEGZOO = Path(__file__).resolve().parents[1] / "segzoo"

# the segzoo packages (or top-level modules) each layer may import, at module level or inside a function
ALLOWED = {
    "utils": set(),
    "nets": {"utils", "extras"},  # extras: the one-line "install the [hub] extra" for hf-hub: names
    "losses": {"utils"},
    "metrics": {"utils", "data"},  # data: dataset constants only (segzoo.data.brats.BRATS_LABELS), see the page
    "data": {"utils"},
    # nets: the net-level format (segzoo.nets.pretrained); classes by registry only
    "checkpoint": {"utils", "data", "nets"},
    # export: the ONNX graph for --backend; tools_cli: the shared --trust-checkpoint help
    "inference": {"utils", "nets", "data", "checkpoint", "export", "tools_cli"},
    "export": {"utils", "nets", "data", "checkpoint"},
    # the MONAI bundle writer: the net trace (export) and the label names and transforms of segzoo.inference
    "export_bundle": {"utils", "nets", "data", "checkpoint", "export", "inference"},
    "viz": {"utils", "data"},
    "tasks": {"utils", "nets", "losses", "metrics", "data", "inference", "checkpoint", "viz"},
}
# heavy libraries a layer may import at module level (elsewhere only inside the function that needs them)
HEAVY = ("lightning", "pytorch_lightning", "wandb", "onnx", "onnxruntime")
HEAVY_AT_TOP = {"segzoo/cli.py", "segzoo/tasks", "segzoo/data/datamodule.py", "segzoo/data/datamodule_2d.py"}


def _imports(path: Path) -> list[tuple[str, bool]]:
    """``(module, at_module_level)`` of every import in ``path``."""
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.module, id(node) in top))
        elif isinstance(node, ast.Import):
            out.extend((a.name, id(node) in top) for a in node.names)
    return out


def _layer(path: Path) -> str:
    rel = path.relative_to(SEGZOO)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_layers_import_only_what_they_may(layer):
    files = [p for p in SEGZOO.rglob("*.py") if _layer(p) == layer]
    assert files, f"no module for layer {layer}"
    bad = []
    for path in files:
        for module, _ in _imports(path):
            parts = module.split(".")
            if parts[0] == "segzoo" and len(parts) > 1 and parts[1] != layer and parts[1] not in ALLOWED[layer]:
                bad.append(f"{path.relative_to(SEGZOO.parent)} imports {module}")
    assert bad == []


def test_heavy_libraries_only_where_used():
    bad = []
    for path in SEGZOO.rglob("*.py"):
        rel = path.relative_to(SEGZOO.parent).as_posix()
        if any(rel == h or rel.startswith(h + "/") for h in HEAVY_AT_TOP):
            continue
        bad += [f"{rel}: {m}" for m, top in _imports(path) if top and m.split(".")[0] in HEAVY]
    assert bad == []


def test_no_dataset_module_is_imported_for_a_generic_piece():
    """Generic pieces (sampling, seeding, augmentation) never come from a dataset's module."""
    generic = {"EpochShuffleSampler", "crop_padded", "draw_patch_origin", "run_seed", "AugmentConfig", "BatchAugment"}
    bad = []
    for path in SEGZOO.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module in ("segzoo.data.datamodule", "segzoo.data.kits19"):
                bad += [f"{path.name}: {a.name} from {node.module}" for a in node.names if a.name in generic]
    assert bad == []


def test_nets_load_without_the_checkpoint_layer():
    """The pretrained format lives in segzoo.nets: loading a net imports neither segzoo.checkpoint nor anything above."""
    import subprocess
    import sys

    code = (
        "import sys, segzoo.nets; "
        "print(sorted(m for m in sys.modules if m.startswith('segzoo.') and m.split('.')[1] not in ('nets', 'utils')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout
