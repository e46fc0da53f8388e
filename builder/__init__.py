"""builder: trained object detectors in, deployable bundles out."""
from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("model-bundle-builder")
except _metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"

from builder import models  # noqa: E402  (light: imports torch only when a model is built)
from builder.errors import BuilderError, UserError  # noqa: E402


def export(model_or_name, output, **options):
    """Export a model (or a variant name) to ONNX; see `builder.exporting.export`. Returns an ExportResult."""
    from builder.exporting import export as _export

    return _export(model_or_name, output, **options)


def bundle(output=None, **options):
    """Build a Triton or standalone bundle; see `builder.bundling.build.bundle`. Returns a BundleResult."""
    from builder.bundling.build import bundle as _bundle

    return _bundle(output, **options)


__all__ = ["models", "export", "bundle", "BuilderError", "UserError", "__version__"]
