"""What serves an exported model, and what follows from it: the Triton platform, a plan build, INT8's encoding.

Each consequence is a field asked of the chosen runtime, never a comparison of its name. A new runtime is
one more entry in RUNTIMES (and the NMS flavours that it runs name it in their `runtimes`).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Runtime:
    name: str
    description: str
    #: config.pbtxt's platform for the file the bundle serves
    triton_platform: str
    #: whether the export stage builds a TensorRT plan from the ONNX file (and the bundle serves the plan)
    builds_plan: bool
    #: INT8 activations: zero point 128 as uint8 (ONNX Runtime's u8s8 kernels fuse every Q/DQ pair so), or
    #: 0 as int8 (TensorRT's explicit quantization takes zero points of 0 only); the values are the same
    int8_activation_zero_point: int

    @property
    def serves_onnx(self) -> bool:
        return not self.builds_plan


RUNTIMES = {runtime.name: runtime for runtime in (
    Runtime("onnxruntime", "ONNX Runtime runs the ONNX file", "onnxruntime_onnx", builds_plan=False,
            int8_activation_zero_point=128),
    Runtime("tensorrt", "TensorRT runs an engine built from the ONNX file on the serving GPU", "tensorrt_plan",
            builds_plan=True, int8_activation_zero_point=0),
)}


def runtime(name: str) -> Runtime:
    from builder.core.errors import UserError, did_you_mean

    if name not in RUNTIMES:
        raise UserError(f"unknown runtime '{name}'", hint=did_you_mean(name, RUNTIMES) or ", ".join(RUNTIMES))
    return RUNTIMES[name]
