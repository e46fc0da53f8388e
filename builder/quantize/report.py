"""The accuracy cost of a quantized export, measured against FP32 on held-out real images."""
from __future__ import annotations

import numpy as np

from builder.core.boxes import iou as box_iou

#: the recall against FP32 (same class, IoU >= 0.5) each precision is expected to keep
TARGET_RECALL = {"fp32": 0.99, "fp16": 0.99, "int8": 0.9}
MATCH_IOU = 0.5


def match(reference: list[tuple], candidate: list[tuple]) -> list[float]:
    """Greedy one-to-one matching, best reference score first: same class, IoU >= 0.5. Returns matched IoUs.

    Detections are (score, class, box[4]).
    """
    return [overlap for _, _, overlap in match_pairs(reference, candidate)]


def match_pairs(reference: list[tuple], candidate: list[tuple]) -> list[tuple[int, int, float]]:
    """`match` as (reference index, candidate index, IoU) triples."""
    if not reference or not candidate:
        return []
    ious = box_iou(np.stack([d[2] for d in reference]), np.stack([d[2] for d in candidate]))
    classes = np.array([d[1] for d in candidate])
    taken = np.zeros(len(candidate), dtype=bool)
    pairs = []
    for i in np.argsort([-d[0] for d in reference], kind="stable"):
        options = np.where((classes == reference[i][1]) & ~taken & (ious[i] >= MATCH_IOU), ious[i], -1.0)
        j = int(options.argmax())
        if options[j] >= MATCH_IOU:
            taken[j] = True
            pairs.append((int(i), j, float(ious[i, j])))
    return pairs


def raw_errors(reference: tuple[np.ndarray, np.ndarray], candidate: tuple[np.ndarray, np.ndarray]) -> dict:
    (ref_boxes, ref_scores), (boxes, scores) = reference, candidate
    box_error, score_error = np.abs(boxes - ref_boxes), np.abs(scores - ref_scores)
    return {"boxes_max_relative_error": float(box_error.max() / max(np.abs(ref_boxes).max(), 1e-12)),
            "boxes_mean_abs_error_px": float(box_error.mean()),
            "scores_max_relative_error": float(score_error.max() / max(np.abs(ref_scores).max(), 1e-12)),
            "scores_mean_abs_error": float(score_error.mean())}


def agreement(reference: list[list[tuple]], candidate: list[list[tuple]], names: list[str]) -> dict:
    per_image, ious = [], []
    for name, ref, cand in zip(names, reference, candidate):
        matched = match(ref, cand)
        ious += matched
        per_image.append({"image": name, "reference": len(ref), "quantized": len(cand), "matched": len(matched)})
    total_ref = sum(len(r) for r in reference)
    total_cand = sum(len(c) for c in candidate)
    return {"reference_detections": total_ref, "quantized_detections": total_cand, "matched": len(ious),
            "recall": len(ious) / total_ref if total_ref else 1.0,
            "precision": len(ious) / total_cand if total_cand else 1.0,
            "mean_iou": float(np.mean(ious)) if ious else None, "per_image": per_image}


def summary(report: dict) -> str:
    d = report["detections"]
    verdict = "meets" if report["meets_target"] else "BELOW"
    iou = f"{d['mean_iou']:.3f}" if d["mean_iou"] is not None else "n/a"
    return (f"{report['precision']} vs fp32 on {len(d['per_image'])} held-out images: recall {d['recall']:.3f}, "
            f"precision {d['precision']:.3f}, mean IoU {iou} ({d['matched']}/{d['reference_detections']} matched; "
            f"{verdict} the {report['target_recall']} recall target); max relative error: scores "
            f"{report['raw']['scores_max_relative_error']:.2e}, boxes {report['raw']['boxes_max_relative_error']:.2e}")
