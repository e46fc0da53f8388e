"""Functions handed down to lower layers: `Detector.export()` calls the export, which sits layers above models."""
from __future__ import annotations

from typing import Any, Callable, Optional

_exporter: Optional[Callable[..., Any]] = None


def set_exporter(function: Callable[..., Any]) -> None:
    global _exporter
    _exporter = function


def exporter() -> Callable[..., Any]:
    if _exporter is None:  # builder/__init__.py sets it, and Python runs that before any submodule
        raise RuntimeError("builder's export function is not wired (builder/__init__.py sets it)")
    return _exporter
