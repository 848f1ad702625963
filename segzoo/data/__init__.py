"""segzoo.data: dataset readers, preprocessing, transforms, datamodules and synthetic generators.

Never imports segzoo.nets or segzoo.tasks. The names below are loaded on first use (PEP 562 module ``__getattr__``),
so ``import segzoo.data.io`` (what inference needs) does not import the datamodules and with them Lightning.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "BraTSDataModule": "segzoo.data.datamodule_2d",
    "CHAOSDataModule": "segzoo.data.datamodule_2d",
    "DataError": "segzoo.data.io",
    "KiTS19DataModule": "segzoo.data.datamodule",
    "load_nifti": "segzoo.data.io",
    "save_nifti": "segzoo.data.io",
    "split_cases": "segzoo.data.datamodule",
    "synthetic_datasets": "segzoo.data.synthetic",
    "write_synthetic": "segzoo.data.synthetic",
}

__all__ = [
    "BraTSDataModule",
    "CHAOSDataModule",
    "DataError",
    "KiTS19DataModule",
    "load_nifti",
    "save_nifti",
    "split_cases",
    "synthetic_datasets",
    "write_synthetic",
]

if TYPE_CHECKING:  # static tools and IDEs see the real names
    from segzoo.data.datamodule import KiTS19DataModule, split_cases
    from segzoo.data.datamodule_2d import BraTSDataModule, CHAOSDataModule
    from segzoo.data.io import DataError, load_nifti, save_nifti
    from segzoo.data.synthetic import synthetic_datasets, write_synthetic


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'segzoo.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
