"""Optional dependencies. `pip install model-bundle-builder` is the host: the CLI, specs, templates, bundles,
the docker runner and push/pull. The export toolchain comes with an extra, and each place that first needs
it calls `require` once, so that a host without it gets one line naming the extra instead of a traceback.
"""
from __future__ import annotations

import importlib.util

from builder.core.errors import MissingExtraError

#: extra -> the top-level modules it brings (their distributions are pyproject.toml's optional-dependencies)
EXTRAS = {
    # the local runner, verify and the Python model API: models, the ONNX export, simplification and checks
    "export": ("torch", "onnx", "onnxscript", "onnxsim", "onnxruntime"),
    # running a bundle's ONNX model here (builder bench); part of `export` too
    "bench": ("onnxruntime",),
    # builder release: the builds run as Ray tasks
    "cluster": ("ray",),
}


def missing(module: str) -> bool:
    """True when `module` cannot be imported here (found without importing it)."""
    try:
        return importlib.util.find_spec(module) is None
    except (ImportError, ValueError):  # a broken or half-removed installation counts as missing
        return True


def require(extra: str, *modules: str) -> None:
    """Raise MissingExtraError naming `extra` unless `modules` (default: all of the extra's) are installed."""
    for module in modules or EXTRAS[extra]:
        if missing(module):
            raise MissingExtraError(module, extra)
