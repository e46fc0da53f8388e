"""What an export made, and how to run it: printed like SuperGradients' export result, but for this model."""
from __future__ import annotations

import os
import pathlib
from dataclasses import dataclass, field
from typing import Any, Optional


class ModelPath(str):
    """The exported file's absolute path: a str, as SuperGradients' `result.output` is, that also answers
    pathlib's questions (`.with_suffix()`, `.parent`, `.exists()`, `/`, `== Path(...)`), which builder's code
    and its users ask of this field, a pathlib.Path before.

    Where str and pathlib.Path both have a method, str's wins (`.replace` is str.replace, as SG code expects).
    """

    __slots__ = ()

    def __new__(cls, value: str | os.PathLike) -> "ModelPath":
        return super().__new__(cls, os.fspath(value))

    @property
    def path(self) -> pathlib.Path:
        return pathlib.Path(str.__str__(self))

    def __fspath__(self) -> str:
        return str.__str__(self)

    def __getattr__(self, name: str) -> Any:  # only for names str lacks
        if name.startswith("__"):  # copy, pickle and friends probe optional hooks: a Path's are not ours
            raise AttributeError(name)
        return getattr(self.path, name)

    def __truediv__(self, other: str | os.PathLike) -> pathlib.Path:
        return self.path / other

    def __eq__(self, other: object) -> bool:
        if isinstance(other, pathlib.PurePath):
            return self.path == other
        return str.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self == other

    # hashed as the str it is: an equal pathlib.Path hashes otherwise, so a set or dict key takes one kind
    __hash__ = str.__hash__


@dataclass(frozen=True)
class ExportResult:
    """builder's record of an export, with SuperGradients' `ObjectDetectionModelExportResult` fields as well.

    SG aliases (read-only, derived from builder's fields): `input_image_shape` (H, W), `input_image_channels`,
    `input_image_dtype` (a torch dtype), `quantization_mode` (None, "fp16", "int8": plain strings, equal to
    SG's `ExportQuantizationMode` members), `usage_instructions`. `engine`, `output_predictions_format` and
    `batch_size` are builder's own fields under SG's names; `output` is a `ModelPath` (a str, as in SG, and a
    path, as in builder).
    """

    output: ModelPath
    model: str
    engine: str  # SuperGradients' name for the runtime
    output_predictions_format: Optional[str]  # None without (builder's) postprocessing
    input_name: str
    input_shape: list
    input_dtype: str
    inputs: list[dict]
    outputs: list[dict]
    preprocessing_steps: list[str]
    resize: str
    confidence_threshold: Optional[float]
    nms_threshold: Optional[float]
    num_pre_nms_predictions: Optional[int]
    max_predictions_per_image: Optional[int]
    batch_size: Optional[int]  # None for a dynamic batch
    export_seconds: float
    class_names: Optional[list[str]] = None
    num_classes: Optional[int] = None
    spec: dict[str, Any] = field(default_factory=dict)
    precision: str = "fp32"
    #: for fp16/int8: agreement with FP32 on held-out images (also written next to the model as JSON)
    accuracy_report: Optional[dict[str, Any]] = None
    nms: str = "onnx"  # the NMS flavour in the graph
    runtime: str = "onnxruntime"  # what serves the model

    def __post_init__(self) -> None:
        # stage.json and the runners hand in a pathlib.Path or a str
        if not isinstance(self.output, ModelPath):
            object.__setattr__(self, "output", ModelPath(self.output))

    @property
    def output_names(self) -> list[str]:
        return [o["name"] for o in self.outputs]

    @property
    def dynamic_batch(self) -> bool:
        return self.batch_size is None

    # SuperGradients' names (ObjectDetectionModelExportResult); builder's fields above are the source

    @property
    def input_image_shape(self) -> tuple[int, int]:
        """SG alias: the input's (height, width); builder's `input_shape` is [B, C, H, W]."""
        return int(self.input_shape[2]), int(self.input_shape[3])

    @property
    def input_image_channels(self) -> int:
        """SG alias: channels of the input (3, RGB)."""
        return int(self.input_shape[1])

    @property
    def input_image_dtype(self):
        """SG alias: the input's torch dtype (torch.uint8 with preprocessing, else torch.float32); builder's
        `input_dtype` is its name. Needs torch, so it is looked up only when read (the host has none)."""
        from builder.core.extras import require

        require("export", "torch")
        import torch

        return getattr(torch, self.input_dtype)

    @property
    def quantization_mode(self) -> Optional[str]:
        """SG alias: None for FP32, else "fp16" or "int8" (plain strings; equal to SG's enum members)."""
        return None if self.precision == "fp32" else self.precision

    @property
    def usage_instructions(self) -> str:
        """SG alias of `usage`: where the model is, its signature and how to run it."""
        return self.usage

    @property
    def usage(self) -> str:
        return "\n".join(self._summary() + ["", "Run it:", "", self.snippet()])

    def __str__(self) -> str:
        return self.usage

    __repr__ = __str__

    def _summary(self) -> list[str]:
        from builder.exporting.nms import flavour

        lines = [f"Exported {self.model} to {self.output}",
                 f"  input  '{self.input_name}': {self.input_dtype} {_shape(self.input_shape)}"
                 + (" (RGB)" if self.input_dtype == "uint8" else "")]
        if self.preprocessing_steps:
            lines.append("  preprocessing in the graph: " + ", ".join(self.preprocessing_steps))
        lines.append(f"  resize before feeding it (not in the graph): {self.resize}")
        if self.output_predictions_format:
            lines.append(f"  postprocessing in the graph: decode, top {self.num_pre_nms_predictions} candidates, "
                         f"class-aware NMS ({flavour(self.nms).description}) "
                         f"with confidence > {self.confidence_threshold:g}, IoU {self.nms_threshold:g}, "
                         f"at most {self.max_predictions_per_image} detections per image, best first")
            lines.append(f"  output format: {self.output_predictions_format}")
        for o in self.outputs:
            lines.append(f"  output '{o['name']}': {o['dtype']} {_shape(o['shape'])}")
        if self.accuracy_report:
            from builder.quantize.report import summary

            lines.append(f"  precision: {self.precision}; {summary(self.accuracy_report)}")
            lines.append(f"  accuracy report: {self.accuracy_report['path']}")
        return lines

    def snippet(self) -> str:
        from builder.exporting.nms import flavour

        if not flavour(self.nms).runs_on_onnxruntime:
            return self._tensorrt_snippet()
        batch = self.input_shape[0] if isinstance(self.input_shape[0], int) else 1
        shape = tuple([batch] + list(self.input_shape[1:]))
        lines = ["import numpy as np",
                 "import onnxruntime as ort",
                 "",
                 f"session = ort.InferenceSession({str(self.output)!r}, providers=['CPUExecutionProvider'])",
                 f"images = np.zeros({shape!r}, dtype=np.{self.input_dtype})  # your images, resized: {self.resize}"]
        names = self.output_names
        if self.output_predictions_format == "batch":
            lines += [f"{', '.join(names)} = session.run(None, {{{self.input_name!r}: images}})",
                      "for image_index in range(num_predictions.shape[0]):",
                      "    for i in range(int(num_predictions[image_index, 0])):",
                      "        x1, y1, x2, y2 = pred_boxes[image_index, i]",
                      "        class_id, score = int(pred_classes[image_index, i]), float(pred_scores[image_index, i])",
                      "        print(f'image {image_index}: class {class_id} score {score:.3f} box {x1:.1f} {y1:.1f} {x2:.1f} {y2:.1f}')"]
        elif self.output_predictions_format == "flat":
            lines += [f"[predictions] = session.run(None, {{{self.input_name!r}: images}})",
                      "for image_index, x1, y1, x2, y2, score, class_id in predictions:",
                      "    print(f'image {int(image_index)}: class {int(class_id)} score {score:.3f} box {x1:.1f} {y1:.1f} {x2:.1f} {y2:.1f}')"]
        else:
            lines += [f"outputs = session.run(None, {{{self.input_name!r}: images}})",
                      f"for name, value in zip({names!r}, outputs):",
                      "    print(name, value.dtype, value.shape)"]
        return "\n".join(lines)

    def _tensorrt_snippet(self) -> str:
        engine = self.output.with_suffix(".plan")
        shapes = ""
        if self.dynamic_batch:
            dims = "x".join(str(d) for d in self.input_shape[1:])
            shapes = (f" --minShapes={self.input_name}:1x{dims} --optShapes={self.input_name}:8x{dims}"
                      f" --maxShapes={self.input_name}:32x{dims}")
        lines = ["# The NMS is TensorRT's EfficientNMS_TRT plugin: build and run with TensorRT (not ONNX Runtime).",
                 f"trtexec --onnx={self.output} --saveEngine={engine}{shapes} --fp16",
                 "# outputs, per image best first: " + ", ".join(f"{o['name']} {o['dtype']} {_shape(o['shape'])}"
                                                                   for o in self.outputs)]
        if self.output_predictions_format == "flat":
            lines.append("# predictions rows: image_index, x1, y1, x2, y2, score, class")
        else:
            lines.append("# rows beyond num_dets[i] are padding")
        return "\n".join(lines)


def save_report(report: dict, model_path: pathlib.Path) -> pathlib.Path:
    """`<model>.accuracy.json` next to the model, written atomically."""
    import json

    from builder.core.files import atomic_file

    path = model_path.resolve().with_suffix(".accuracy.json")
    report["path"] = str(path)
    with atomic_file(path) as f:
        f.write((json.dumps(report, indent=2) + "\n").encode("utf-8"))
    return path


def _shape(shape: list) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"
