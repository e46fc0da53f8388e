"""builder: trained object detectors in, deployable bundles out.

The Python API (`builder.export`, `bundle`, `verify`, `bench`, `push`, `pull`, `release`) lives in `builder.api` and
is loaded on first use, so `import builder` stays cheap; `builder.models` is SuperGradients' `models.get`.
"""
from builder import models
from builder.core import wiring as _wiring
from builder.core.errors import BuilderError, UserError
from builder.core.version import __version__

_API = ("export", "bundle", "verify", "bench", "push", "pull", "release")


def __getattr__(name: str):
    if name in _API:
        from builder import api

        return getattr(api, name)
    raise AttributeError(f"module 'builder' has no attribute '{name}'")


def _export(model_or_name, output, **options):
    from builder.api import export

    return export(model_or_name, output, **options)


_wiring.set_exporter(_export)  # model.export(...) (models sit below the export stage)

__all__ = ["models", *_API, "BuilderError", "UserError", "__version__"]
