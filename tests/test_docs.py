"""The docs site builds with ``mkdocs build --strict``; every registered net has a generated model card."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import segzoo

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_mkdocs_build_strict_with_model_cards(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    site = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    index = (site / "model_cards" / "index.html").read_text()
    for name in segzoo.list_nets():
        card = site / "model_cards" / name / "index.html"
        assert card.is_file(), f"no model card for {name}"
        html = card.read_text()
        net = segzoo.create_net(name)
        assert f"{sum(p.numel() for p in net.parameters()):,}" in html  # parameter count from the registry
        assert "class_path" in html and name in index
    pngs = sorted((site / "gallery").glob("*.png"))
    assert len(pngs) >= 2 and all(p.stat().st_size > 10_000 for p in pngs)
    assert all(p.name in (site / "gallery" / "index.html").read_text() for p in pngs)
    cli = (site / "cli" / "index.html").read_text()
    for cmd in ("segzoo show", "segzoo export", "segzoo infer", "--format"):
        assert cmd in cli
    api = (site / "api" / "nets" / "index.html").read_text()
    assert "create_net" in api and "save_pretrained" in api
