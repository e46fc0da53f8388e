"""Running a bundle's model in this process: ONNX Runtime, or TensorRT for a bundle that holds an engine."""
from __future__ import annotations

import pathlib
from typing import Callable, Optional

from builder.core.errors import UserError


def model_file(folder: pathlib.Path, manifest) -> pathlib.Path:
    """The file the bundle serves, as its target lays it out: an ONNX file, or a plan for an engine."""
    from builder.targets import target_class

    return target_class(manifest.target).served_model(pathlib.Path(folder), manifest)


def open_model(folder: pathlib.Path, manifest, threads: Optional[int] = None) -> tuple[Callable, str]:
    """A function from a uint8 NCHW batch to the outputs (in the signature's order), and what runs it."""
    path = model_file(folder, manifest)
    names = [o.name for o in manifest.signature.outputs]
    if path.suffix == ".plan":
        from builder.engines.tensorrt import EngineRunner, tensorrt_version

        if tensorrt_version() is None:
            raise UserError("this bundle's model is a TensorRT engine and TensorRT is not installed here",
                            hint="run on the serving GPU, or give --url of a Triton server that serves it")
        engine = EngineRunner(str(path))
        return (lambda batch: [engine(batch)[n] for n in names]), f"TensorRT {tensorrt_version()}"
    import onnxruntime as ort

    from builder.exporting.sessions import inference_session

    session = inference_session(path, threads, providers=("CUDAExecutionProvider", "CPUExecutionProvider"))
    used = session.get_providers()[0].removesuffix("ExecutionProvider")
    input_name = session.get_inputs()[0].name
    label = f"ONNX Runtime {ort.__version__} {used}" + (f", {threads} threads" if threads else "")
    return (lambda batch: session.run(names, {input_name: batch})), label
