"""The bundle spec: an export spec plus what the bundle is called, which target, and how Triton serves it.

It is what `build.yaml` holds: `builder bundle --spec build.yaml` reads it, CLI flags override it, and the
fully resolved spec is written into every bundle so that the bundle can be rebuilt from itself.
"""
from __future__ import annotations

import functools
import pathlib
import re
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, field_validator, model_validator

from builder.core.errors import UserError
from builder.exporting.spec import MAX_BATCH_SIZE, ExportSpec, check_inputs, registered, validation_message

#: Triton model names become folder names and URL path segments
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
DEFAULT_MAX_BATCH_SIZE = 8
#: Triton reads version folders as int64, its clients and some tooling as int32
MAX_VERSION = 2 ** 31 - 1
#: a build.yaml is a few hundred bytes; reading more would let a wrong file (or /dev/zero) fill the memory
MAX_SPEC_FILE_BYTES = 2 ** 20
#: build.yaml nests three levels (export: input_image_shape: [H, W]); PyYAML composes nodes recursively, so
#: deeper input would end in a RecursionError
MAX_SPEC_DEPTH = 16
#: the Triton release whose TensorRT (10.3) is the builder image's
DEFAULT_SERVING_IMAGE = "nvcr.io/nvidia/tritonserver:24.08-py3"
IMAGE_PATTERN = re.compile(r"[a-z0-9][a-z0-9._/-]*(:[0-9]{1,5}/[a-z0-9._/-]+)?(:[A-Za-z0-9_][A-Za-z0-9._-]{0,127})?(@sha256:[a-f0-9]{64})?")


class TritonOptions(BaseModel):
    """How Triton serves the model (config.pbtxt). Field descriptions are the CLI help."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)  # built on first use: --help stays cheap

    max_batch_size: Optional[int] = Field(None, ge=1, le=MAX_BATCH_SIZE, strict=True, description=f"Largest batch Triton's dynamic batcher forms (1-{MAX_BATCH_SIZE}; batch format with --dynamic-batch only). Default: {DEFAULT_MAX_BATCH_SIZE}.")
    preferred_batch_sizes: Optional[tuple[StrictInt, ...]] = Field(None, description=f"Batch sizes the dynamic batcher prefers (each 1-{MAX_BATCH_SIZE}), e.g. 4,8. Default: none (as large as the queue allows).")
    max_queue_delay_us: int = Field(100, ge=0, le=10_000_000, strict=True, description="How long (µs) the dynamic batcher waits to fill a batch (at most 10000000).")
    device: Literal["auto", "cpu", "gpu"] = Field("auto", description="Where Triton runs the instances: auto is the GPU when there is one.")
    instances: int = Field(1, ge=1, le=64, strict=True, description="Model instances (per GPU with --device gpu; 1-64).")
    tensorrt_accelerator: bool = Field(False, strict=True, description="Let ONNX Runtime hand the graph to TensorRT in FP16 (GPU only).")
    warmup: bool = Field(True, strict=True, description="Run one all-zeros request when the model loads.")
    serving_image: str = Field(DEFAULT_SERVING_IMAGE, max_length=255, description="tritonserver image the bundle's Dockerfile builds on (pin a digest with @sha256:...).")

    @field_validator("serving_image")
    @classmethod
    def _image_reference(cls, value: str) -> str:
        if not IMAGE_PATTERN.fullmatch(value):
            raise ValueError(f"{value!r} is not an image reference like nvcr.io/nvidia/tritonserver:24.08-py3[@sha256:...]")
        return value

    @field_validator("preferred_batch_sizes")
    @classmethod
    def _positive(cls, value: Optional[tuple[int, ...]]) -> Optional[tuple[int, ...]]:
        if value is not None and (not value or any(not 1 <= v <= MAX_BATCH_SIZE for v in value)
                                  or len(set(value)) != len(value)):
            raise ValueError(f"expected distinct positive batch sizes of at most {MAX_BATCH_SIZE}, e.g. 4,8")
        return None if value is None else tuple(sorted(value))


class TensorRTOptions(BaseModel):
    """How the engine is built (--runtime/--engine tensorrt, Triton target). Field descriptions are the CLI help."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)  # built on first use: --help stays cheap

    workspace_gb: float = Field(4.0, gt=0, le=1024, description="TensorRT builder workspace limit (GiB, at most 1024).")
    opt_batch: Optional[int] = Field(None, ge=1, le=MAX_BATCH_SIZE, strict=True, description=f"Batch size the engine is tuned for (dynamic batch; 1-{MAX_BATCH_SIZE}). Default: the largest preferred batch size, else max_batch_size.")

    @field_validator("workspace_gb", mode="before")
    @classmethod
    def _not_a_boolean(cls, value: Any) -> Any:
        if isinstance(value, bool):  # pydantic would read True as 1.0
            raise ValueError(f"expected a number of GiB, got {value}")
        return value


class _BundleSpecBase(BaseModel):
    """Everything `builder bundle` needs; `build.yaml` is this, resolved. Targets add their own sections."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)  # built on first use: --help stays cheap

    target: str = Field(description="What to build: triton (a Triton model repository and client), standalone (an ONNX Runtime package) or kserve (a Triton repository with KServe and Kubernetes manifests).")
    name: Optional[str] = Field(None, description="Model name (Triton's, and the folder's). Default: the model variant.")
    version: int = Field(1, ge=1, le=MAX_VERSION, strict=True, description=f"Model version (Triton's version folder; at most {MAX_VERSION}).")
    labels: Optional[str] = Field(None, description="Text file of class names, one per line. Default: the checkpoint's, else COCO's for 80 classes.")
    templates: Optional[str] = Field(None, description="Folder of templates that override the shipped ones by relative path. Default: the shipped templates only.")
    export: ExportSpec
    # factories, not instances: an instance validates, and so builds the model, when this module is imported
    triton: TritonOptions = Field(default_factory=TritonOptions)
    tensorrt: TensorRTOptions = Field(default_factory=TensorRTOptions)

    @field_validator("target")
    @classmethod
    def _known_target(cls, value: str) -> str:
        from builder.targets import target_class

        return registered(target_class, value)

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: Optional[str]) -> Optional[str]:
        if value is not None and not NAME_PATTERN.fullmatch(value):
            raise ValueError(f"{value!r} is not a valid model name: use 1-64 letters, digits, '_', '-' or '.', "
                             f"starting with a letter or digit")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "BundleSpec":
        export, triton = self.export, self.triton
        serving = export.serving
        self.target_class.check(self)
        if serving.builds_plan and triton.tensorrt_accelerator:
            raise ValueError("--tensorrt-accelerator is ONNX Runtime's TensorRT provider: with --engine tensorrt the "
                             "model already is a TensorRT engine")
        if not serving.builds_plan and self.tensorrt != TensorRTOptions():
            raise ValueError("TensorRT build options apply to --engine tensorrt only")
        if self.tensorrt.opt_batch is not None and (not self.batchable or self.tensorrt.opt_batch > self.max_batch_size):
            raise ValueError("--opt-batch needs a dynamic batch and at most max_batch_size")
        if not export.postprocessing or not export.preprocessing:
            raise ValueError("bundles ship builder's preprocessing and postprocessing: drop --no-preprocessing "
                             "and --no-postprocessing")
        if not self.batchable and (triton.max_batch_size is not None or triton.preferred_batch_sizes is not None):
            raise ValueError("Triton batches requests only for the batch format with --dynamic-batch: drop "
                             "--max-batch-size/--preferred-batch-sizes or add --dynamic-batch")
        if triton.preferred_batch_sizes and max(triton.preferred_batch_sizes) > self.max_batch_size:
            raise ValueError(f"preferred batch sizes {list(triton.preferred_batch_sizes)} exceed max_batch_size "
                             f"{self.max_batch_size}")
        if triton.tensorrt_accelerator and triton.device == "cpu":
            raise ValueError("the TensorRT accelerator runs on GPUs: drop --tensorrt-accelerator or use --device gpu")
        if not self.target_class.triton_options and triton != TritonOptions():
            from builder.targets import targets

            serving_targets = [name for name, target in targets().items() if target.triton_options]
            raise ValueError(f"Triton options apply to --target {' or '.join(serving_targets)} only")
        for name, target in target_sections().items():
            section = target.options[0]
            if name != self.target and getattr(self, section) != target.options[1]():
                raise ValueError(f"{section} options apply to --target {name} only")
        return self

    @property
    def target_class(self):
        from builder.targets import target_class

        return target_class(self.target)

    @property
    def engine_profile(self) -> dict:
        """The TensorRT optimization profile and workspace the stage builds the engine with."""
        if not self.export.dynamic_batch:
            size = self.export.batch_size
            return {"min_batch": size, "opt_batch": size, "max_batch": size, "workspace_gb": self.tensorrt.workspace_gb}
        most = self.max_batch_size or DEFAULT_MAX_BATCH_SIZE
        opt = self.tensorrt.opt_batch or max(self.triton.preferred_batch_sizes or (most,))
        return {"min_batch": 1, "opt_batch": opt, "max_batch": most, "workspace_gb": self.tensorrt.workspace_gb}

    @property
    def model_name(self) -> str:
        return self.name or self.export.model

    @property
    def batchable(self) -> bool:
        """Whether Triton may batch requests: per-image outputs (batch format) and a symbolic batch."""
        return self.export.dynamic_batch and self.export.output_predictions_format == "batch"

    @property
    def max_batch_size(self) -> int:
        """config.pbtxt's max_batch_size: 0 turns Triton's batching off (full shapes in the config)."""
        if not self.batchable:
            return 0
        return self.triton.max_batch_size or DEFAULT_MAX_BATCH_SIZE

    @classmethod
    def create(cls, values: dict[str, Any]) -> "BundleSpec":
        """Validate user input; a bad value becomes one line naming the option."""
        if isinstance(values, dict) and "export" not in values:  # name the missing option, not its section
            values = {**values, "export": {}}
        try:
            return cls(**values)
        except ValidationError as e:
            raise UserError(validation_message(e)) from None

    def to_yaml(self) -> str:
        import yaml

        from builder.core.version import __version__

        data = {"builder_version": __version__, **self.model_dump(mode="json")}
        header = ("# builder bundle spec: `builder bundle --spec build.yaml` rebuilds this bundle;\n"
                  "# command-line options override what is here.\n")
        return header + yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True)


def target_sections() -> dict:
    """Targets with options of their own: name -> Target class (its `options` names the section)."""
    from builder.targets import targets

    return {name: target for name, target in targets().items() if target.options}


def _bundle_spec() -> type:
    """BundleSpec: the common fields plus one section per target that has options (e.g. `kserve:`)."""
    from pydantic import create_model

    sections = {target.options[0]: (target.options[1], Field(default_factory=target.options[1]))
                for target in target_sections().values()}
    return create_model("BundleSpec", __base__=_BundleSpecBase, __module__=__name__, **sections)


BundleSpec = _bundle_spec()


def read_spec_file(path: str | pathlib.Path) -> dict[str, Any]:
    """The options in a build.yaml, as nested dicts (validated later, together with the CLI's overrides).

    Bounded and strict before anything is validated: at most MAX_SPEC_FILE_BYTES, no aliases (a few lines of
    them expand to gigabytes), no merge keys, no duplicate or non-text keys, at most MAX_SPEC_DEPTH levels.
    """
    import yaml

    from builder.core.version import __version__
    from builder.core.log import warn

    path = pathlib.Path(path)
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_SPEC_FILE_BYTES + 1)
    except FileNotFoundError:
        raise UserError(f"spec file '{path}' does not exist") from None
    except OSError as e:
        raise UserError(f"cannot read spec file '{path}': {e.strerror or e}") from None
    if len(raw) > MAX_SPEC_FILE_BYTES:
        raise UserError(f"spec file '{path}' is larger than {MAX_SPEC_FILE_BYTES // 2 ** 20} MiB",
                        hint="a build.yaml is a few hundred bytes: is it the right file?")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"cannot read spec file '{path}': {e}") from None
    try:
        data = yaml.load(text, Loader=_spec_loader())  # a SafeLoader, stricter still
    except SpecFileError as e:
        raise UserError(f"spec file '{path}' {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise UserError(f"spec file '{path}' is not valid YAML{where}") from None
    if not isinstance(data, dict):
        raise UserError(f"spec file '{path}' must hold a mapping of options, e.g. 'target: triton'")
    written_by = data.pop("builder_version", None)
    if written_by is not None and str(written_by) != __version__:
        warn(f"spec file '{path}' was written by builder {written_by}; this is builder {__version__}")
    return data


class SpecFileError(Exception):
    """What is wrong in a build.yaml, said after "spec file 'PATH'"."""


@functools.cache
def _spec_loader() -> type:
    """PyYAML's SafeLoader, refusing what a spec never needs and what would make reading it a hazard."""
    import yaml

    class SpecLoader(yaml.SafeLoader):
        depth = 0

        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise SpecFileError(f"line {event.start_mark.line + 1}: YAML aliases (*{event.anchor}) are not "
                                    f"allowed in a spec: write the value out")
            if self.depth >= MAX_SPEC_DEPTH:
                line = self.peek_event().start_mark.line + 1
                raise SpecFileError(f"line {line}: nests deeper than {MAX_SPEC_DEPTH} levels")
            self.depth += 1
            try:
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1

        def construct_object(self, node, deep=False):
            try:
                return super().construct_object(node, deep)
            except (ValueError, OverflowError):  # PyYAML's own, not YAMLErrors: an int of 5000 digits, month 13
                value = node.value if isinstance(node.value, str) else node.tag
                raise SpecFileError(f"line {node.start_mark.line + 1}: cannot read the value {_shown(value)}") from None

        def construct_mapping(self, node, deep=False):
            first_seen: dict[str, int] = {}
            for key_node, _value in node.value:
                line = key_node.start_mark.line + 1
                if key_node.tag == "tag:yaml.org,2002:merge":
                    raise SpecFileError(f"line {line}: merge keys (<<) are not allowed in a spec: write the "
                                        f"options out")
                key = self.construct_object(key_node, deep=True)
                if not isinstance(key, str):
                    raise SpecFileError(f"line {line}: key {_shown(key)} is not text: options are named, e.g. "
                                        f"'target: triton'")
                if key in first_seen:  # PyYAML keeps the last one: a silent override of a spec value
                    raise SpecFileError(f"line {line}: '{key}' is given twice (first on line {first_seen[key]}): "
                                        f"keep one")
                first_seen[key] = line
            return super().construct_mapping(node, deep)

    def bounded_int(loader, node):
        value = yaml.SafeLoader.construct_yaml_int(loader, node)
        if abs(value) >= 2 ** 63:  # 0x followed by megabytes of digits parses; it can be neither bound nor printed
            raise SpecFileError(f"line {node.start_mark.line + 1}: the number {_shown(node.value)} is too large")
        return value

    SpecLoader.add_constructor("tag:yaml.org,2002:int", bounded_int)
    return SpecLoader


def _shown(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def check_bundle_inputs(spec: "BundleSpec") -> None:
    """Every file and folder a bundle spec names is there: before a runner is chosen and minutes of export."""
    check_inputs(spec.export)
    if spec.labels is not None:
        labels = pathlib.Path(spec.labels)
        if not labels.exists():
            raise UserError(f"labels file '{spec.labels}' does not exist")
        if not labels.is_file():
            raise UserError(f"labels file '{spec.labels}' is not a file")
    if spec.templates is not None and not pathlib.Path(spec.templates).is_dir():
        what = "is not a folder" if pathlib.Path(spec.templates).exists() else "does not exist"
        raise UserError(f"templates folder '{spec.templates}' {what}")


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`overrides` on top of `base`, one level of nesting deep (export, triton)."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged
