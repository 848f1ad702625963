"""Synthetic datasets written in the real on-disk formats (KiTS19 NIfTI, CHAOS DICOM+PNG, BraTS NIfTI).

They are the embedded default data: every command and notebook runs on them on a fresh machine.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

# dataset name -> "module:function"; each writer has signature (out_dir, cases=..., seed=..., **options) -> list[Path]
_WRITERS = {
    "kits19": "segzoo.data.synthetic.kits19:write_kits19",
    "chaos": "segzoo.data.synthetic.chaos:write_chaos",
    "brats": "segzoo.data.synthetic.brats:write_brats",
    "nnunet": "segzoo.data.synthetic.nnunet:write_nnunet",
}


def synthetic_datasets() -> list[str]:
    """Names accepted by :func:`write_synthetic` and ``segzoo synth``."""
    return sorted(_WRITERS)


def get_writer(name: str) -> Callable[..., list[Path]]:
    if name not in _WRITERS:
        raise ValueError(f"unknown synthetic dataset '{name}'; expected one of {synthetic_datasets()}")
    module, fn = _WRITERS[name].split(":")
    return getattr(importlib.import_module(module), fn)


def write_synthetic(name: str, out_dir: str | Path, cases: int = 4, seed: int = 0, **options) -> list[Path]:
    """Write ``cases`` synthetic cases of dataset ``name`` into ``out_dir``; returns the case folders."""
    return get_writer(name)(Path(out_dir), cases=cases, seed=seed, **options)
