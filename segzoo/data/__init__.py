"""segzoo.data: dataset readers, preprocessing, transforms, datamodules and synthetic generators.

Never imports segzoo.nets or segzoo.tasks.
"""

from segzoo.data.datamodule import KiTS19DataModule, split_cases
from segzoo.data.datamodule_2d import BraTSDataModule, CHAOSDataModule
from segzoo.data.io import DataError, load_nifti, save_nifti
from segzoo.data.synthetic import synthetic_datasets, write_synthetic

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
