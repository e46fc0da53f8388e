"""Export: model -> one ONNX file with preprocessing, decoding, NMS and the output format in the graph."""
from __future__ import annotations

import copy
import json
import pathlib
import time
from typing import Any

from builder.errors import UserError
from builder.spec import ExportSpec


def export(model_or_name: Any, output: str | pathlib.Path, **options: Any):
    """Export a model (a `Detector` or a variant name) to `output`; returns an `ExportResult`.

    Options are the fields of `builder.spec.ExportSpec`; `preprocessing` and `postprocessing` also accept
    an nn.Module, as in SuperGradients.
    """
    import torch

    from builder.models.base import Detector
    from builder.models.registry import build

    from builder.exporting.onnx_file import check_destination

    check_destination(pathlib.Path(output))
    custom_pre = options.pop("preprocessing", True)
    custom_post = options.pop("postprocessing", True)
    for name, value in (("preprocessing", custom_pre), ("postprocessing", custom_post)):
        if not isinstance(value, (bool, torch.nn.Module)):
            raise UserError(f"invalid {name}: expected True, False or an nn.Module, got {type(value).__name__}")
    if isinstance(model_or_name, Detector):
        if options.get("weights") or options.get("num_classes"):
            raise UserError("weights and num_classes apply when exporting by name, not to a model object")
        spec = ExportSpec.create(model=model_or_name.variant, preprocessing=custom_pre is not False,
                                 postprocessing=custom_post is not False, **options)
        model = copy.deepcopy(model_or_name)  # fusing and folding must not touch the caller's model
    elif isinstance(model_or_name, str):
        spec = ExportSpec.create(model=model_or_name, preprocessing=custom_pre is not False,
                                 postprocessing=custom_post is not False, **options)
        model = build(spec.model, num_classes=spec.num_classes, checkpoint_path=spec.weights)
    else:
        raise UserError(f"expected a model or a model name, got {type(model_or_name).__name__}")
    return export_model(model, pathlib.Path(output), spec,
                        custom_pre if isinstance(custom_pre, torch.nn.Module) else None,
                        custom_post if isinstance(custom_post, torch.nn.Module) else None)


def export_model(model, output: pathlib.Path, spec: ExportSpec, custom_pre=None, custom_post=None):
    import onnx
    import torch

    from builder import __version__
    from builder.exporting import nms as nms_graph
    from builder.exporting.onnx_file import (check, check_destination, save_atomically, simplify, tensor_signature,
                                             trace_to_onnx)
    from builder.exporting.pipeline import ExportPipeline, fold_preprocessing
    from builder.exporting.result import ExportResult

    check_destination(output)
    started = time.monotonic()
    family = model.family
    prep = family.preprocessing
    height, width = spec.input_image_shape or family.input_size
    anchors = sum((height // s) * (width // s) for s in model.strides)
    top_k = min(spec.num_pre_nms_predictions, anchors)
    conf = spec.confidence_threshold if spec.confidence_threshold is not None else family.default_confidence
    iou = spec.nms_threshold if spec.nms_threshold is not None else family.default_iou

    model = model.eval().fuse()
    steps: list[str] = []
    if custom_pre is not None:
        preprocess, input_dtype = custom_pre, torch.uint8
        steps = [f"custom {type(custom_pre).__name__}"]
    elif spec.preprocessing:
        preprocess, input_dtype = fold_preprocessing(model, prep), torch.uint8
        steps = prep.describe()
        steps[-1] += " (folded into the first convolution's weights)"
    else:
        preprocess, input_dtype = torch.nn.Identity(), torch.float32
    if custom_post is not None:
        pipeline, names = ExportPipeline(model, preprocess, "raw", postprocess=custom_post), None
    elif spec.postprocessing:
        pipeline, names = ExportPipeline(model, preprocess, "topk", top_k), ["pre_nms_boxes", "pre_nms_scores"]
    else:
        pipeline, names = ExportPipeline(model, preprocess, "raw"), ["boxes", "scores"]

    batch = "batch" if spec.dynamic_batch else spec.batch_size
    example_batch = 2 if spec.dynamic_batch else spec.batch_size  # 1 would let the tracer specialise it
    if input_dtype == torch.uint8:
        example = torch.randint(0, 256, (example_batch, 3, height, width), dtype=torch.uint8)
    else:
        example = torch.rand(example_batch, 3, height, width)
    with torch.no_grad():
        graph = trace_to_onnx(pipeline.eval(), example, names, spec.dynamic_batch, spec.onnx_opset)
    if spec.onnx_simplify:
        graph = simplify(graph)

    if spec.postprocessing and custom_post is None:
        settings = nms_graph.NMSSettings(conf, iou, spec.max_predictions_per_image, spec.output_predictions_format)
        append = nms_graph.append_tensorrt_nms if spec.engine == "tensorrt" else nms_graph.append_onnx_nms
        append(graph, "pre_nms_boxes", "pre_nms_scores", batch, top_k, model.num_classes, settings)
    _name_input_batch(graph, batch)
    graph.producer_name, graph.producer_version = "builder", __version__
    metadata = {"builder_version": __version__, "model": spec.model, "num_classes": str(model.num_classes),
                "spec": spec.model_dump_json(), "preprocessing": json.dumps(prep.__dict__),
                "class_names": json.dumps(model.class_names)}
    onnx.helper.set_model_props(graph, metadata)
    graph = check(graph)
    save_atomically(graph, output)

    inputs, outputs = tensor_signature(graph.graph.input), tensor_signature(graph.graph.output)
    with_nms = spec.postprocessing and custom_post is None
    resize = (f"letterbox into {height}x{width} (scale the longest side to fit {height - prep.letterbox_margin}x"
              f"{width - prep.letterbox_margin}, centre, pad with {prep.pad_value})" if prep.resize == "letterbox"
              else f"stretch to {height}x{width}")
    return ExportResult(
        output=output.resolve(), model=spec.model, engine=spec.engine,
        output_predictions_format=spec.output_predictions_format if with_nms else None,
        input_name="images", input_shape=inputs[0]["shape"], input_dtype=inputs[0]["dtype"], inputs=inputs,
        outputs=outputs, preprocessing_steps=steps, resize=resize,
        confidence_threshold=conf if with_nms else None, nms_threshold=iou if with_nms else None,
        num_pre_nms_predictions=top_k if with_nms else None,
        max_predictions_per_image=spec.max_predictions_per_image if with_nms else None,
        batch_size=None if spec.dynamic_batch else spec.batch_size,
        export_seconds=time.monotonic() - started, class_names=model.class_names, spec=spec.model_dump())


def _name_input_batch(graph, batch) -> None:
    """The exporter names the symbolic batch dimension itself; give it the name the outputs use."""
    if isinstance(batch, str):
        graph.graph.input[0].type.tensor_type.shape.dim[0].dim_param = batch
