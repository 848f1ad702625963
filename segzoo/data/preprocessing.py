"""The names of the former ``segzoo.data.preprocessing`` module, which is now three: :mod:`segzoo.data.fingerprint`,
:mod:`segzoo.data.preprocessor` and :mod:`segzoo.data.cache`. Kept because code outside the package (``benchmarks/``,
scripts written against earlier versions) imports them from here; new code imports from the three modules.
"""

from segzoo.data.cache import CACHE_VERSION, atomic_save_npy, cache_paths, load_properties, preprocess_dataset
from segzoo.data.fingerprint import FINGERPRINT_VERSION, compute_fingerprint, load_fingerprint, save_fingerprint
from segzoo.data.preprocessor import PAPER_TARGET_SPACING, CTPreprocessor

__all__ = [
    "CACHE_VERSION",
    "FINGERPRINT_VERSION",
    "PAPER_TARGET_SPACING",
    "CTPreprocessor",
    "atomic_save_npy",
    "cache_paths",
    "compute_fingerprint",
    "load_fingerprint",
    "load_properties",
    "preprocess_dataset",
    "save_fingerprint",
]
