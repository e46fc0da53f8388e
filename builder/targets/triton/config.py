"""Triton's config.pbtxt: the template's context from the exported model, and the checks a config must pass.

A rendered config (shipped template or a release team's override) is parsed with Triton's own schema
(`model_config_pb2.ModelConfig` from tritonclient) and then checked for what the schema cannot see: the
folder name, the platform, batch dims against `max_batch_size`, and tensor names, dtypes and dims equal to
the ONNX model's. A config that fails is refused with the field that is wrong.
"""
from __future__ import annotations

from builder.core.errors import UserError

ONNX_PLATFORM = "onnxruntime_onnx"
#: numpy dtype name (onnx_file.tensor_signature) -> Triton data type
TRITON_DTYPES = {"uint8": "TYPE_UINT8", "int8": "TYPE_INT8", "int32": "TYPE_INT32", "int64": "TYPE_INT64",
                 "float16": "TYPE_FP16", "float32": "TYPE_FP32", "bool": "TYPE_BOOL"}
DEVICE_KINDS = {"auto": "KIND_AUTO", "cpu": "KIND_CPU", "gpu": "KIND_GPU"}


def _dims(shape: list, batched: bool) -> list[int]:
    """Triton dims of an ONNX shape: without the batch dim when Triton batches, -1 for symbolic dims."""
    dims = [d if isinstance(d, int) else -1 for d in shape]
    return dims[1:] if batched else dims


def config_context(spec, name: str, inputs: list[dict], outputs: list[dict], parameters: dict[str, str],
                   platform: str = ONNX_PLATFORM) -> dict:
    """What config.pbtxt.j2 is rendered with."""
    batched = spec.max_batch_size > 0

    def tensors(signature):
        return [{"name": t["name"], "data_type": TRITON_DTYPES[t["dtype"]], "dims": _dims(t["shape"], batched)}
                for t in signature]

    options = spec.triton
    warm_inputs = [{**t, "dims": [1 if d == -1 else d for d in t["dims"]]} for t in tensors(inputs)]
    return {
        "name": name,
        "platform": platform,
        "max_batch_size": spec.max_batch_size,
        "inputs": tensors(inputs),
        "outputs": tensors(outputs),
        "dynamic_batching": {"preferred_batch_size": list(options.preferred_batch_sizes or []),
                             "max_queue_delay_microseconds": options.max_queue_delay_us} if batched else None,
        "instance_group": {"count": options.instances, "kind": DEVICE_KINDS[options.device]},
        "tensorrt_accelerator": options.tensorrt_accelerator,
        # Triton counts warm-up batches in requests; a model it does not batch takes its full shape once
        "warmup": {"batch_size": 1, "inputs": warm_inputs} if options.warmup else None,
        "parameters": parameters,
    }


def parse_config(text: str, origin: str):
    """The rendered text as Triton's ModelConfig message; a syntax error names the line."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    config = model_config_pb2.ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as e:
        raise UserError(f"config.pbtxt rendered from {origin} is not a valid Triton model config: {e}") from None
    return config


def check_config(config, name: str, inputs: list[dict], outputs: list[dict], origin: str,
                 platform: str = ONNX_PLATFORM) -> None:
    """The rules Triton's schema cannot express, checked against the exported model's signature."""
    from tritonclient.grpc import model_config_pb2

    def refuse(field: str, problem: str):
        raise UserError(f"config.pbtxt rendered from {origin}: {field}: {problem}")

    if config.name != name:
        refuse("name", f"is {config.name!r}, but the model folder is {name!r} (Triton requires them equal)")
    if config.platform != platform and not (platform == ONNX_PLATFORM and config.backend == "onnxruntime"):
        refuse("platform", f"is {config.platform or config.backend!r}; the bundle's model needs {platform!r}")
    batched = config.max_batch_size > 0
    if config.max_batch_size < 0:
        refuse("max_batch_size", "must not be negative")
    if batched and not all(isinstance(t["shape"][0], str) for t in inputs + outputs):
        refuse("max_batch_size", f"is {config.max_batch_size}, but the model's batch dimension is fixed: "
                                 f"Triton can only batch a model exported with a dynamic batch")
    if config.HasField("dynamic_batching"):
        if not batched:
            refuse("dynamic_batching", "needs max_batch_size > 0")
        too_big = [b for b in config.dynamic_batching.preferred_batch_size if b > config.max_batch_size]
        if too_big:
            refuse("dynamic_batching.preferred_batch_size", f"{too_big} exceed max_batch_size {config.max_batch_size}")
    for kind, declared, actual in (("input", config.input, inputs), ("output", config.output, outputs)):
        expected = {t["name"]: t for t in actual}
        names = [t.name for t in declared]
        if sorted(names) != sorted(expected):
            refuse(kind, f"names {names} differ from the model's {sorted(expected)}")
        for tensor in declared:
            model_tensor = expected[tensor.name]
            dtype = model_config_pb2.DataType.Name(tensor.data_type)
            if dtype != TRITON_DTYPES[model_tensor["dtype"]]:
                refuse(f"{kind} '{tensor.name}'.data_type", f"is {dtype}; the model's is "
                                                          f"{TRITON_DTYPES[model_tensor['dtype']]}")
            want = _dims(model_tensor["shape"], batched)
            if list(tensor.dims) != want:
                refuse(f"{kind} '{tensor.name}'.dims", f"are {list(tensor.dims)}; the model's are {want}"
                                                     + (" (without the batch dim, as max_batch_size > 0)" if batched else ""))
    for warmup in config.model_warmup:
        if batched and not 1 <= warmup.batch_size <= config.max_batch_size:
            refuse(f"model_warmup '{warmup.name}'.batch_size", f"must be between 1 and {config.max_batch_size}")
        for key, value in warmup.inputs.items():
            if key not in {t["name"] for t in inputs}:
                refuse(f"model_warmup '{warmup.name}'.inputs", f"'{key}' is not an input of the model")
            want = _dims(next(t["shape"] for t in inputs if t["name"] == key), batched)
            if len(value.dims) != len(want) or any(w not in (-1, d) for w, d in zip(want, value.dims)):
                refuse(f"model_warmup '{warmup.name}'.inputs '{key}'.dims", f"are {list(value.dims)}; the model "
                                                                             f"takes {want}")
    for group in config.instance_group:
        if group.count < 1:
            refuse("instance_group.count", "must be at least 1")


def render_config(renderer, spec, inputs: list[dict], outputs: list[dict], context: dict) -> str:
    """config.pbtxt rendered, parsed with Triton's schema and checked against the model's signature."""
    template = "triton/config.pbtxt.j2"
    origin = f"{'override' if template in renderer.overridden else 'shipped template'} '{template}'"
    text = renderer.render(template, context)
    check_config(parse_config(text, origin), spec.model_name, inputs, outputs, origin, context["platform"])
    return text
