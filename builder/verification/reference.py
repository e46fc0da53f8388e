"""The PyTorch reference a bundle is checked against: the eager model plus a plain class-aware greedy NMS.

Written independently of the exported graph (no ONNX ops, no top-k tables): the candidates are the
`pre_nms_top_k` anchors with the best class score, every (anchor, class) pair above the confidence
threshold is a detection, greedy NMS runs per class, and each image keeps its best `max_detections`.

Ties: where scores are equal within TIE_TOLERANCE (uniform image regions such as letterbox padding give
neighbouring anchors exactly equal scores), which of two overlapping boxes NMS keeps, or which anchor
takes the last top-k place, is arbitrary, and ONNX NonMaxSuppression breaks such ties differently from
a stable sort. Given the bundle's detections (`prefer`), the reference breaks every tie the way the bundle
did, so a bundle passes when it is *a* valid NMS of the reference candidates, and any choice that is not
a tie still has to agree.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from builder.core.boxes import iou as box_iou

#: scores closer than this are tied: float32 kernels on different CPUs (and ONNX Runtime against torch)
#: move a score by ~1e-6, so no ranking finer than this is a property of the model
TIE_TOLERANCE = 1e-5
#: a candidate is the one the bundle kept when it has the same class and at least this IoU with it
SAME_BOX_IOU = 0.9


def tie_aware_order(scores: np.ndarray, preferred: Optional[np.ndarray] = None, tie: float = TIE_TOLERANCE) -> np.ndarray:
    """Indices by descending score; within each run of tied scores, the preferred ones first (stable)."""
    order = np.argsort(-scores, kind="stable")
    if preferred is None or order.size < 2 or not preferred.any():
        return order
    breaks = np.flatnonzero(scores[order[:-1]] - scores[order[1:]] > tie) + 1
    runs = np.split(order, breaks)
    return np.concatenate([run[np.argsort(~preferred[run], kind="stable")] for run in runs])


def nms_per_class(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou: float,
                  preferred: Optional[np.ndarray] = None) -> np.ndarray:
    """Indices kept by greedy NMS within each class, best score first (ties broken toward `preferred`)."""
    rank = np.empty(len(scores), dtype=np.int64)
    rank[tie_aware_order(scores, preferred)] = np.arange(len(scores))
    keep = []
    for cls in np.unique(classes):
        members = np.where(classes == cls)[0]
        members = members[np.argsort(rank[members], kind="stable")]
        while members.size:
            best, rest = members[0], members[1:]
            keep.append(best)
            overlap = box_iou(boxes[best][None], boxes[rest])[0]
            members = rest[overlap <= iou]
    keep = np.array(keep, dtype=np.int64)
    return keep[np.argsort(rank[keep], kind="stable")] if keep.size else keep


def _matches(boxes: np.ndarray, classes: Optional[np.ndarray], prefer: list[tuple]) -> np.ndarray:
    """The candidates the bundle kept: for each of its detections, the same-class candidate of highest IoU
    (at least SAME_BOX_IOU). Only the best one is marked: a tied neighbour may overlap it almost as much.
    `classes` None matches boxes whatever their class (anchors, before classes are split)."""
    found = np.zeros(len(boxes), dtype=bool)
    if not prefer or not len(boxes):
        return found
    wanted = np.stack([np.asarray(d[2], dtype=np.float64) for d in prefer])
    overlap = box_iou(boxes, wanted)
    if classes is not None:
        overlap = np.where(classes[:, None] == np.array([d[1] for d in prefer])[None, :], overlap, -1.0)
    best = overlap.argmax(axis=0)
    found[best[overlap[best, np.arange(len(prefer))] >= SAME_BOX_IOU]] = True
    return found


def reference_detections(model, image_nchw_uint8: np.ndarray, settings: dict,
                         prefer: Optional[list[tuple]] = None) -> list[tuple]:
    """(score, class, box in network-input pixels) of one image, best first, by the eager model.

    `prefer`: the bundle's detections (score, class, box in network-input pixels), to break ties with.
    """
    import torch

    from builder.core.images import to_network_input

    x = torch.from_numpy(to_network_input(image_nchw_uint8, model.family.preprocessing))
    with torch.no_grad():
        boxes, scores = model(x)
    boxes, scores = boxes[0].double().numpy(), scores[0].double().numpy()
    best = scores.max(axis=1)
    # an anchor the bundle reports wins a tie for the last top-k places
    top = tie_aware_order(best, _matches(boxes, None, prefer or []))[: settings["pre_nms_top_k"]]
    boxes, scores = boxes[top], scores[top]
    anchors, classes = np.nonzero(scores > settings["confidence_threshold"])
    pair_boxes, pair_scores = boxes[anchors], scores[anchors, classes]
    preferred = _matches(pair_boxes, classes, prefer or [])
    kept = nms_per_class(pair_boxes, pair_scores, classes, settings["iou_threshold"], preferred)
    kept = kept[: settings["max_detections"]]
    return [(float(pair_scores[k]), int(classes[k]), pair_boxes[k].astype(np.float32)) for k in kept]
