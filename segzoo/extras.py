"""Optional features and the extras that provide them: a missing one is named in one line, never a traceback.

``EXTRAS`` mirrors ``[project.optional-dependencies]`` in ``pyproject.toml`` (a test checks they agree). The index
name ``segzoo`` belongs to another project, so the message names the packages to install, not ``pip install segzoo``.
"""

from __future__ import annotations

import importlib

EXTRAS: dict[str, tuple[str, ...]] = {
    "onnx": ("onnx", "onnxruntime", "onnxscript"),
    "hub": ("huggingface_hub",),
    "notebooks": ("jupyter", "ipykernel", "pandas", "nbclient", "nbformat"),
}
# import name -> extra
MODULE_EXTRA: dict[str, str] = {
    "onnx": "onnx",
    "onnxruntime": "onnx",
    "onnxscript": "onnx",
    "huggingface_hub": "hub",
    "jupyter": "notebooks",
    "ipykernel": "notebooks",
    "pandas": "notebooks",
    "nbclient": "notebooks",
    "nbformat": "notebooks",
}


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message says which extra provides it."""


def extra_message(module: str, feature: str) -> str | None:
    """The one-line message for ``feature`` missing ``module``, or ``None`` when no extra provides it."""
    top = module.split(".")[0]
    extra = MODULE_EXTRA.get(top)
    if extra is None:
        return None
    packages = " ".join(EXTRAS[extra])
    return (
        f"{feature} needs '{top}', which is not installed: install segzoo's [{extra}] extra "
        f"(pip install '<segzoo wheel or checkout>[{extra}]', or pip install {packages})"
    )


def require(module: str, feature: str):
    """Import and return ``module``, or raise :class:`MissingExtraError` naming the extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        message = extra_message(module, feature)
        if message is None:
            raise
        raise MissingExtraError(message) from e


def missing_extra_message(error: BaseException, feature: str) -> str | None:
    """The one-line message for an ``ImportError`` raised by a dependency, if an extra provides the module."""
    if isinstance(error, MissingExtraError):
        return str(error)
    if not isinstance(error, ImportError):
        return None
    name = getattr(error, "name", None)
    return extra_message(name, feature) if name else None
