"""mkdocs hooks: the navigation, one model card per registered net, the CLI reference and the gallery, all generated.

Nothing here is committed output: at build time the hook
- builds the navigation from the pages that exist (others write pages in parallel; a missing one is skipped, an
  unknown one lands under "More"),
- writes ``model_cards/<net>.md`` for every name in ``segzoo.list_nets()`` (paper, parameter count, input and output
  shapes, config snippet) and ``model_cards/index.md`` (a table of all),
- fills ``<!-- segzoo:cli-help -->`` in ``cli.md`` with the ``--help`` of every plain subcommand,
- draws ``gallery/*.png`` with ``segzoo show`` on freshly written synthetic cases (the repo stays free of images).
"""

from __future__ import annotations

import contextlib
import io
import sys
import tempfile
from pathlib import Path

from mkdocs.structure.files import File, Files

# preferred order; pages that do not exist are left out
_NAV = [
    ("Home", "index.md"),
    ("Quick start", "quickstart.md"),
    ("Train on your own data", "own_data.md"),
    ("Training", "training.md"),
    ("Cross-validation, ensembles and fine-tuning", "cv.md"),
    ("Configs", "configs.md"),
    ("Nets", "nets/"),
    ("Model cards", "model_cards/"),
    ("Datasets", "data/"),
    ("Losses and metrics", "losses_metrics.md"),
    ("Inference", "inference.md"),
    ("Choices where the papers are silent", "choices.md"),
    ("Experiments", "experiments.md"),
    ("Benchmarks", "benchmarks.md"),
    ("CLI reference", "cli.md"),
    ("Architecture", "architecture.md"),
    ("Gallery", "gallery.md"),
    ("API reference", "api/"),
]
GALLERY_CASES = (("kits19", 2), ("brats", 1))
_cards: dict[str, str] = {}


# ---------------------------------------------------------------------- model cards
def _first_paragraph(text: str | None) -> str:
    if not text:
        return ""
    return " ".join(text.strip().split("\n\n")[0].split())


def _reference(text: str | None) -> str:
    """The ``Reference: ...`` paragraph of a module docstring (the code base's convention), else ``""``."""
    for para in (text or "").split("\n\n"):
        para = " ".join(para.split())
        if para.startswith("Reference:"):
            return para[len("Reference:") :].strip()
    return ""


def _family_page(module: str, docs_dir: Path) -> str | None:
    stem = module.rsplit(".", 1)[-1]
    candidates = [f"nets/{stem}.md"] + (["nets/baselines.md"] if ".baselines" in module else [])
    return next((c for c in candidates if (docs_dir / c).is_file()), None)


def model_card(name: str, docs_dir: Path) -> tuple[str, dict]:
    """Markdown model card of the registered net ``name`` and its summary row."""
    import torch
    import yaml

    import segzoo
    from segzoo.nets import net_example_shape
    from segzoo.nets._registry import _NETS

    with torch.device("meta"):  # no memory and no weight init: only the structure is needed
        net = segzoo.create_net(name).eval()
    cfg = net.init_config
    args = cfg["init_args"]
    params = sum(p.numel() for p in net.parameters())
    shape = net_example_shape(name) or (args.get("in_channels", 1), 32, 32)
    # every segzoo net returns logits at the input's resolution (checked for all nets by tests/nets/test_registry.py)
    out_shape = (int(args["out_channels"]), *shape[1:])
    module = type(net).__module__
    summary = _first_paragraph(sys.modules[module].__doc__)
    paper = _reference(sys.modules[module].__doc__)
    variant = _first_paragraph(_NETS[name].__doc__) if name in _NETS else ""
    family = _family_page(module, docs_dir)
    snippet = yaml.safe_dump({"model": {"net": cfg}}, sort_keys=False, default_flow_style=None, width=100)
    spatial = "x".join(map(str, shape[1:]))
    lines = [
        f"# `{name}`",
        "",
        variant or f"Registered variant of `{type(net).__name__}`.",
        "",
        "| | |",
        "|---|---|",
        f"| class | `{cfg['class_path']}`: {summary} |",
        f"| paper | {paper or '-'} |",
        f"| parameters | {params:,} |",
        f"| input | `(B, {shape[0]}, *spatial)`; example `(1, {', '.join(map(str, shape))})` ({len(shape) - 1}D) |",
        f"| output | logits `(B, {out_shape[0]}, *spatial)`; example `(1, {', '.join(map(str, out_shape))})` |",
        f"| deep supervision | {'yes: a list of logits in training mode' if net.deep_supervision else 'no'} |",
    ]
    if family:
        lines.append(f"| family page | [{Path(family).stem}](../{family}) |")
    lines += [
        "",
        "## Build",
        "",
        "```python",
        "import segzoo",
        "",
        f'net = segzoo.create_net("{name}")  # keyword arguments override the defaults below',
        f"logits = net(torch.randn(1, {', '.join(map(str, shape))}))",
        'net.save_pretrained("my_net")  # config.json + model.safetensors',
        'net = segzoo.from_pretrained("my_net")',
        "```",
        "",
        "## Config",
        "",
        "The same net in a `segzoo fit --config` YAML:",
        "",
        "```yaml",
        snippet.rstrip(),
        "```",
        "",
        "List all nets with `segzoo nets`; export a trained one with `segzoo export` ([CLI reference](../cli.md)).",
        "",
    ]
    row = {"name": name, "class": type(net).__name__, "params": params, "spatial": spatial, "out": out_shape[0]}
    return "\n".join(lines), row


def _cards_index(rows: list[dict]) -> str:
    lines = [
        "# Model cards",
        "",
        "One card per registered net, generated from the registry (`segzoo.list_nets()`) when the docs are built.",
        "",
        "| net | class | parameters | example input | output channels |",
        "|---|---|---:|---|---:|",
    ]
    for r in rows:
        lines.append(
            f"| [`{r['name']}`]({r['name']}.md) | `{r['class']}` | {r['params']:,} | {r['spatial']} | {r['out']} |"
        )
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------- CLI help
def cli_help() -> str:
    from segzoo.cli import _plain_commands

    parts = []
    for name, (fn, summary) in _plain_commands().items():
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf), contextlib.suppress(SystemExit):
            fn(["--help"])
        parts += [f"### `segzoo {name}`", "", summary[:1].upper() + summary[1:] + ".", "", "```text"]
        parts += [buf.getvalue().rstrip(), "```", ""]
    return "\n".join(parts)


# ---------------------------------------------------------------------- gallery
def gallery_images(workdir: Path) -> list[tuple[str, Path]]:
    """``(site path, png)`` pairs drawn by ``segzoo show`` on synthetic cases."""
    import numpy as np

    from segzoo.cli import main
    from segzoo.data.io import load_nifti, save_nifti
    from segzoo.data.synthetic import write_synthetic

    out = []
    for dataset, cases in GALLERY_CASES:
        root = workdir / dataset
        for case in write_synthetic(dataset, root, cases=cases, seed=0):
            if dataset == "kits19":
                image, label = case / "imaging.nii.gz", case / "segmentation.nii.gz"
            else:
                image, label = case / f"{case.name}_flair.nii.gz", case / f"{case.name}_seg.nii.gz"
            # a stand-in "prediction": the label with its smallest class removed, to show the third row
            lbl, affine = load_nifti(label)
            pred_arr = np.where(lbl == np.unique(lbl)[-1], 0, lbl).astype(np.uint8)
            pred = save_nifti(pred_arr, affine, workdir / f"{case.name}_pred.nii.gz")
            png = workdir / "png" / f"{dataset}_{case.name}.png"
            args = ["--image", str(image), "--label", str(label), "--pred", str(pred), "--out", str(png)]
            with contextlib.redirect_stdout(io.StringIO()):
                code = main(["show", *args, "--title", f"synthetic {dataset}: {case.name}"])
            if code != 0:
                raise RuntimeError(f"segzoo show failed for {case}")
            out.append((f"gallery/{png.name}", png))
    return out


def _gallery_md(images: list[tuple[str, Path]]) -> str:
    return "\n".join(f"### {Path(uri).stem}\n\n![{Path(uri).stem}]({uri})\n" for uri, _ in images)


# ---------------------------------------------------------------------- mkdocs events
def on_config(config):
    docs_dir = Path(config["docs_dir"])
    import segzoo

    names = segzoo.list_nets()
    rows = []
    _cards.clear()
    for name in names:
        text, row = model_card(name, docs_dir)
        _cards[f"model_cards/{name}.md"] = text
        rows.append(row)
    _cards["model_cards/index.md"] = _cards_index(rows)

    generated = set(_cards) | {"gallery.md", "cli.md"}
    nav, used = [], set()
    for title, target in _NAV:
        if target.endswith("/"):
            pages = sorted(
                {p.relative_to(docs_dir).as_posix() for p in (docs_dir / target).glob("*.md")}
                | {g for g in generated if g.startswith(target)}
            )
            if f"{target}index.md" in pages:  # the index first
                pages.remove(f"{target}index.md")
                pages.insert(0, f"{target}index.md")
            if pages:
                nav.append({title: pages})
                used.update(pages)
        elif (docs_dir / target).is_file() or target in generated:
            nav.append({title: target})
            used.add(target)
    rest = sorted(p.relative_to(docs_dir).as_posix() for p in docs_dir.rglob("*.md"))
    rest = [p for p in rest if p not in used]
    if rest:
        nav.append({"More": rest})
    config["nav"] = nav
    return config


def on_files(files: Files, config) -> Files:
    for uri, text in _cards.items():
        files.append(File.generated(config, uri, content=text))
    with tempfile.TemporaryDirectory(prefix="segzoo-gallery-") as workdir:
        images = gallery_images(Path(workdir))
        for uri, png in images:
            files.append(File.generated(config, uri, content=png.read_bytes()))
    config["extra"]["segzoo_gallery"] = _gallery_md(images)
    return files


def on_page_markdown(markdown: str, page, config, files):
    if "<!-- segzoo:cli-help -->" in markdown:
        markdown = markdown.replace("<!-- segzoo:cli-help -->", cli_help())
    if "<!-- segzoo:gallery -->" in markdown:
        markdown = markdown.replace("<!-- segzoo:gallery -->", config["extra"].get("segzoo_gallery", ""))
    return markdown
