"""builder's own version, read from the installed distribution."""
from importlib import metadata as _metadata

DISTRIBUTION = "model-bundle-builder"

try:
    __version__ = _metadata.version(DISTRIBUTION)
except _metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"


def toolchain_versions(names=("builder", "torch", "onnx", "onnxruntime", "numpy", "pillow", "tritonclient")) -> dict[str, str]:
    """Versions of the named packages installed here (those missing are left out)."""
    versions = {}
    for name in names:
        distribution = DISTRIBUTION if name == "builder" else name
        try:
            versions[name] = _metadata.version(distribution)
        except _metadata.PackageNotFoundError:
            continue
    return versions
