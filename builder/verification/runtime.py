"""Running a bundle's model in this process: ONNX Runtime, or TensorRT for a bundle that holds an engine."""
from __future__ import annotations

import pathlib
from typing import Callable, Optional


from builder.core.errors import UserError


def model_file(folder: pathlib.Path, manifest: dict) -> pathlib.Path:
    """The file the bundle serves: model.onnx, or the Triton repository's model.plan for an engine."""
    if manifest["target"] != "triton":
        return folder / "model.onnx"
    name = "model.plan" if manifest.get("engine") == "tensorrt" else "model.onnx"
    return folder / "model_repository" / manifest["name"] / str(manifest["version"]) / name


def open_model(folder: pathlib.Path, manifest: dict, threads: Optional[int] = None) -> tuple[Callable, str]:
    """A function from a uint8 NCHW batch to the outputs (in the signature's order), and what runs it."""
    path = model_file(folder, manifest)
    names = [o["name"] for o in manifest["signature"]["outputs"]]
    if path.suffix == ".plan":
        from builder.engines.tensorrt import EngineRunner, tensorrt_version

        if tensorrt_version() is None:
            raise UserError("this bundle's model is a TensorRT engine and TensorRT is not installed here",
                            hint="run on the serving GPU, or give --url of a Triton server that serves it")
        engine = EngineRunner(str(path))
        return (lambda batch: [engine(batch)[n] for n in names]), f"TensorRT {tensorrt_version()}"
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    available = ort.get_available_providers()
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    session = ort.InferenceSession(str(path), options, providers=providers)
    used = session.get_providers()[0].removesuffix("ExecutionProvider")
    input_name = session.get_inputs()[0].name
    label = f"ONNX Runtime {ort.__version__} {used}" + (f", {threads} threads" if threads else "")
    return (lambda batch: session.run(names, {input_name: batch})), label
