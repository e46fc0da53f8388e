"""SuperGradients' model names and export enums, with SuperGradients' values: migrating code changes only its imports.

    from super_gradients.training import models                     ->  from builder import models
    from super_gradients.common.object_names import Models           ->  from builder.compat import Models
    from super_gradients.conversion import ExportTargetBackend      ->  from builder.compat import ExportTargetBackend

A leaf: it imports nothing of builder, so any layer may use it. builder's own code takes plain strings too, and
every value here equals its string (`ExportTargetBackend.ONNXRUNTIME == "onnxruntime"`).
"""
from __future__ import annotations

import enum


class _Values(str, enum.Enum):
    """A str enum whose str() and format() are its value (SuperGradients' print the member name), so that a
    member put into a message, a path or a build.yaml reads as the plain string it stands for."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


class Models:
    """SuperGradients' `Models` name constants (plain strings there too) for the variants builder has."""

    YOLO_NAS_S = "yolo_nas_s"
    YOLO_NAS_M = "yolo_nas_m"
    YOLO_NAS_L = "yolo_nas_l"
    PP_YOLOE_S = "ppyoloe_s"
    PP_YOLOE_M = "ppyoloe_m"
    PP_YOLOE_L = "ppyoloe_l"
    PP_YOLOE_X = "ppyoloe_x"


class ExportTargetBackend(_Values):
    """`engine=`: what runs the model (and, with it, which NMS is in the graph)."""

    ONNXRUNTIME = "onnxruntime"
    TENSORRT = "tensorrt"


class ExportQuantizationMode(_Values):
    """`quantization_mode=`; None is FP32, as in SuperGradients."""

    FP16 = "fp16"
    INT8 = "int8"


class DetectionOutputFormatMode(_Values):
    """`output_predictions_format=`."""

    FLAT_FORMAT = "flat"
    BATCH_FORMAT = "batch"


__all__ = ["Models", "ExportTargetBackend", "ExportQuantizationMode", "DetectionOutputFormatMode"]
