"""The bundle spec: an export spec plus what the bundle is called, which target, and how Triton serves it.

It is what `build.yaml` holds: `builder bundle --spec build.yaml` reads it, CLI flags override it, and the
fully resolved spec is written into every bundle so that the bundle can be rebuilt from itself.
"""
from __future__ import annotations

import pathlib
import re
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from builder.core.errors import UserError
from builder.exporting.spec import ExportSpec, registered, validation_message

#: Triton model names become folder names and URL path segments
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
DEFAULT_MAX_BATCH_SIZE = 8
#: the Triton release whose TensorRT (10.3) is the builder image's
DEFAULT_SERVING_IMAGE = "nvcr.io/nvidia/tritonserver:24.08-py3"
IMAGE_PATTERN = re.compile(r"[a-z0-9][a-z0-9._/-]*(:[0-9]{1,5}/[a-z0-9._/-]+)?(:[A-Za-z0-9_][A-Za-z0-9._-]{0,127})?(@sha256:[a-f0-9]{64})?")


class TritonOptions(BaseModel):
    """How Triton serves the model (config.pbtxt). Field descriptions are the CLI help."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_batch_size: Optional[int] = Field(None, ge=1, le=1024, description=f"Largest batch Triton's dynamic batcher forms (batch format with --dynamic-batch only). Default: {DEFAULT_MAX_BATCH_SIZE}.")
    preferred_batch_sizes: Optional[tuple[int, ...]] = Field(None, description="Batch sizes the dynamic batcher prefers, e.g. 4,8. Default: none (as large as the queue allows).")
    max_queue_delay_us: int = Field(100, ge=0, le=10_000_000, description="How long (µs) the dynamic batcher waits to fill a batch.")
    device: Literal["auto", "cpu", "gpu"] = Field("auto", description="Where Triton runs the instances: auto is the GPU when there is one.")
    instances: int = Field(1, ge=1, le=64, description="Model instances (per GPU with --device gpu).")
    tensorrt_accelerator: bool = Field(False, description="Let ONNX Runtime hand the graph to TensorRT in FP16 (GPU only).")
    warmup: bool = Field(True, description="Run one all-zeros request when the model loads.")
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
        if value is not None and (not value or any(v < 1 for v in value) or len(set(value)) != len(value)):
            raise ValueError("expected distinct positive batch sizes, e.g. 4,8")
        return None if value is None else tuple(sorted(value))


class TensorRTOptions(BaseModel):
    """How the engine is built (--runtime/--engine tensorrt, Triton target). Field descriptions are the CLI help."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    workspace_gb: float = Field(4.0, gt=0, le=1024, description="TensorRT builder workspace limit (GiB).")
    opt_batch: Optional[int] = Field(None, ge=1, description="Batch size the engine is tuned for (dynamic batch). Default: the largest preferred batch size, else max_batch_size.")


class _BundleSpecBase(BaseModel):
    """Everything `builder bundle` needs; `build.yaml` is this, resolved. Targets add their own sections."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    target: str = Field(description="What to build: triton (a Triton model repository and client), standalone (an ONNX Runtime package), or another registered target.")
    name: Optional[str] = Field(None, description="Model name (Triton's, and the folder's). Default: the model variant.")
    version: int = Field(1, ge=1, description="Model version (Triton's version folder).")
    labels: Optional[str] = Field(None, description="Text file of class names, one per line. Default: the checkpoint's, else COCO's for 80 classes.")
    templates: Optional[str] = Field(None, description="Folder of templates that override the shipped ones by relative path.")
    export: ExportSpec
    triton: TritonOptions = TritonOptions()
    tensorrt: TensorRTOptions = TensorRTOptions()

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

    sections = {target.options[0]: (target.options[1], target.options[1]()) for target in target_sections().values()}
    return create_model("BundleSpec", __base__=_BundleSpecBase, __module__=__name__, **sections)


BundleSpec = _bundle_spec()


def read_spec_file(path: str | pathlib.Path) -> dict[str, Any]:
    """The options in a build.yaml, as nested dicts (validated later, together with the CLI's overrides)."""
    import yaml

    from builder.core.version import __version__
    from builder.core.log import warn

    path = pathlib.Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"spec file '{path}' does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read spec file '{path}': {e}") from None
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


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`overrides` on top of `base`, one level of nesting deep (export, triton)."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged
