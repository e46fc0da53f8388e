"""Box geometry shared by NMS, detection matching and the benchmarks: corner boxes (x1, y1, x2, y2)."""
from __future__ import annotations

import numpy as np


def area(boxes: np.ndarray) -> np.ndarray:
    """Areas of boxes [..., 4]; an inverted box has none."""
    return np.clip(boxes[..., 2] - boxes[..., 0], 0, None) * np.clip(boxes[..., 3] - boxes[..., 1], 0, None)


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU [N, M] of every box in a [N, 4] with every box in b [M, 4], in the boxes' float type.

    Boxes that share no area (empty or zero-area union) have IoU 0, without a division warning.
    """
    a, b = np.asarray(a), np.asarray(b)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    union = area(a)[:, None] + area(b)[None, :] - inter
    # divide only where the union has area: 0/0 would warn and give NaN
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0)
