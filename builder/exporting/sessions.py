"""The one way builder opens an ONNX Runtime session."""
from __future__ import annotations

import pathlib
from typing import TYPE_CHECKING, Optional, Sequence, Union

if TYPE_CHECKING:
    import onnx


def inference_session(model: Union[str, pathlib.Path, bytes, "onnx.ModelProto"], threads: Optional[int] = None,
                      providers: Sequence[str] = ("CPUExecutionProvider",)):
    """An `onnxruntime.InferenceSession` of a file, serialized bytes or a ModelProto.

    `providers` in order of preference; those this onnxruntime build lacks are skipped (so a CUDA-first
    list falls back to the CPU). `threads`: that many intra-op threads and one inter-op stream.
    """
    import onnxruntime as ort  # imported here: `builder --help` must not pay for it

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: ORT's graph-optimizer warnings are not the user's business
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    available = ort.get_available_providers()
    # none available: pass the request on and let ORT say what is missing
    chosen = [p for p in providers if p in available] or list(providers)
    if hasattr(model, "SerializeToString"):
        model = model.SerializeToString()
    elif not isinstance(model, bytes):
        model = str(model)
    return ort.InferenceSession(model, options, providers=chosen)
