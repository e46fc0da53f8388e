"""NMS flavours: what the graph carries after the decoded top-k candidates, by name.

A flavour knows its graph (`append`), its outputs, and which runtimes run it. Adding one is one module
here that defines `FLAVOUR`, plus its line in FLAVOUR_MODULES.
"""
from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from typing import ClassVar

FLAVOUR_MODULES = {
    "onnx": "builder.exporting.nms.onnx_nms",
    "tensorrt": "builder.exporting.nms.efficient_nms",
}


@dataclass(frozen=True)
class NMSSettings:
    confidence_threshold: float
    iou_threshold: float
    max_predictions: int
    output_format: str  # "batch" or "flat"


class NMSFlavour:
    """Appends class-aware NMS and the output format to a graph whose outputs are the top-k candidates."""

    name: ClassVar[str]
    description: ClassVar[str]
    #: the runtimes that run a graph carrying this flavour (the first is the one `engine=` picks)
    runtimes: ClassVar[tuple[str, ...]]
    #: SuperGradients' `engine=` value that selects this flavour together with its runtime
    engine: ClassVar[str]

    def append(self, model, boxes: str, scores: str, batch, k: int, classes: int, nms: NMSSettings) -> list[str]:
        """Nodes from boxes [B, k, 4] and scores [B, k, C] to the outputs; returns the output names."""
        raise NotImplementedError

    @property
    def runs_on_onnxruntime(self) -> bool:
        """Whether ONNX Runtime can run the graph (the stage's smoke run, verify and bench on the ONNX file)."""
        return "onnxruntime" in self.runtimes


@functools.cache
def flavour(name: str) -> NMSFlavour:
    from builder.core.errors import UserError, did_you_mean

    if name not in FLAVOUR_MODULES:
        raise UserError(f"unknown NMS flavour '{name}'",
                        hint=did_you_mean(name, FLAVOUR_MODULES) or ", ".join(FLAVOUR_MODULES))
    return importlib.import_module(FLAVOUR_MODULES[name]).FLAVOUR


def flavours() -> dict[str, NMSFlavour]:
    return {name: flavour(name) for name in FLAVOUR_MODULES}


def for_engine(engine: str) -> NMSFlavour:
    """The flavour SuperGradients' `engine=` shorthand selects."""
    from builder.core.errors import UserError

    for candidate in flavours().values():
        if candidate.engine == engine:
            return candidate
    raise UserError(f"unknown engine '{engine}'", hint=", ".join(f.engine for f in flavours().values()))
