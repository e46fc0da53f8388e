"""The build spec: every option of an export, validated once, and the one place defaults live."""
from __future__ import annotations

import pathlib
from typing import Any, Literal, Optional

from pydantic import (BaseModel, ConfigDict, Field, StrictInt, ValidationError, field_validator,
                      model_validator)

from builder.core.errors import UserError
from builder.models.registry import MAX_NUM_CLASSES  # the models bound it (see there); the spec states it
from builder.models.registry import NAMED_WEIGHTS

#: the ONNX opset we export: read by ONNX Runtime >= 1.14 and TensorRT 10's parser
DEFAULT_OPSET = 18

# Upper bounds: without them a typo (99968x99968, a batch of 10^8) passes validation and the export then tries
# to allocate up to terabytes. Each is stated in its field's description, which is the CLI help.
#: largest input height or width: 6.4 times the families' 640, room for large tiles
MAX_INPUT_SIDE = 4096
#: largest fixed batch (and Triton max_batch_size)
MAX_BATCH_SIZE = 1024
#: batch x height x width of a fixed-batch input: the trace and the smoke run hold the activations of the whole
#: batch at once, so the two bounds above alone would still allow 1024 x 4096 x 4096 (hundreds of GB)
MAX_BATCH_PIXELS = 64 * 640 * 640
#: candidates that enter NMS (a 4096x4096 input has 344064 anchors)
MAX_PRE_NMS_PREDICTIONS = 100_000
#: detections per image: every output pads to this many rows
MAX_PREDICTIONS_PER_IMAGE = 10_000
MAX_CALIBRATION_COUNT = 10_000
DEFAULT_MAX_PREDICTIONS = 1000


class ExportSpec(BaseModel):
    """What `builder export` (and `builder.export()`) builds. Field descriptions are the CLI help."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)  # built on first use: --help stays cheap

    model: str = Field(description="Variant, e.g. yolo_nas_s (see 'builder models').")
    weights: Optional[str] = Field(None, description="Checkpoint file, http(s) URL, 'coco' (the published COCO weights), 'demo' (ppyoloe_s trained on six shapes: real detections on the demo image) or 'random'. Default: random, which tests the pipeline but detects nothing real.")
    num_classes: Optional[int] = Field(None, ge=1, le=MAX_NUM_CLASSES, strict=True, description=f"Class count (at most {MAX_NUM_CLASSES}). Default: read from the checkpoint, else 80.")
    input_image_shape: Optional[tuple[StrictInt, StrictInt]] = Field(None, description=f"Input H, W (multiples of 32, 32-{MAX_INPUT_SIDE}). Default: the family's (640x640).")
    batch_size: int = Field(1, ge=1, le=MAX_BATCH_SIZE, strict=True, description=f"Fixed batch size of the input (1-{MAX_BATCH_SIZE}; batch x height x width at most {MAX_BATCH_PIXELS:,}, i.e. 64 images of 640x640).")
    dynamic_batch: bool = Field(False, strict=True, description="Symbolic batch dimension instead of a fixed batch size.")
    preprocessing: bool = Field(True, strict=True, description="uint8 RGB input with the cast, channel order and normalisation in the graph.")
    postprocessing: bool = Field(True, strict=True, description="Decoding, top-k and NMS in the graph; otherwise raw boxes and scores.")
    confidence_threshold: Optional[float] = Field(None, ge=0.0, le=1.0, description="Score threshold. Default: the family's.")
    nms_threshold: Optional[float] = Field(None, ge=0.0, le=1.0, description="IoU threshold of NMS. Default: the family's.")
    num_pre_nms_predictions: int = Field(1000, ge=1, le=MAX_PRE_NMS_PREDICTIONS, strict=True, description=f"Candidates (by best class score) that enter NMS (at most {MAX_PRE_NMS_PREDICTIONS}).")
    max_predictions_per_image: int = Field(DEFAULT_MAX_PREDICTIONS, ge=1, le=MAX_PREDICTIONS_PER_IMAGE, strict=True, description=f"Detections kept per image, best scores first; every output pads to this many. At most {MAX_PREDICTIONS_PER_IMAGE} and at most the pre-NMS candidates (a lower --pre-nms-top-k lowers the default to it).")
    output_predictions_format: Literal["batch", "flat"] = Field("batch", description="batch: num/boxes/scores/classes tensors; flat: [N, 7] rows.")
    nms: str = Field("onnx", description="NMS in the graph: onnx (ONNX NonMaxSuppression) or tensorrt (TensorRT's EfficientNMS plugin).")
    runtime: str = Field("onnxruntime", description="What serves the model: onnxruntime (the ONNX file) or tensorrt (an engine built from it).")
    onnx_opset: int = Field(DEFAULT_OPSET, ge=18, le=21, strict=True, description="ONNX opset of the export, 18 to 21 (torch's dynamo exporter writes 18 or later; ONNX Runtime 1.16+ and TensorRT 10 read them).")
    onnx_simplify: bool = Field(True, strict=True, description="Simplify the graph (constant folding, shape cleanup).")
    precision: Literal["fp32", "fp16", "int8"] = Field("fp32", description="Numeric precision of the network (decode and NMS stay float32).")
    calibration_images: Optional[str] = Field(None, description="Folder of images for INT8 calibration. Default: builder's built-in photos (with a warning).")
    calibration_count: int = Field(64, ge=1, le=MAX_CALIBRATION_COUNT, strict=True, description=f"How many calibration images to use (at most {MAX_CALIBRATION_COUNT}).")
    calibration_method: Literal["minmax", "entropy", "percentile"] = Field("minmax", description="How INT8 activation ranges are chosen from the calibration images.")
    report_images: Optional[str] = Field(None, description="Folder of held-out images (not the calibration ones) on which the FP16/INT8 accuracy report compares against FP32. Default: builder's built-in photos.")

    @model_validator(mode="before")
    @classmethod
    def _engine_shorthand(cls, values: Any) -> Any:
        """SuperGradients' `engine=` names a runtime and, with it, the NMS flavour that runtime carries."""
        if not isinstance(values, dict) or values.get("engine") is None:
            if isinstance(values, dict):
                values = {k: v for k, v in values.items() if k != "engine"}
            return values
        from builder.exporting.nms import for_engine

        values = dict(values)
        engine = values.pop("engine")
        if not isinstance(engine, str):
            raise ValueError(f"engine must be text ('onnxruntime' or 'tensorrt'), got {type(engine).__name__}")
        engine = engine.lower()
        try:
            chosen = for_engine(engine)
        except UserError as e:
            raise ValueError(e.one_line()) from None
        for field, value in (("nms", chosen.name), ("runtime", engine)):
            if values.get(field) is not None and values[field] != value:
                raise ValueError(f"--engine {engine} means --{field} {value}, but --{field} {values[field]} was given "
                                 f"(in Python: engine={engine!r}, {field}={values[field]!r}): give one of them")
            values[field] = value
        return values

    @model_validator(mode="before")
    @classmethod
    def _detections_follow_candidates(cls, values: Any) -> Any:
        """At most the pre-NMS candidates can be detections: without a count of its own, it follows a lower one."""
        if not isinstance(values, dict) or values.get("max_predictions_per_image") is not None:
            return values
        top_k = values.get("num_pre_nms_predictions")
        if isinstance(top_k, int) and not isinstance(top_k, bool) and 1 <= top_k < DEFAULT_MAX_PREDICTIONS:
            values = {**values, "max_predictions_per_image": top_k}
        return values

    @field_validator("confidence_threshold", "nms_threshold", mode="before")
    @classmethod
    def _not_a_boolean(cls, value: Any) -> Any:
        if isinstance(value, bool):  # pydantic would read True as 1.0
            raise ValueError(f"expected a number from 0 to 1, got {value}")
        return value

    @field_validator("weights")
    @classmethod
    def _random_is_none(cls, value: Optional[str]) -> Optional[str]:
        return None if value == "random" else value  # the explicit name of the default

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        # checked with the other options, before any work is announced (the families are torch-free declarations)
        from builder.models.registry import family_of

        return registered(family_of, value)

    @field_validator("nms")
    @classmethod
    def _known_flavour(cls, value: str) -> str:
        from builder.exporting.nms import flavour

        return registered(flavour, value)

    @field_validator("runtime")
    @classmethod
    def _known_runtime(cls, value: str) -> str:
        from builder.exporting.runtimes import runtime

        return registered(runtime, value)

    @field_validator("input_image_shape")
    @classmethod
    def _multiple_of_32(cls, value: Optional[tuple[int, int]]) -> Optional[tuple[int, int]]:
        if value is not None and any(v < 32 or v % 32 for v in value):
            raise ValueError(f"height and width must be multiples of 32 and at least 32, got {value[0]}x{value[1]}")
        if value is not None and any(v > MAX_INPUT_SIDE for v in value):
            raise ValueError(f"height and width must be multiples of 32 and at most {MAX_INPUT_SIDE}, "
                             f"got {value[0]}x{value[1]}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "ExportSpec":
        if self.dynamic_batch and self.batch_size != 1:
            raise ValueError("dynamic_batch and a batch_size other than 1 contradict each other: choose one")
        if not self.postprocessing and self.output_predictions_format != "batch":
            raise ValueError("output_predictions_format only applies with postprocessing: drop one of them")
        if self.calibration_images is not None and self.precision != "int8":
            raise ValueError("calibration_images only apply to precision int8")
        if self.report_images is not None and self.precision == "fp32":
            raise ValueError("report_images only apply to precision fp16 or int8 (the report compares against fp32)")
        if not self.postprocessing and self.nms != type(self).model_fields["nms"].default:
            raise ValueError("nms selects the NMS flavour; without postprocessing there is none")
        if self.max_predictions_per_image > self.num_pre_nms_predictions:
            most, top_k = self.max_predictions_per_image, self.num_pre_nms_predictions
            raise ValueError(f"max_predictions_per_image ({most}) exceeds num_pre_nms_predictions ({top_k}): at most "
                             f"{top_k} detections can exist; lower --max-detections or raise --pre-nms-top-k")
        self._check_batch_pixels()
        if self.runtime not in self.flavour.runtimes:
            raise ValueError(f"the {self.nms} NMS ({self.flavour.description}) runs on {', '.join(self.flavour.runtimes)}, "
                             f"not on {self.runtime}")
        return self

    def _check_batch_pixels(self) -> None:
        if self.dynamic_batch:  # traced with a batch of 2; Triton's max_batch_size bounds what it serves
            return
        shape = self.input_image_shape
        if shape is None:
            from builder.models.registry import family_of

            try:
                shape = family_of(self.model).input_size
            except UserError:  # an unknown model is reported where the model is built, with its suggestions
                return
        (height, width), batch = shape, self.batch_size
        pixels = batch * height * width
        if pixels > MAX_BATCH_PIXELS:
            raise ValueError(f"batch_size x height x width is {batch} x {height} x {width} = {pixels:,} pixels, more "
                             f"than {MAX_BATCH_PIXELS:,} (64 images of 640x640): lower --batch-size or --input-shape, "
                             f"or use --dynamic-batch")

    @property
    def flavour(self):
        """The NMS flavour object: its graph, outputs and runtimes."""
        from builder.exporting.nms import flavour

        return flavour(self.nms)

    @property
    def serving(self):
        """The runtime object that serves the model: Triton platform, plan build, INT8 encoding."""
        from builder.exporting.runtimes import runtime

        return runtime(self.runtime)

    @property
    def engine(self) -> str:
        """SuperGradients' name for the runtime."""
        return self.runtime

    @classmethod
    def create(cls, **values: Any) -> "ExportSpec":
        """Validate user input; a bad value becomes one line naming the option."""
        try:
            return cls(**values)
        except ValidationError as e:
            raise UserError(validation_message(e)) from None


def registered(lookup, name: str) -> str:
    """`name` when the registry `lookup` knows it; else the registry's one-line error, as a validation error."""
    try:
        lookup(name)
    except UserError as e:
        raise ValueError(e.one_line()) from None
    return name


def validation_message(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        return f"unknown option '{where}'"
    if first["type"] == "missing":
        return f"missing option '{where}'"
    return f"invalid {where}: {message}" if where else f"invalid options: {message}"


def parse_shape(text: str) -> tuple[int, int]:
    """'640x480' or '640' -> (640, 480) / (640, 640)."""
    parts = text.lower().replace(",", "x").split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise UserError(f"invalid input shape '{text}': expected HxW, e.g. 640x640") from None
    if len(values) == 1:
        values *= 2
    if len(values) != 2:
        raise UserError(f"invalid input shape '{text}': expected HxW, e.g. 640x640")
    return values[0], values[1]


def parse_sizes(text: str) -> tuple[int, ...]:
    """'4,8' -> (4, 8)."""
    try:
        return tuple(int(part) for part in text.replace(" ", "").split(",") if part)
    except ValueError:
        raise UserError(f"invalid batch sizes '{text}': expected numbers separated by commas, e.g. 4,8") from None


def check_inputs(spec: ExportSpec) -> None:
    """Every file and folder the spec names is there and of its kind: one line now, not after minutes of export.

    Not a validator: a spec is also read where its paths need not hold (a bundle's build.yaml on another host).
    """
    weights = spec.weights
    if weights == "demo":
        from builder.models.demo import check_variant

        check_variant(spec.model)
    elif weights is not None and weights not in NAMED_WEIGHTS and not weights.startswith(("http://", "https://")):
        path = pathlib.Path(weights).expanduser()
        if path.is_dir():
            raise UserError(f"weights '{weights}' is a folder, not a checkpoint file")
        if not path.is_file():
            raise UserError(f"weights '{weights}' are neither a file, a URL, 'coco' nor 'demo'")
    for what, folder in (("calibration images", spec.calibration_images), ("report images", spec.report_images)):
        if folder is not None:
            check_image_folder(what, folder)


def check_image_folder(what: str, folder: str) -> None:
    """`folder` is a folder holding at least one image (the first one found ends the search)."""
    from builder.core.images import IMAGE_SUFFIXES

    path = pathlib.Path(folder)
    if not path.exists():
        raise UserError(f"{what} folder '{folder}' does not exist")
    if not path.is_dir():
        raise UserError(f"{what} folder '{folder}' is not a folder")
    try:
        found = any(p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() for p in path.rglob("*"))
    except OSError as e:
        raise UserError(f"cannot read {what} folder '{folder}': {e.strerror or e}") from None
    if not found:
        raise UserError(f"{what} folder '{folder}' holds no {'/'.join(IMAGE_SUFFIXES)} files")
