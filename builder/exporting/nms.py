"""NMS and output formats appended to the exported graph: ONNX NonMaxSuppression or TensorRT EfficientNMS.

Both take the decoded top-k candidates, boxes [B, k, 4] and scores [B, k, C], and keep per image the best
`max_predictions` (box, class) pairs after class-aware NMS, sorted by score (descending).
"""
from __future__ import annotations

from dataclasses import dataclass

import onnx
from onnx import TensorProto

from builder.exporting.graph import GraphEditor

BATCH_OUTPUTS = ("num_predictions", "pred_boxes", "pred_scores", "pred_classes")
FLAT_OUTPUT = "predictions"
TENSORRT_OUTPUTS = ("num_dets", "det_boxes", "det_scores", "det_classes")
TENSORRT_PLUGIN_DOMAIN = "trt.plugins"


@dataclass(frozen=True)
class NMSSettings:
    confidence_threshold: float
    iou_threshold: float
    max_predictions: int
    output_format: str  # "batch" or "flat"


def append_onnx_nms(model: onnx.ModelProto, boxes: str, scores: str, batch, k: int, classes: int,
                    nms: NMSSettings) -> list[str]:
    """ONNX NonMaxSuppression, then a per-image top-K over the kept (box, class) pairs.

    NonMaxSuppression returns its rows grouped by class; keeping its first rows would keep low class ids
    rather than the best scores. Instead the kept scores are scattered into a dense [B, C * k] table (-1
    where nothing was kept) and TopK picks each image's best, which also makes every image of a batch
    independent of the others.
    """
    g = GraphEditor(model, "nms")
    K = nms.max_predictions
    width = max(classes * k, K)  # table width: at least K so TopK(K) is always defined
    per_class = min(k, K)  # no class can contribute more than K to an image's top K
    scores_t = g.op("Transpose", scores, perm=[0, 2, 1])
    selected = g.op("NonMaxSuppression", boxes, scores_t, g.const([per_class], "int64"),
                    g.const([nms.iou_threshold], "float32"), g.const([nms.confidence_threshold], "float32"),
                    center_point_box=0)
    b, c, i = g.op("Split", selected, g.const([1, 1, 1], "int64"), axis=1, outputs=3)
    kept_scores = g.op("GatherND", scores, g.op("Concat", b, i, c, axis=1))  # [S]
    column = g.op("Add", g.op("Mul", c, g.const(k, "int64")), i)  # [S, 1]
    table = g.op("ConstantOfShape",
                 g.op("Concat", g.op("Slice", g.op("Shape", scores), g.const([0], "int64"), g.const([1], "int64")),
                      g.const([width], "int64"), axis=0),
                 value=onnx.helper.make_tensor("fill", TensorProto.FLOAT, [1], [-1.0]))
    table = g.op("ScatterND", table, g.op("Concat", b, column, axis=1), kept_scores)
    top_scores, top_index = g.op("TopK", table, g.const([K], "int64"), axis=1, largest=1, sorted=1, outputs=2)
    valid = g.op("GreaterOrEqual", top_scores, g.const(0.0, "float32"))  # [B, K]
    num = g.op("ReduceSum", g.op("Cast", valid, to=TensorProto.INT64), g.const([1], "int64"), keepdims=1)
    box_index = g.op("Mod", top_index, g.const(k, "int64"))
    picked = g.op("GatherElements", boxes,
                  g.op("Expand", g.op("Unsqueeze", box_index, g.const([2], "int64")),
                       g.op("Concat", g.op("Shape", box_index), g.const([4], "int64"), axis=0)), axis=1)

    if nms.output_format == "batch":
        valid_3d = g.op("Unsqueeze", valid, g.const([2], "int64"))
        minus_one_f, minus_one_i = g.const(-1.0, "float32"), g.const(-1, "int64")
        names = list(BATCH_OUTPUTS)
        g.op("Identity", num, outputs=[names[0]])
        g.op("Where", valid_3d, picked, minus_one_f, outputs=[names[1]])
        g.op("Where", valid, top_scores, minus_one_f, outputs=[names[2]])
        g.op("Where", valid, g.op("Div", top_index, g.const(k, "int64")), minus_one_i, outputs=[names[3]])
        g.set_outputs([(names[0], TensorProto.INT64, [batch, 1]), (names[1], TensorProto.FLOAT, [batch, K, 4]),
                       (names[2], TensorProto.FLOAT, [batch, K]), (names[3], TensorProto.INT64, [batch, K])])
        return names
    return _flat_rows(g, valid, picked, top_scores, g.op("Div", top_index, g.const(k, "int64")))


def append_tensorrt_nms(model: onnx.ModelProto, boxes: str, scores: str, batch, k: int, classes: int,
                        nms: NMSSettings) -> list[str]:
    """TensorRT's EfficientNMS_TRT plugin: class-aware, per image top-K sorted by score, int32 counts/classes.

    The node lives in a custom domain so the model passes onnx.checker; TensorRT's ONNX parser finds
    plugins by op type and version whatever the domain.
    """
    g = GraphEditor(model, "nms")
    K = nms.max_predictions
    if not any(o.domain == TENSORRT_PLUGIN_DOMAIN for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid(TENSORRT_PLUGIN_DOMAIN, 1))
    flat = nms.output_format == "flat"
    names = [f"nms/{n}" for n in TENSORRT_OUTPUTS] if flat else list(TENSORRT_OUTPUTS)
    g.op("EfficientNMS_TRT", boxes, scores, outputs=names, domain=TENSORRT_PLUGIN_DOMAIN,
         plugin_version="1", plugin_namespace="", background_class=-1, max_output_boxes=K,
         score_threshold=float(nms.confidence_threshold), iou_threshold=float(nms.iou_threshold),
         score_activation=0, class_agnostic=0, box_coding=0)
    if not flat:
        g.set_outputs([(names[0], TensorProto.INT32, [batch, 1]), (names[1], TensorProto.FLOAT, [batch, K, 4]),
                       (names[2], TensorProto.FLOAT, [batch, K]), (names[3], TensorProto.INT32, [batch, K])])
        return names
    num, det_boxes, det_scores, det_classes = names
    rank = g.const([list(range(K))], "int64")
    valid = g.op("Less", rank, g.op("Cast", num, to=TensorProto.INT64))  # [B, K]: the first num_dets rows
    return _flat_rows(g, valid, det_boxes, det_scores, det_classes)


def _flat_rows(g: GraphEditor, valid: str, boxes: str, scores: str, classes: str) -> list[str]:
    """[N, 7] rows (image, x1, y1, x2, y2, score, class) of the valid entries of per-image [B, K] results.

    NonZero walks the mask row-major, so the rows come image by image, in each image's (best-first) order.
    """
    where = g.op("Transpose", g.op("NonZero", valid), perm=[1, 0])  # [N, 2]: (image, rank)
    one = g.const([1], "int64")
    image = g.op("Cast", g.op("Slice", where, g.const([0], "int64"), one, one), to=TensorProto.FLOAT)
    column = lambda values: g.op("Unsqueeze", g.op("Cast", g.op("GatherND", values, where), to=TensorProto.FLOAT), one)  # noqa: E731
    g.op("Concat", image, g.op("GatherND", boxes, where), column(scores), column(classes), axis=1,
         outputs=[FLAT_OUTPUT])
    g.set_outputs([(FLAT_OUTPUT, TensorProto.FLOAT, ["num_rows", 7])])
    return [FLAT_OUTPUT]
