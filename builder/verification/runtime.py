"""Running a bundle's model in this process: ONNX Runtime, or TensorRT for a bundle that holds an engine."""
from __future__ import annotations

import pathlib
from typing import Callable, Optional

from builder.core.errors import UserError


def check_against_build_yaml(folder: pathlib.Path, manifest) -> None:
    """Refuse a bundle whose manifest.json says it is something other than its build.yaml does."""
    from builder.core.manifest import check_against_spec
    from builder.targets import target_class
    from builder.targets.spec import BundleSpec, read_spec_file

    target_class(manifest.target)  # a target builder does not know is said as such, not as a mismatch
    check_against_spec(manifest, BundleSpec.create(read_spec_file(pathlib.Path(folder) / "build.yaml")), folder)


def model_file(folder: pathlib.Path, manifest) -> pathlib.Path:
    """The file the bundle serves, as its target lays it out: an ONNX file, or a plan for an engine."""
    from builder.targets import target_class

    return target_class(manifest.target).served_model(pathlib.Path(folder), manifest)


def open_model(folder: pathlib.Path, manifest, threads: Optional[int] = None) -> tuple[Callable, str]:
    """A function from a uint8 NCHW batch to the outputs (in the signature's order), and what runs it; refused
    before anything runs where the model's inputs and outputs are not the ones manifest.json declares."""
    path = model_file(folder, manifest)
    names = [o.name for o in manifest.signature.outputs]
    if path.suffix == ".plan":
        from builder.engines.tensorrt import EngineRunner, tensorrt_version

        if tensorrt_version() is None:  # nothing can read the plan here, so nothing can be compared either
            raise UserError("this bundle's model is a TensorRT engine and TensorRT is not installed here",
                            hint="run on the serving GPU, or give --url of a Triton server that serves it")
        _check_present(folder, path)
        engine = EngineRunner(str(path))
        missing = [n for n in names if n not in engine.outputs]
        if missing:
            _refuse(path, f"its output '{missing[0]}' is not in the engine, whose outputs are "
                          f"{', '.join(engine.outputs)}")
        return (lambda batch: [engine(batch)[n] for n in names]), f"TensorRT {tensorrt_version()}"
    import onnxruntime as ort

    from builder.exporting.sessions import inference_session

    _check_present(folder, path)
    session = inference_session(path, threads, providers=("CUDAExecutionProvider", "CPUExecutionProvider"))
    for kind, declared, actual in (("input", manifest.signature.inputs, session.get_inputs()),
                                   ("output", manifest.signature.outputs, session.get_outputs())):
        problem = _difference(kind, declared, [(a.name, _numpy_dtype(a.type), a.shape) for a in actual])
        if problem:
            _refuse(path, problem)
    used = session.get_providers()[0].removesuffix("ExecutionProvider")
    input_name = session.get_inputs()[0].name
    label = f"ONNX Runtime {ort.__version__} {used}" + (f", {threads} threads" if threads else "")
    return (lambda batch: session.run(names, {input_name: batch})), label


def _check_present(folder: pathlib.Path, path: pathlib.Path) -> None:
    if not path.is_file():
        raise UserError(f"bundle '{folder}' has no model at '{path.relative_to(folder)}'",
                        hint="the bundle was edited: rebuild it")


def _refuse(path: pathlib.Path, problem: str) -> None:
    raise UserError(f"manifest.json does not describe the bundle's model '{path.name}': {problem}",
                    hint="the bundle was edited: rebuild it")


def _numpy_dtype(onnxruntime_type: str) -> str:
    """'tensor(float)' -> 'float32': an ONNX Runtime type as numpy, and manifest.json, name it."""
    element = onnxruntime_type.removeprefix("tensor(").removesuffix(")")
    return {"float": "float32", "double": "float64"}.get(element, element)


def _difference(kind: str, declared, actual: list[tuple[str, str, list]]) -> Optional[str]:
    """What first differs between the manifest's tensors (TensorSpec) and the model's (name, dtype, shape)."""
    from builder.core.manifest import shown_shape

    found = {name: (dtype, shape) for name, dtype, shape in actual}
    for spec in declared:
        if spec.name not in found:
            return f"its {kind} '{spec.name}' is not in the model, whose {kind}s are {', '.join(found)}"
        dtype, shape = found[spec.name]
        if dtype != spec.dtype:
            return f"{kind} '{spec.name}' is {spec.dtype} in manifest.json and {dtype} in the model"
        # a dimension the model fixes must be that number in the manifest; one it leaves open may be either
        if len(shape) != len(spec.shape) or any(isinstance(d, int) and d != s for d, s in zip(shape, spec.shape)):
            return (f"{kind} '{spec.name}' is {shown_shape(spec.shape)} in manifest.json and {shown_shape(shape)} "
                    "in the model")
    listed = {spec.name for spec in declared}
    extra = [name for name in found if name not in listed]
    return f"the model's {kind} '{extra[0]}' is not in manifest.json" if extra else None
