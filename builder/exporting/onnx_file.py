"""torch -> ONNX with the current (dynamo) exporter, simplification, checks, and an atomic write."""
from __future__ import annotations

import contextlib
import io
import logging
import os
import pathlib
import tempfile
import warnings

import onnx
import torch



def trace_to_onnx(module: torch.nn.Module, example: torch.Tensor, output_names: list[str] | None,
                  dynamic_batch: bool, opset: int) -> onnx.ModelProto:
    """The module as an ONNX model with one input named `images`."""
    dynamic = {"images": {0: "batch"}} if dynamic_batch else None
    torch_log = logging.getLogger("torch.onnx")
    level = torch_log.level
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings(), \
            contextlib.redirect_stdout(io.StringIO()):  # the exporter narrates each step on stdout
        warnings.simplefilter("ignore")
        torch_log.setLevel(logging.ERROR)  # e.g. "torchvision is not installed": not our concern
        path = os.path.join(tmp, "model.onnx")
        try:
            torch.onnx.export(module, (example,), path, dynamo=True, opset_version=opset, input_names=["images"],
                              output_names=output_names, dynamic_axes=dynamic, external_data=False, verbose=False)
        finally:  # a failed export must not leave torch's logger silenced for the rest of the process
            torch_log.setLevel(level)
        return onnx.load(path)


def simplify(model: onnx.ModelProto) -> onnx.ModelProto:
    """Constant folding and shape cleanup with onnxsim; its own check runs the model once on random input."""
    import onnxsim

    simplified, ok = onnxsim.simplify(model)
    if not ok:
        raise RuntimeError("onnxsim could not validate the simplified model")
    return simplified


def check(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnx.checker's full check (shape inference included); returns the model with inferred shapes."""
    onnx.checker.check_model(model, full_check=True)
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


def save_atomically(model: onnx.ModelProto, destination: pathlib.Path, replace: bool = True) -> None:
    """Write next to the destination, then rename: readers see the old file or the whole new one. `replace=False`
    refuses a file that is at the destination by then."""
    from builder.core.files import atomic_file, check_model_destination

    with atomic_file(check_model_destination(destination), replace=replace) as f:
        f.write(model.SerializeToString())


def tensor_signature(values) -> list[dict]:
    """name, dtype and shape (ints or symbol names) of graph inputs/outputs."""
    out = []
    for value in values:
        t = value.type.tensor_type
        shape = [d.dim_param if d.dim_param else (d.dim_value if d.HasField("dim_value") else "?")
                 for d in t.shape.dim]
        out.append({"name": value.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name,
                    "shape": shape})
    return out
