"""Images: the one reader (files, folders, built-in photos) and resizing the way a family was trained."""
from __future__ import annotations

import pathlib
import re
import struct
import threading
import warnings
from dataclasses import dataclass
from typing import Iterable

import numpy as np

from builder.core.errors import UserError
from builder.core.preprocessing import Preprocessing  # noqa: F401  (images are fitted by it; callers import it here too)

#: builder's own photos (builder/data/photos): calibration default, smoke run, verify and bench defaults
PHOTOS = pathlib.Path(__file__).resolve().parents[1] / "data" / "photos"
#: built-in photos used for calibration when the user gives none; the others stay held out for reports
CALIBRATION_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "china")
HELD_OUT_PHOTOS = ("grace_hopper", "flower")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
#: the most pixels builder decodes (64 Mi: 192 MiB as RGB). A file declaring more is refused before it is
#: decoded: a few KB of PNG can declare 20000x20000 and expand to gigabytes (a decompression bomb).
MAX_IMAGE_PIXELS = 64 * 2**20


class ImageTooLarge(UserError, ValueError):
    """An image declaring more than MAX_IMAGE_PIXELS. A ValueError too: readers that skip or wrap unreadable
    images (calibration, verify) treat it as one."""


#: Pillow's pixel limit and the warnings filter are process-wide: one reader at a time changes them
_PIL_SETTINGS = threading.Lock()
#: what Pillow's format plugins raise on malformed files besides OSError and ValueError
_MALFORMED = (SyntaxError, EOFError, struct.error, IndexError, KeyError, ZeroDivisionError)
#: 16-bit samples (PNG, TIFF) that Pillow would clip at 255 when converting to RGB
_WIDE_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")


def read_image(path: pathlib.Path) -> np.ndarray:
    """An image file as H x W x 3 uint8 RGB, turned upright by its EXIF orientation.

    Raises OSError or ValueError (ImageTooLarge above MAX_IMAGE_PIXELS) for a file it cannot read.
    """
    with _PIL_SETTINGS:
        return _read_bounded(path)


def _read_bounded(path: pathlib.Path) -> np.ndarray:
    from PIL import Image, ImageOps

    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS  # Pillow then refuses a bomb itself, before decoding
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                width, height = im.size
                if width * height > MAX_IMAGE_PIXELS:
                    raise _too_large(f"{width}x{height}")
                if im.mode in _WIDE_MODES:
                    wide = np.asarray(ImageOps.exif_transpose(im)).astype(np.int64)
                    return np.repeat((np.clip(wide, 0, 65535) >> 8).astype(np.uint8)[:, :, None], 3, axis=2)
                return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        declared = re.search(r"\((\d+) pixels\)", str(e))  # Pillow: "Image size (N pixels) exceeds limit ..."
        raise _too_large(declared.group(1) if declared else "more") from None
    except _MALFORMED as e:
        raise OSError(f"corrupt or truncated image ({type(e).__name__}: {e})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def _too_large(size: str) -> ImageTooLarge:
    return ImageTooLarge(f"it declares {size} pixels, more than the {MAX_IMAGE_PIXELS} builder decodes "
                         f"(a decompression bomb?)")


def image_files(folder: str | pathlib.Path) -> list[pathlib.Path]:
    """The image files under `folder`, subfolders included, sorted by path so that runs repeat."""
    folder = pathlib.Path(folder)
    if not folder.is_dir():
        raise UserError(f"images folder '{folder}' does not exist")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise UserError(f"images folder '{folder}' holds no {'/'.join(IMAGE_SUFFIXES)} files")
    return files


def builtin_photos(names: Iterable[str]) -> list[tuple[str, np.ndarray]]:
    return [(name, read_image(PHOTOS / f"{name}.jpg")) for name in names]


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

    def to_input(self, boxes: np.ndarray) -> np.ndarray:
        """x1, y1, x2, y2 in original-image pixels -> in network-input pixels (`to_original` undone)."""
        out = np.asarray(boxes, dtype=np.float32).copy()
        out[..., [0, 2]] = out[..., [0, 2]] * self.scale_x + self.pad_x
        out[..., [1, 3]] = out[..., [1, 3]] * self.scale_y + self.pad_y
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


def sample_input(prep: Preprocessing, size: tuple[int, int]) -> np.ndarray:
    """One real photo (held out from calibration) resized as the family was trained: uint8 RGB [1, 3, H, W]."""
    [(_, photo)] = builtin_photos(HELD_OUT_PHOTOS[:1])
    return fit_to_input(photo, size, prep)[0].transpose(2, 0, 1)[None].copy()


def to_network_input(batch_nchw_rgb: np.ndarray, prep: Preprocessing) -> np.ndarray:
    """uint8 RGB NCHW -> the float32 tensor the network was trained on (channel order, mean, std)."""
    x = batch_nchw_rgb.astype(np.float32)
    if prep.channel_order == "BGR":
        x = x[:, ::-1]
    mean = np.asarray(prep.mean, dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(prep.std, dtype=np.float32).reshape(1, 3, 1, 1)
    return np.ascontiguousarray((x - mean) / std)
