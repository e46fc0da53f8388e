"""The tensorrt flavour: TensorRT's EfficientNMS_TRT plugin (class-aware, per image top-K, int32 counts/classes)."""
from __future__ import annotations

from builder.exporting.nms import NMSFlavour, NMSSettings

TENSORRT_OUTPUTS = ("num_dets", "det_boxes", "det_scores", "det_classes")
TENSORRT_PLUGIN_DOMAIN = "trt.plugins"


class EfficientNMS(NMSFlavour):
    name = "tensorrt"
    description = "TensorRT EfficientNMS_TRT"
    runtimes = ("tensorrt",)
    engine = "tensorrt"

    def append(self, model, boxes: str, scores: str, batch, k: int, classes: int, nms: NMSSettings) -> list[str]:
        """TensorRT's EfficientNMS_TRT plugin: class-aware, per image top-K sorted by score, int32 counts/classes.

        The node lives in a custom domain so the model passes onnx.checker; TensorRT's ONNX parser finds
        plugins by op type and version whatever the domain.
        """
        import onnx
        from onnx import TensorProto

        from builder.exporting.graph import GraphEditor
        from builder.exporting.nms.flat import flat_rows

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
        return flat_rows(g, valid, det_boxes, det_scores, det_classes)


FLAVOUR = EfficientNMS()
