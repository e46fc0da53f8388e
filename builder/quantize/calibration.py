"""Calibration and held-out images: a folder, a DataLoader, or builder's built-in photos, as uint8 batches."""
from __future__ import annotations

import pathlib
import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from builder.core.errors import UserError
from builder.core.images import (CALIBRATION_PHOTOS, HELD_OUT_PHOTOS, IMAGE_SUFFIXES, Preprocessing,
                                  builtin_photos, fit_to_input, image_files, read_image)
from builder.core.log import warn

@dataclass
class ImageSet:
    """uint8 RGB images already fitted to the network input, [1, 3, H, W] each, and where they came from."""

    batches: list[np.ndarray]
    source: str
    names: list[str] = field(default_factory=list)
    augmented: int = 0  # how many of them are crops/flips of the others

    def describe(self) -> str:
        extra = f", {self.augmented} of them crops/flips of real photos" if self.augmented else ""
        return f"{len(self.batches)} images from {self.source}{extra}"


def folder_photos(folder: str | pathlib.Path, count: int) -> list[tuple[str, np.ndarray]]:
    """Up to `count` images of a folder (sorted by name, so runs repeat); unreadable files are skipped with a warning."""
    photos = []
    for path in image_files(folder):
        if len(photos) == count:
            break
        try:
            photos.append((path.name, read_image(path)))
        except (OSError, ValueError) as e:  # ValueError: a decompression bomb, or a PNG chunk too large to inflate
            warn(f"skipping {path.name}: not a readable image ({e})")
    if not photos:
        raise UserError(f"no readable images ({', '.join(IMAGE_SUFFIXES)}) in '{folder}'")
    return photos


def crops_and_flips(photos: list[tuple[str, np.ndarray]], count: int, seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """The photos, then mirrored copies and random crops (40-100% of each side) until there are `count`."""
    rng = random.Random(seed)
    out = list(photos[:count])
    i = 0
    while len(out) < count:
        name, image = photos[i % len(photos)]
        h, w = image.shape[:2]
        ch, cw = int(h * rng.uniform(0.4, 1.0)), int(w * rng.uniform(0.4, 1.0))
        top, left = rng.randint(0, h - ch), rng.randint(0, w - cw)
        crop = image[top:top + ch, left:left + cw]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        out.append((f"{name}-crop{i}", np.ascontiguousarray(crop)))
        i += 1
    return out


def fitted(photos: list[tuple[str, np.ndarray]], size: tuple[int, int], prep: Preprocessing) -> list[np.ndarray]:
    return [fit_to_input(image, size, prep)[0].transpose(2, 0, 1)[None].copy() for _, image in photos]


def calibration_images(size: tuple[int, int], prep: Preprocessing, count: int, folder: str | None = None,
                       loader: Any = None) -> ImageSet:
    """The calibration set: a DataLoader, else a folder, else the built-in photos (with a warning)."""
    if loader is not None:
        batches = loader_batches(loader, prep, size, count)
        return ImageSet(batches, "the calibration DataLoader")
    if folder is not None:
        photos = folder_photos(folder, count)
        if len(photos) < count:
            warn(f"only {len(photos)} images in '{folder}' (asked for {count}): calibrating on those")
        return ImageSet(fitted(photos, size, prep), f"'{folder}'", [n for n, _ in photos])
    warn("INT8 without calibration images: calibrating on builder's built-in photos; images of your own "
         "domain give better accuracy (--calibration-images DIR)")
    photos = crops_and_flips(builtin_photos(CALIBRATION_PHOTOS), count)
    return ImageSet(fitted(photos, size, prep), "builder's built-in photos", [n for n, _ in photos],
                    augmented=max(0, len(photos) - len(CALIBRATION_PHOTOS)))


#: at most this many images of a report folder are compared (sorted by name)
REPORT_IMAGE_LIMIT = 256


def held_out_images(size: tuple[int, int], prep: Preprocessing, calibrated_on_builtin: bool,
                    folder: str | None = None, calibration_folder: str | None = None) -> ImageSet:
    """Images the calibration never saw: the user's report folder, else the held-out built-in photos (all
    of them when the calibration came from the user)."""
    if folder is not None:
        if calibration_folder is not None and pathlib.Path(folder).resolve() == pathlib.Path(calibration_folder).resolve():
            raise UserError("the report images are the calibration images: give a folder of held-out images, or "
                            "leave --report-images out")
        photos = folder_photos(folder, REPORT_IMAGE_LIMIT)
        return ImageSet(fitted(photos, size, prep), f"'{folder}'", [n for n, _ in photos])
    names = HELD_OUT_PHOTOS if calibrated_on_builtin else CALIBRATION_PHOTOS + HELD_OUT_PHOTOS
    photos = builtin_photos(names)
    return ImageSet(fitted(photos, size, prep), "builder's built-in photos (not used for calibration)",
                    [n for n, _ in photos])


def loader_batches(loader: Any, prep: Preprocessing, size: tuple[int, int], count: int) -> list[np.ndarray]:
    """Images from a DataLoader in the model's training normalisation, turned back into uint8 RGB inputs.

    The loader yields image tensors [B, 3, H, W] (or tuples/lists whose first element is one), normalised
    as in training: channel order `prep.channel_order`, (pixel - mean) / std.
    """
    import torch

    mean = np.asarray(prep.mean, dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(prep.std, dtype=np.float32).reshape(1, 3, 1, 1)
    out: list[np.ndarray] = []
    for item in loader:
        images = item[0] if isinstance(item, (tuple, list)) else item
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
            raise UserError("the calibration loader must yield image tensors [B, 3, H, W] (or tuples starting with one)")
        if tuple(images.shape[2:]) != tuple(size):
            raise UserError(f"the calibration loader yields {images.shape[2]}x{images.shape[3]} images; the export "
                            f"input is {size[0]}x{size[1]}")
        pixels = images.detach().float().cpu().numpy() * std + mean
        if prep.channel_order == "BGR":
            pixels = pixels[:, ::-1]
        pixels = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
        out.extend(pixels[i:i + 1].copy() for i in range(len(pixels)))
        if len(out) >= count:
            break
    if not out:
        raise UserError("the calibration loader yielded no images")
    return out[:count]
