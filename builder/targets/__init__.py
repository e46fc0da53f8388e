"""Bundle targets by name. Adding one is a folder here whose module defines `TARGET` (a `Target` subclass),
its templates in the top-level templates/<name>/, and its line in TARGET_MODULES."""
from __future__ import annotations

import functools
import importlib

TARGET_MODULES = {
    "triton": "builder.targets.triton",
    "standalone": "builder.targets.standalone",
    "kserve": "builder.targets.kserve",
}


@functools.cache
def target_class(name: str):
    """The Target subclass registered as `name`; an unknown name is one line with the known ones."""
    from builder.core.errors import UserError, did_you_mean

    if name not in TARGET_MODULES:
        raise UserError(f"unknown target '{name}'", hint=did_you_mean(name, TARGET_MODULES) or ", ".join(TARGET_MODULES))
    return importlib.import_module(TARGET_MODULES[name]).TARGET


def targets() -> dict:
    return {name: target_class(name) for name in TARGET_MODULES}
