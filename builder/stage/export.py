"""The export itself: model -> one ONNX file with preprocessing, decoding, NMS (and FP16/INT8) in the graph."""
from __future__ import annotations

import copy
import pathlib
import sys
import time
from dataclasses import dataclass
from typing import Any

from builder.core.errors import UserError
from builder.core.extras import require
from builder.exporting.spec import ExportSpec, check_inputs


@dataclass(frozen=True)
class PreparedExport:
    """An export whose options are all checked: what runs it needs nothing else."""

    spec: ExportSpec
    model: Any = None  # a copy of the caller's Detector; None: built from the spec by name
    custom_pre: Any = None  # the caller's nn.Modules in place of builder's pre- and postprocessing
    custom_post: Any = None
    loader: Any = None  # the caller's calibration DataLoader

    @property
    def in_process_only(self) -> bool:
        """Whether it holds Python objects that cannot travel to the export stage as a spec (a model object,
        modules, a loader): then it runs here, otherwise in the stage, as every runner runs it."""
        return any(v is not None for v in (self.model, self.custom_pre, self.custom_post, self.loader))


def prepare_export(model_or_name: Any, output: str | pathlib.Path, options: dict[str, Any]) -> PreparedExport:
    """Every option of an export checked (and SuperGradients' translated, with its warnings), before any work.

    Options are the fields of `builder.exporting.spec.ExportSpec`; `preprocessing` and `postprocessing` also
    accept an nn.Module, `quantization_mode` ("fp16"/"int8") is SuperGradients' name for `precision`, and
    `calibration_loader` takes a DataLoader of training-normalised images for INT8, as in SuperGradients.
    SuperGradients' other keywords and enum members are taken too (`builder.stage.supergradients`). An export
    by name needs no torch here (the docker runner's host has none).
    """
    from builder.core.files import check_model_destination
    from builder.core.log import warn
    from builder.stage.supergradients import supergradients_options

    check_model_destination(pathlib.Path(output))
    by_name = isinstance(model_or_name, str)
    if not by_name:
        require("export")
        from builder.models.base import Detector

        if not isinstance(model_or_name, Detector):
            raise UserError(f"expected a model or a model name, got {type(model_or_name).__name__}")
    # SG code exports model objects; by name (as the CLI does) SG's contradictory combinations stay refused
    options, notes = supergradients_options(options, combinations=not by_name)
    custom_pre = options.pop("preprocessing", True)
    custom_post = options.pop("postprocessing", True)
    loader = options.pop("calibration_loader", None)
    for name, value in (("preprocessing", custom_pre), ("postprocessing", custom_post)):
        if not isinstance(value, bool) and not _is_module(value):
            raise UserError(f"invalid {name}: expected True, False or an nn.Module, got {type(value).__name__}")
    flags = {"preprocessing": custom_pre is not False, "postprocessing": custom_post is not False}
    if by_name:
        spec = ExportSpec.create(model=model_or_name, **flags, **options)
        model = None
    else:
        if options.get("weights") or options.get("num_classes"):
            raise UserError("weights and num_classes apply when exporting by name, not to a model object")
        spec = ExportSpec.create(model=model_or_name.variant, **flags, **options)
        model = copy.deepcopy(model_or_name)  # fusing and folding must not touch the caller's model
    check_inputs(spec)  # before the model is built, traced and calibrated
    if spec.precision != "fp32" and _is_module(custom_post):
        raise UserError("quantization needs builder's own postprocessing (or none): a custom postprocessing "
                        "module cannot be checked against FP32")
    for note in notes:  # only once every option is known to be valid: no warnings in front of an error
        warn(note)
    return PreparedExport(spec, model, custom_pre if _is_module(custom_pre) else None,
                          custom_post if _is_module(custom_post) else None, loader)


def _is_module(value: Any) -> bool:
    """An nn.Module (torch is loaded wherever one exists: a caller without torch has none)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.nn.Module)


def export_prepared(prepared: PreparedExport, output: str | pathlib.Path, replace: bool = True):
    """Run a prepared export in this process; `replace=False` never replaces a file that is at `output` by the
    time it is written."""
    require("export")
    model = prepared.model if prepared.model is not None else load_model(prepared.spec)
    return export_model(model, pathlib.Path(output), prepared.spec, prepared.custom_pre, prepared.custom_post,
                        prepared.loader, replace=replace)


def export(model_or_name: Any, output: str | pathlib.Path, **options: Any):
    """Export a model (a `Detector` or a variant name) to `output` in this process; returns an `ExportResult`.
    (`builder.export` runs an export by name in the export stage, as every runner does.)"""
    return export_prepared(prepare_export(model_or_name, output, options), output)


def load_model(spec: ExportSpec):
    """The spec's variant with its weights (random, seeded, when it names none)."""
    from builder.models.registry import build

    return build(spec.model, num_classes=spec.num_classes, checkpoint_path=spec.weights)


def smoke_run(model_path: pathlib.Path, result) -> None:
    """The model loads in ONNX Runtime and runs on a real photo: a bundle that cannot run is not written."""
    import numpy as np

    from builder.core.images import sample_input
    from builder.exporting.sessions import inference_session
    from builder.models.registry import family_of

    from builder.core.images import to_network_input

    batch = result.input_shape[0] if isinstance(result.input_shape[0], int) else 1
    prep = family_of(result.model).preprocessing
    images = np.repeat(sample_input(prep, tuple(result.input_shape[2:])), batch, axis=0)
    if result.input_dtype != "uint8":  # without preprocessing in the graph it takes the network's own input
        images = to_network_input(images, prep).astype(result.input_dtype)
    inference_session(model_path).run(None, {result.input_name: images})


def export_model(model, output: pathlib.Path, spec: ExportSpec, custom_pre=None, custom_post=None, loader=None,
                 report_file: bool = True, replace: bool = True):
    """`export()` on a built model; `report_file=False` keeps a quantized export's report off the disk;
    `replace=False` refuses, when the file is moved into place, a file that appeared at `output` meanwhile."""
    import torch

    from builder.exporting.graphs import finalize, trace_pipeline
    from builder.core.files import check_model_destination
    from builder.exporting.onnx_file import save_atomically, tensor_signature
    from builder.stage.result import ExportResult

    check_model_destination(output)
    started = time.monotonic()
    family = model.family
    prep = family.preprocessing
    height, width = spec.input_image_shape or family.input_size
    anchors = sum((height // s) * (width // s) for s in model.strides)
    top_k = min(spec.num_pre_nms_predictions, anchors)
    conf = spec.confidence_threshold if spec.confidence_threshold is not None else family.default_confidence
    iou = spec.nms_threshold if spec.nms_threshold is not None else family.default_iou

    model = model.eval().fuse()
    with torch.no_grad():
        graph, steps = trace_pipeline(model, spec, (height, width), top_k, custom_pre, custom_post)
    settings = dict(top_k=top_k, conf=conf, iou=iou, num_classes=model.num_classes)
    report = None
    if spec.precision != "fp32":
        from builder.quantize.apply import quantize_graph

        graph, report = quantize_graph(graph, spec, prep, (height, width), settings, loader)
    graph = finalize(graph, spec, model, settings)
    save_atomically(graph, output, replace)
    if report is not None and report_file:
        from builder.stage.result import save_report

        save_report(report, output)

    inputs, outputs = tensor_signature(graph.graph.input), tensor_signature(graph.graph.output)
    with_nms = spec.postprocessing and custom_post is None
    resize = (f"letterbox into {height}x{width} (scale the longest side to fit {height - prep.letterbox_margin}x"
              f"{width - prep.letterbox_margin}, centre, pad with {prep.pad_value})" if prep.resize == "letterbox"
              else f"stretch to {height}x{width}")
    return ExportResult(
        output=output.resolve(), model=spec.model, engine=spec.engine, nms=spec.nms, runtime=spec.runtime,
        output_predictions_format=spec.output_predictions_format if with_nms else None,
        input_name="images", input_shape=inputs[0]["shape"], input_dtype=inputs[0]["dtype"], inputs=inputs,
        outputs=outputs, preprocessing_steps=steps, resize=resize,
        confidence_threshold=conf if with_nms else None, nms_threshold=iou if with_nms else None,
        num_pre_nms_predictions=top_k if with_nms else None,
        max_predictions_per_image=spec.max_predictions_per_image if with_nms else None,
        batch_size=None if spec.dynamic_batch else spec.batch_size,
        export_seconds=time.monotonic() - started, class_names=model.class_names, num_classes=model.num_classes,
        spec=spec.model_dump(),
        precision=spec.precision, accuracy_report=report)
