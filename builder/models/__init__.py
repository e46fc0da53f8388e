"""The model zoo: YOLO-NAS and PP-YOLOE variants that load SuperGradients checkpoints.

`models.get("yolo_nas_s", num_classes=80, checkpoint_path=...)` as SuperGradients users know it. Importing
this package is cheap; torch is imported when a model is built.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from builder.core.extras import require

if TYPE_CHECKING:
    from builder.models.base import Detector


def get(model_name: str, num_classes: int | None = None, checkpoint_path: str | None = None,
        pretrained_weights: str | None = None, **kwargs: Any) -> "Detector":
    """Build a variant and load weights: a checkpoint file, a URL, or `pretrained_weights="coco"`."""
    require("export", "torch")
    from builder.models.registry import build

    return build(model_name, num_classes=num_classes, checkpoint_path=checkpoint_path,
                 pretrained_weights=pretrained_weights, **kwargs)


def list_variants() -> list[str]:
    from builder.models.registry import variants

    return list(variants())


__all__ = ["get", "list_variants"]
