"""The demo checkpoint (`--weights demo`): PP-YOLOE S trained on builder's shape scenes, and a scene to try it on.

Random weights prove the pipeline but find nothing a person can check. This checkpoint finds the six shapes
(circle, square, triangle, ring, cross, star) of `benchmarks/shapes.py` on photos; `builder/data/demo/README.md`
says how it was made (the exact command) and what it scores. Stored in half precision (~16 MB) and loaded
into float32 like any checkpoint; its sha256 is checked on use, so an altered file is never taken for it.
"""
from __future__ import annotations

import pathlib

from builder.core.errors import UserError

NAME = "demo"
VARIANT = "ppyoloe_s"
FOLDER = pathlib.Path(__file__).resolve().parents[1] / "data" / "demo"
CHECKPOINT = FOLDER / "ppyoloe_s_shapes.pth"
#: a held-out scene (a photo neither training nor calibration saw) and its objects
IMAGE = FOLDER / "shapes.jpg"
TRUTH = FOLDER / "shapes.json"
CHECKPOINT_SHA256 = "0f7fd1ee71ec363c199bbf4fabbd932ab5315c8358c381a34fe32572999f3760"


def check_variant(variant: str) -> None:
    if variant != VARIANT:
        raise UserError(f"the demo weights are a {VARIANT} checkpoint, not {variant}",
                        hint=f"use --model {VARIANT} with --weights demo")


def demo_checkpoint(variant: str) -> pathlib.Path:
    """The demo checkpoint's path, for `variant` (which must be the demo's), its content checked."""
    from builder.core.hashing import sha256_of

    check_variant(variant)
    try:
        digest = sha256_of(CHECKPOINT)
    except OSError as e:
        raise UserError(f"the demo checkpoint '{CHECKPOINT}' cannot be read: {e.strerror or e}",
                        hint="reinstall builder") from None
    if digest != CHECKPOINT_SHA256:
        raise UserError(f"the demo checkpoint '{CHECKPOINT}' has sha256 {digest[:16]}..., not the demo's "
                        f"{CHECKPOINT_SHA256[:16]}...", hint="reinstall builder")
    return CHECKPOINT
