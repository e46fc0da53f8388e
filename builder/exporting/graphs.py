"""The two halves of an export: the traced torch pipeline, and the ONNX postprocessing appended to it."""
from __future__ import annotations

import json

import onnx

from builder.exporting.spec import ExportSpec

RAW_OUTPUTS = ["boxes", "scores"]
TOP_K_OUTPUTS = ["pre_nms_boxes", "pre_nms_scores"]


def trace_pipeline(model, spec: ExportSpec, size: tuple[int, int], top_k: int, custom_pre=None, custom_post=None):
    """The torch side as ONNX (simplified), and the preprocessing steps it holds.

    Outputs: the top-k candidates when builder's NMS follows; raw boxes/scores without postprocessing;
    both (top-k first) when quantization has to compare raw outputs with FP32.
    """
    import torch

    from builder.exporting.onnx_file import simplify, trace_to_onnx
    from builder.exporting.pipeline import ExportPipeline, fold_preprocessing

    prep = model.family.preprocessing
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
    elif spec.precision != "fp32":
        pipeline, names = ExportPipeline(model, preprocess, "analysis", top_k), TOP_K_OUTPUTS + RAW_OUTPUTS
    elif spec.postprocessing:
        pipeline, names = ExportPipeline(model, preprocess, "topk", top_k), TOP_K_OUTPUTS
    else:
        pipeline, names = ExportPipeline(model, preprocess, "raw"), RAW_OUTPUTS

    height, width = size
    example_batch = 2 if spec.dynamic_batch else spec.batch_size  # 1 would let the tracer specialise it
    if input_dtype == torch.uint8:
        example = torch.randint(0, 256, (example_batch, 3, height, width), dtype=torch.uint8)
    else:
        example = torch.rand(example_batch, 3, height, width)
    graph = trace_to_onnx(pipeline.eval(), example, names, spec.dynamic_batch, spec.onnx_opset)
    if spec.onnx_simplify:
        graph = simplify(graph)
    return graph, steps


def keep_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy with only the named outputs, and only the nodes and initializers they need."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    kept_outputs = [o for o in graph.output if o.name in names]
    del graph.output[:]
    graph.output.extend(kept_outputs)
    needed, nodes = set(names), []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output):
            nodes.append(node)
            needed.update(node.input)
    del graph.node[:]
    graph.node.extend(reversed(nodes))
    initializers = [i for i in graph.initializer if i.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    return out


def with_postprocessing(graph: onnx.ModelProto, spec: ExportSpec, settings: dict) -> onnx.ModelProto:
    """Builder's NMS and output format appended to a traced graph (a copy when it has raw outputs too)."""
    from builder.exporting.nms import NMSSettings

    names = [o.name for o in graph.graph.output]
    if not spec.postprocessing or names[:2] != TOP_K_OUTPUTS:
        return keep_outputs(graph, RAW_OUTPUTS) if TOP_K_OUTPUTS[0] in names else graph
    graph = keep_outputs(graph, TOP_K_OUTPUTS) if len(names) > 2 else graph
    batch = "batch" if spec.dynamic_batch else spec.batch_size
    nms = NMSSettings(settings["conf"], settings["iou"], spec.max_predictions_per_image, spec.output_predictions_format)
    spec.flavour.append(graph, *TOP_K_OUTPUTS, batch, settings["top_k"], settings["num_classes"], nms)
    if isinstance(batch, str):  # the exporter names the symbolic batch itself; use the outputs' name
        graph.graph.input[0].type.tensor_type.shape.dim[0].dim_param = batch
    return graph


def finalize(graph: onnx.ModelProto, spec: ExportSpec, model, settings: dict) -> onnx.ModelProto:
    """The deployable model: postprocessing, metadata, and onnx.checker's full check."""
    from builder.core.version import __version__
    from builder.exporting.onnx_file import check

    graph = with_postprocessing(graph, spec, settings)
    graph.producer_name, graph.producer_version = "builder", __version__
    metadata = {"builder_version": __version__, "model": spec.model, "num_classes": str(model.num_classes),
                "precision": spec.precision, "spec": spec.model_dump_json(),
                "preprocessing": json.dumps(model.family.preprocessing.__dict__),
                "class_names": json.dumps(model.class_names)}
    onnx.helper.set_model_props(graph, metadata)
    written = next(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx"))
    if written != spec.onnx_opset:  # the exporter must not silently write another opset than the one asked for
        raise RuntimeError(f"the exporter wrote opset {written}, not the requested {spec.onnx_opset}")
    return check(graph)
