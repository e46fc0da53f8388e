"""The flat output format shared by the NMS flavours: [N, 7] rows of the valid per-image results."""
from __future__ import annotations

FLAT_OUTPUT = "predictions"


def flat_rows(g, valid: str, boxes: str, scores: str, classes: str) -> list[str]:
    """[N, 7] rows (image, x1, y1, x2, y2, score, class) of the valid entries of per-image [B, K] results.

    NonZero walks the mask row-major, so the rows come image by image, in each image's (best-first) order.
    """
    from onnx import TensorProto

    where = g.op("Transpose", g.op("NonZero", valid), perm=[1, 0])  # [N, 2]: (image, rank)
    one = g.const([1], "int64")
    image = g.op("Cast", g.op("Slice", where, g.const([0], "int64"), one, one), to=TensorProto.FLOAT)
    column = lambda values: g.op("Unsqueeze", g.op("Cast", g.op("GatherND", values, where), to=TensorProto.FLOAT), one)  # noqa: E731
    g.op("Concat", image, g.op("GatherND", boxes, where), column(scores), column(classes), axis=1,
         outputs=[FLAT_OUTPUT])
    g.set_outputs([(FLAT_OUTPUT, TensorProto.FLOAT, ["num_rows", 7])])
    return [FLAT_OUTPUT]
