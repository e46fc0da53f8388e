"""Host-side image handling: resize an RGB image the way a family was trained, and map boxes back."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from builder.models.base import Preprocessing


@dataclass(frozen=True)
class Placement:
    """Where the resized image sits in the network input: input = original * scale + (pad_x, pad_y)."""

    scale_x: float
    scale_y: float
    pad_x: float
    pad_y: float

    def to_original(self, boxes: np.ndarray) -> np.ndarray:
        """x1, y1, x2, y2 in network-input pixels -> in original-image pixels."""
        out = np.asarray(boxes, dtype=np.float32).copy()
        out[..., [0, 2]] = (out[..., [0, 2]] - self.pad_x) / self.scale_x
        out[..., [1, 3]] = (out[..., [1, 3]] - self.pad_y) / self.scale_y
        return out


def fit_to_input(image: np.ndarray, size: tuple[int, int], prep: Preprocessing) -> tuple[np.ndarray, Placement]:
    """An H x W x 3 uint8 RGB image resized into `size` (H, W) by the family's policy, and its placement."""
    from PIL import Image

    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an H x W x 3 uint8 RGB image, got {image.shape} {image.dtype}")
    height, width = size
    h, w = image.shape[:2]
    if prep.resize == "stretch":
        resized = np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))
        return resized, Placement(width / w, height / h, 0.0, 0.0)
    scale = min((height - prep.letterbox_margin) / h, (width - prep.letterbox_margin) / w)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))
    canvas = np.full((height, width, 3), prep.pad_value, dtype=np.uint8)
    top, left = (height - new_h) // 2, (width - new_w) // 2
    canvas[top:top + new_h, left:left + new_w] = resized
    return canvas, Placement(new_w / w, new_h / h, float(left), float(top))


def to_network_input(batch_nchw_rgb: np.ndarray, prep: Preprocessing) -> np.ndarray:
    """uint8 RGB NCHW -> the float32 tensor the network was trained on (channel order, mean, std)."""
    x = batch_nchw_rgb.astype(np.float32)
    if prep.channel_order == "BGR":
        x = x[:, ::-1]
    mean = np.asarray(prep.mean, dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(prep.std, dtype=np.float32).reshape(1, 3, 1, 1)
    return np.ascontiguousarray((x - mean) / std)
