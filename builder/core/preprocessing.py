"""How a family's training pipeline turned an image into the network input: a record free of numpy, so that
declaring a family (and with it `builder --help` and `builder models`) stays cheap."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Preprocessing:
    """How the family's training pipeline turned an RGB uint8 image into the network input.

    `channel_order` is the order the network consumes; `mean` and `std` are in 0..255 pixel units and
    indexed in that order. `resize` is "letterbox" (keep aspect, scale the longest side to fit the input
    less `letterbox_margin` pixels, then pad centred with `pad_value`) or "stretch" (resize to the input).
    """

    channel_order: Literal["RGB", "BGR"]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize: Literal["letterbox", "stretch"]
    pad_value: int = 114
    letterbox_margin: int = 0

    def describe(self) -> list[str]:
        steps = ["cast uint8 -> float32"]
        if any(self.mean):
            steps.append(f"subtract mean {list(self.mean)} ({self.channel_order})")
        if all(m == 0 for m in self.mean) and len(set(self.std)) == 1:
            scale = f"scale by 1/{self.std[0]:g}"
        else:
            scale = f"divide by std {list(self.std)} ({self.channel_order})"
        steps.append(("RGB -> BGR, " if self.channel_order == "BGR" else "") + scale)
        return steps
