"""The onnx flavour: ONNX NonMaxSuppression, then a per-image top-K over the kept (box, class) pairs."""
from __future__ import annotations

from builder.exporting.nms import NMSFlavour, NMSSettings

BATCH_OUTPUTS = ("num_predictions", "pred_boxes", "pred_scores", "pred_classes")


class OnnxNMS(NMSFlavour):
    name = "onnx"
    description = "ONNX NonMaxSuppression"
    runtimes = ("onnxruntime",)
    engine = "onnxruntime"

    def append(self, model, boxes: str, scores: str, batch, k: int, classes: int, nms: NMSSettings) -> list[str]:
        """ONNX NonMaxSuppression, then a per-image top-K over the kept (box, class) pairs.

        NonMaxSuppression returns its rows grouped by class; keeping its first rows would keep low class ids
        rather than the best scores. Instead the kept scores are scattered into a dense [B, C * k] table (-1
        where nothing was kept) and TopK picks each image's best, which also makes every image of a batch
        independent of the others.
        """
        import onnx
        from onnx import TensorProto

        from builder.exporting.graph import GraphEditor
        from builder.exporting.nms.flat import flat_rows

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
        return flat_rows(g, valid, picked, top_scores, g.op("Div", top_index, g.const(k, "int64")))


FLAVOUR = OnnxNMS()
