"""What a model family declares, without building anything: variants, preprocessing, defaults, sizes.

Reading a family needs no torch, so the host (CLI, bundle rendering, `builder models`) can list and describe
models; the network module named by `network` is imported only when a model is built.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Sequence

from builder.core.preprocessing import Preprocessing


@dataclass(frozen=True)
class Family:
    """A model family: its variants, the preprocessing it was trained with, and its default thresholds.

    The network module defines BUILDERS (variant -> function(num_classes) -> Detector); its Detector
    subclass supplies the family's layers and the decode of their raw outputs to pre-NMS candidates.
    """

    name: str
    network: str
    #: variant -> training-form parameter count with 80 classes (tests check them against the networks)
    parameters: dict[str, int]
    preprocessing: Preprocessing
    default_confidence: float
    default_iou: float
    input_size: tuple[int, int] = (640, 640)
    pretrained_url: str = "https://sghub.deci.ai/models/{variant}_coco.pth"

    @property
    def variants(self) -> Sequence[str]:
        return tuple(self.parameters)

    def builder(self, variant: str):
        """The function that builds `variant` (imports the network module, hence torch)."""
        return importlib.import_module(self.network).BUILDERS[variant]
