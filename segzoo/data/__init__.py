"""segzoo.data: dataset readers, preprocessing, transforms, datamodules and synthetic generators.

Never imports segzoo.nets or segzoo.tasks.
"""

from segzoo.data.io import DataError, load_nifti, save_nifti

__all__ = ["DataError", "load_nifti", "save_nifti"]
