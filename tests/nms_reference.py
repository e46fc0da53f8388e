"""An independent numpy reference of the postprocessing: top-k candidates, greedy class-aware NMS, top-K."""
from __future__ import annotations

import numpy as np


def iou_one_to_many(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda b: np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None)  # noqa: E731
    union = area(box) + area(boxes) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def greedy_nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> list[int]:
    """Indices kept by greedy NMS: best score first, drop every later box overlapping a kept one by > threshold."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    kept: list[int] = []
    for i in order:
        if not kept or (iou_one_to_many(boxes[i], boxes[kept]) <= iou_threshold).all():
            kept.append(i)
    return kept


def detect(boxes: np.ndarray, scores: np.ndarray, conf: float, iou: float, top_k: int, max_det: int) -> list[tuple]:
    """One image: boxes [N, 4], scores [N, C] -> [(score, class, box)] best first, at most `max_det`."""
    candidates = np.argsort(-scores.max(axis=1), kind="stable")[:top_k]
    boxes, scores = boxes[candidates].astype(np.float64), scores[candidates].astype(np.float64)
    found = []
    for c in range(scores.shape[1]):
        passing = np.nonzero(scores[:, c] > conf)[0]
        for j in greedy_nms(boxes[passing], scores[passing, c], iou):
            i = passing[j]
            found.append((scores[i, c], c, boxes[i]))
    found.sort(key=lambda d: -d[0])
    return found[:max_det]
