"""Triton's config.pbtxt: the template's context from the exported model, and the checks a config must pass.

A rendered config (shipped template or a release team's override) is parsed with Triton's own schema
(`model_config_pb2.ModelConfig` from tritonclient) and then checked for what the schema cannot see: the
folder name, the platform, batch dims against `max_batch_size`, and tensor names, dtypes and dims equal to
the ONNX model's. A config that fails is refused with the field that is wrong.
"""
from __future__ import annotations

from builder.core.errors import UserError

ONNX_PLATFORM = "onnxruntime_onnx"
TENSORRT_PLATFORM = "tensorrt_plan"
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


REPOSITORY = "model_repository"
ENGINE_ONNX = "onnx/model.onnx"
ENGINE_SCRIPT = "build_engine.py"


def engine_arguments(spec) -> str:
    """build_engine.py's options that rebuild the bundle's engine with its profile."""
    p = spec.engine_profile
    return (f"--min-batch {p['min_batch']} --opt-batch {p['opt_batch']} --max-batch {p['max_batch']} "
            f"--workspace-gb {p['workspace_gb']:g}")


class TritonTarget:
    """A Triton model repository with the generated client beside it (not inside: Triton would try to load
    any folder of its repository as a model, and refuses to start when one has no config)."""

    def __init__(self, spec):
        self.spec = spec
        self.model_dir = f"{REPOSITORY}/{spec.model_name}"
        self.engine = spec.export.engine == "tensorrt"
        # with an engine, the repository serves model.plan and the ONNX travels beside it, to rebuild the
        # engine on the serving GPU (build_engine.py)
        self.model_file = ENGINE_ONNX if self.engine else f"{self.model_dir}/{spec.version}/model.onnx"
        self.plan_file = f"{self.model_dir}/{spec.version}/model.plan"

    def stage_files(self, outcome) -> dict:
        if not self.engine:
            return {outcome.model: self.model_file}
        return {outcome.model: self.model_file, outcome.plan: self.plan_file}

    def render(self, renderer, context: dict, staging) -> None:
        import json

        spec = self.spec
        parameters = {"class_names": json.dumps(context["class_names"], ensure_ascii=False),
                      "preprocessing": json.dumps(context["preprocessing"], sort_keys=True),
                      "postprocessing": json.dumps(context["nms"], sort_keys=True),
                      "precision": context["precision"], "builder_version": context["builder_version"],
                      "source_model": context["model"]}
        config_ctx = config_context(spec, spec.model_name, [context["input"]], context["outputs"], parameters,
                                    TENSORRT_PLATFORM if self.engine else ONNX_PLATFORM)
        text = render_config(renderer, spec, [context["input"]], context["outputs"], {**context, **config_ctx})
        files = {f"{self.model_dir}/config.pbtxt": text,
                 f"{self.model_dir}/labels.txt": renderer.render("common/labels.txt.j2", context),
                 "client/triton_client.py": renderer.render("triton/triton_client.py.j2", context),
                 "client/requirements.txt": renderer.render("triton/requirements.txt.j2", context),
                 "Dockerfile": renderer.render("triton/Dockerfile.j2", {**context, "repository": REPOSITORY,
                                                                      "serving_image": spec.triton.serving_image}),
                 "README.md": renderer.render("triton/README.md.j2", {**context, "repository": REPOSITORY,
                                                                     "config": config_ctx,
                                                                     "engine_args": engine_arguments(spec)})}
        for relative, content in files.items():
            path = staging / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content, encoding="utf-8")
        (staging / "client/triton_client.py").chmod(0o755)
        if self.engine:
            import shutil

            from builder.engines import tensorrt as engine_module

            shutil.copyfile(engine_module.__file__, staging / ENGINE_SCRIPT)
            (staging / ENGINE_SCRIPT).chmod(0o755)

    def usage(self, destination) -> str:
        spec = self.spec
        batching = (f"Triton batches up to {spec.max_batch_size} images" if spec.max_batch_size
                    else "Triton does not batch it (max_batch_size 0)")
        return "\n".join([
            f"Bundled {spec.model_name} ({spec.export.model}, {spec.export.precision}, "
            f"{spec.export.output_predictions_format} format; {batching}) for Triton in {destination}",
            f"  model repository: {destination / REPOSITORY}",
            f"  client:           {destination / 'client' / 'triton_client.py'}",
            "",
            "Serve it and detect:",
            "",
            f"  tritonserver --model-repository {destination / REPOSITORY}",
            f"  pip install -r {destination / 'client' / 'requirements.txt'}",
            f"  python {destination / 'client' / 'triton_client.py'} image.jpg --url localhost:8000",
        ])
