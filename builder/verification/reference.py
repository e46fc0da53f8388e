"""The PyTorch reference a bundle is checked against: the eager model plus a plain class-aware greedy NMS.

Written independently of the exported graph (no ONNX ops, no top-k tables): the candidates are the
`pre_nms_top_k` anchors with the best class score, every (anchor, class) pair above the confidence
threshold is a detection, greedy NMS runs per class, and each image keeps its best `max_detections`.
"""
from __future__ import annotations

import numpy as np

from builder.core.boxes import iou as box_iou


def nms_per_class(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou: float) -> np.ndarray:
    """Indices kept by greedy NMS within each class, best score first."""
    keep = []
    for cls in np.unique(classes):
        members = np.where(classes == cls)[0]
        members = members[np.argsort(-scores[members], kind="stable")]
        while members.size:
            best, rest = members[0], members[1:]
            keep.append(best)
            overlap = box_iou(boxes[best][None], boxes[rest])[0]
            members = rest[overlap <= iou]
    keep = np.array(keep, dtype=np.int64)
    return keep[np.argsort(-scores[keep], kind="stable")] if keep.size else keep


def reference_detections(model, image_nchw_uint8: np.ndarray, settings: dict) -> list[tuple]:
    """(score, class, box in network-input pixels) of one image, best first, by the eager model."""
    import torch

    from builder.core.images import to_network_input

    x = torch.from_numpy(to_network_input(image_nchw_uint8, model.family.preprocessing))
    with torch.no_grad():
        boxes, scores = model(x)
    boxes, scores = boxes[0].double().numpy(), scores[0].double().numpy()
    best = scores.max(axis=1)
    top = np.argsort(-best, kind="stable")[: settings["pre_nms_top_k"]]
    boxes, scores = boxes[top], scores[top]
    anchors, classes = np.nonzero(scores > settings["confidence_threshold"])
    pair_boxes, pair_scores = boxes[anchors], scores[anchors, classes]
    kept = nms_per_class(pair_boxes, pair_scores, classes, settings["iou_threshold"])[: settings["max_detections"]]
    return [(float(pair_scores[k]), int(classes[k]), pair_boxes[k].astype(np.float32)) for k in kept]
