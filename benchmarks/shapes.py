"""Scenes of coloured shapes on real photos, with exact boxes: a detection task a CPU can train a detector on.

Trained COCO weights cannot be downloaded here, and random weights give no real detections (their scores
crowd around any threshold), so the quantization benchmark trains YOLO-NAS and PP-YOLOE on these scenes
(`train_shapes.py`) and measures agreement on held-out scenes. The backgrounds are crops of builder's
built-in photos; training draws on the calibration photos only, the held-out scenes on the held-out ones.
"""
from __future__ import annotations

import functools
import math
import pathlib
from dataclasses import dataclass

import numpy as np

SHAPES = ("circle", "square", "triangle", "ring", "cross", "star")


@dataclass
class Scene:
    image: np.ndarray  # uint8 RGB [H, W, 3]
    boxes: np.ndarray  # float32 [n, 4], x1 y1 x2 y2 in pixels
    classes: np.ndarray  # int64 [n], indices into SHAPES

    @property
    def truth(self) -> list[tuple]:
        """The objects as (score, class, box) detections of score 1, the form builder's matching takes."""
        return [(1.0, int(c), box) for box, c in zip(self.boxes, self.classes)]

    @property
    def nchw(self) -> np.ndarray:
        """The image as a uint8 RGB [1, 3, H, W] network input."""
        return self.image.transpose(2, 0, 1)[None].copy()


def background(rng: np.random.Generator, photos: list[np.ndarray], size: tuple[int, int]) -> np.ndarray:
    """A random crop (30-100% of each side) of a random photo, resized to `size`, maybe mirrored and dimmed."""
    from PIL import Image

    photo = photos[rng.integers(len(photos))]
    h, w = photo.shape[:2]
    ch, cw = int(h * rng.uniform(0.3, 1.0)), int(w * rng.uniform(0.3, 1.0))
    top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    crop = Image.fromarray(photo[top:top + ch, left:left + cw]).resize((size[1], size[0]), Image.BILINEAR)
    image = np.asarray(crop, dtype=np.float32) * rng.uniform(0.6, 1.3)
    if rng.random() < 0.5:
        image = image[:, ::-1]
    return np.clip(image, 0, 255).astype(np.uint8)


def shape_polygon(kind: str, box: tuple[float, float, float, float], rng: np.random.Generator) -> list[list[tuple]]:
    """The filled polygons (one or more) that draw `kind` inside `box`, touching all four sides."""
    x1, y1, x2, y2 = box
    cx, cy, w, h = (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1
    if kind == "triangle":
        return [[(x1, y2), (x2, y2), (x1 + w * rng.uniform(0.2, 0.8), y1)]]
    if kind == "cross":
        t = rng.uniform(0.22, 0.4)
        return [[(x1, cy - h * t / 2), (x2, cy - h * t / 2), (x2, cy + h * t / 2), (x1, cy + h * t / 2)],
                [(cx - w * t / 2, y1), (cx + w * t / 2, y1), (cx + w * t / 2, y2), (cx - w * t / 2, y2)]]
    if kind == "star":
        points = []
        for i in range(10):
            angle = -math.pi / 2 + i * math.pi / 5
            radius = 1.0 if i % 2 == 0 else 0.45
            points.append((math.cos(angle) * radius, math.sin(angle) * radius))
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        # stretch the star's own extent onto the box, so the box is tight
        return [[(x1 + (px - min(xs)) / (max(xs) - min(xs)) * w, y1 + (py - min(ys)) / (max(ys) - min(ys)) * h)
                 for px, py in points]]
    raise ValueError(kind)


def contrasting_colour(rng: np.random.Generator, patch: np.ndarray) -> tuple[int, int, int]:
    """A random colour at least 80 (sum over channels) away from the patch's mean colour."""
    mean = patch.reshape(-1, 3).mean(axis=0)
    for _ in range(20):
        colour = rng.integers(0, 256, 3)
        if np.abs(colour - mean).sum() >= 80:
            break
    return tuple(int(c) for c in colour)


def render_scene(rng: np.random.Generator, photos: list[np.ndarray], size: tuple[int, int],
                 objects: tuple[int, int] = (1, 8), sides: tuple[float, float] = (16, 140)) -> Scene:
    """One scene: a background and `objects` non-overlapping shapes whose longer side is in `sides` pixels."""
    from PIL import Image, ImageDraw

    height, width = size
    base = background(rng, photos, size)
    image = Image.fromarray(base)
    draw = ImageDraw.Draw(image)
    boxes: list[tuple[float, float, float, float]] = []
    classes: list[int] = []
    wanted = int(rng.integers(objects[0], objects[1] + 1))
    for _ in range(wanted * 10):
        if len(boxes) == wanted:
            break
        kind = int(rng.integers(len(SHAPES)))
        side = math.exp(rng.uniform(math.log(sides[0]), math.log(min(sides[1], 0.9 * min(size)))))
        aspect = rng.uniform(0.5, 2.0) if SHAPES[kind] in ("square", "triangle") else rng.uniform(0.8, 1.25)
        w, h = (side, side / aspect) if aspect >= 1 else (side * aspect, side)
        x1, y1 = rng.uniform(0, width - w), rng.uniform(0, height - h)
        box = (x1, y1, x1 + w, y1 + h)
        if any(box[0] < b[2] + 2 and b[0] < box[2] + 2 and box[1] < b[3] + 2 and b[1] < box[3] + 2 for b in boxes):
            continue  # no overlaps: every box is the whole visible shape
        patch = base[int(y1):int(box[3]) + 1, int(x1):int(box[2]) + 1]
        colour = contrasting_colour(rng, patch)
        name = SHAPES[kind]
        # PIL fills pixel centres up to and including the last coordinate: draw to x2 - 1
        drawn = (box[0], box[1], box[2] - 1, box[3] - 1)
        if name == "circle":
            draw.ellipse(drawn, fill=colour)
        elif name == "square":
            draw.rectangle(drawn, fill=colour)
        elif name == "ring":
            draw.ellipse(drawn, outline=colour, width=max(2, int(min(w, h) * rng.uniform(0.12, 0.25))))
        else:
            for polygon in shape_polygon(name, drawn, rng):
                draw.polygon(polygon, fill=colour)
        boxes.append(box)
        classes.append(kind)
    return Scene(np.asarray(image).copy(), np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
                 np.asarray(classes, dtype=np.int64))


@functools.cache
def photos(names: tuple[str, ...]) -> list[np.ndarray]:
    from builder.core.images import builtin_photos

    return [image for _, image in builtin_photos(names)]


def training_photos() -> list[np.ndarray]:
    from builder.core.images import CALIBRATION_PHOTOS

    return photos(CALIBRATION_PHOTOS)


def held_out_photos() -> list[np.ndarray]:
    from builder.core.images import HELD_OUT_PHOTOS

    return photos(HELD_OUT_PHOTOS)


def scenes(count: int, seed: int, size: tuple[int, int], held_out: bool, **options) -> list[Scene]:
    rng = np.random.default_rng(seed)
    backgrounds = held_out_photos() if held_out else training_photos()
    return [render_scene(rng, backgrounds, size, **options) for _ in range(count)]


def write_scenes(folder: pathlib.Path, items: list[Scene]) -> pathlib.Path:
    """The scenes' images as PNG files in `folder` (a calibration folder builder can read)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, scene in enumerate(items):
        Image.fromarray(scene.image).save(folder / f"scene{i:04d}.png")
    return folder
