"""The export itself: model -> one ONNX file with preprocessing, decoding, NMS (and FP16/INT8) in the graph."""
from __future__ import annotations

import copy
import pathlib
import time
from typing import Any

from builder.core.errors import UserError
from builder.core.extras import require
from builder.exporting.spec import ExportSpec, check_inputs

#: SuperGradients' names for the precision option
QUANTIZATION_MODES = {None: "fp32", "fp16": "fp16", "int8": "int8"}


def export(model_or_name: Any, output: str | pathlib.Path, **options: Any):
    """Export a model (a `Detector` or a variant name) to `output`; returns an `ExportResult`.

    Options are the fields of `builder.spec.ExportSpec`; `preprocessing` and `postprocessing` also accept
    an nn.Module, `quantization_mode` ("fp16"/"int8") is SuperGradients' name for `precision`, and
    `calibration_loader` takes a DataLoader of training-normalised images for INT8, as in SuperGradients.
    """
    require("export")
    import torch

    from builder.core.files import check_model_destination
    from builder.models.base import Detector

    check_model_destination(pathlib.Path(output))
    custom_pre = options.pop("preprocessing", True)
    custom_post = options.pop("postprocessing", True)
    loader = options.pop("calibration_loader", None)
    if "quantization_mode" in options:
        mode = options.pop("quantization_mode")
        if mode not in QUANTIZATION_MODES:
            raise UserError(f"invalid quantization_mode {mode!r}: expected 'fp16', 'int8' or None")
        options["precision"] = QUANTIZATION_MODES[mode]
    for name, value in (("preprocessing", custom_pre), ("postprocessing", custom_post)):
        if not isinstance(value, (bool, torch.nn.Module)):
            raise UserError(f"invalid {name}: expected True, False or an nn.Module, got {type(value).__name__}")
    flags = {"preprocessing": custom_pre is not False, "postprocessing": custom_post is not False}
    if isinstance(model_or_name, Detector):
        if options.get("weights") or options.get("num_classes"):
            raise UserError("weights and num_classes apply when exporting by name, not to a model object")
        spec = ExportSpec.create(model=model_or_name.variant, **flags, **options)
        model = copy.deepcopy(model_or_name)  # fusing and folding must not touch the caller's model
    elif isinstance(model_or_name, str):
        spec = ExportSpec.create(model=model_or_name, **flags, **options)
        model = None
    else:
        raise UserError(f"expected a model or a model name, got {type(model_or_name).__name__}")
    check_inputs(spec)  # before the model is built, traced and calibrated
    if loader is not None and spec.precision != "int8":
        raise UserError("calibration_loader only applies to INT8 (quantization_mode='int8')")
    if spec.precision != "fp32" and isinstance(custom_post, torch.nn.Module):
        raise UserError("quantization needs builder's own postprocessing (or none): a custom postprocessing "
                        "module cannot be checked against FP32")
    if model is None:
        model = load_model(spec)
    return export_model(model, pathlib.Path(output), spec,
                        custom_pre if isinstance(custom_pre, torch.nn.Module) else None,
                        custom_post if isinstance(custom_post, torch.nn.Module) else None, loader)


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

    batch = result.input_shape[0] if isinstance(result.input_shape[0], int) else 1
    prep = family_of(result.model).preprocessing
    images = np.repeat(sample_input(prep, tuple(result.input_shape[2:])), batch, axis=0)
    inference_session(model_path).run(None, {result.input_name: images})


def export_model(model, output: pathlib.Path, spec: ExportSpec, custom_pre=None, custom_post=None, loader=None,
                 report_file: bool = True):
    """`export()` on a built model; `report_file=False` keeps a quantized export's report off the disk."""
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
    save_atomically(graph, output)
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
