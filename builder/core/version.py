"""builder's own version, and the versions of the toolchain installed beside it."""
DISTRIBUTION = "model-bundle-builder"

#: the one place the version is written: pyproject.toml reads it (a literal, because asking the installed
#: package's metadata costs ~20 ms on every command, `builder --help` included)
__version__ = "0.1.0"


def toolchain_versions(names=("builder", "torch", "onnx", "onnxruntime", "numpy", "pillow", "tritonclient")) -> dict[str, str]:
    """Versions of the named packages installed here (those missing are left out)."""
    from importlib import metadata as _metadata

    versions = {}
    for name in names:
        distribution = DISTRIBUTION if name == "builder" else name
        try:
            versions[name] = _metadata.version(distribution)
        except _metadata.PackageNotFoundError:
            continue
    return versions
