"""builder: trained object detectors in, deployable bundles out."""
from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("model-bundle-builder")
except _metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"

from builder import models  # noqa: E402  (light: imports torch only when a model is built)
from builder.errors import BuilderError, UserError  # noqa: E402

__all__ = ["models", "BuilderError", "UserError", "__version__"]
