"""Reading an exported model's outputs back: detections of one image, from either output format."""
from __future__ import annotations

import numpy as np


def detections_of(outputs: list[np.ndarray], output_format: str, image: int = 0) -> list[tuple]:
    """(score, class, box) of one image of a batch, from either output format."""
    if output_format == "flat":
        rows = outputs[0][outputs[0][:, 0].astype(np.int64) == image]
        return [(float(r[5]), int(r[6]), np.asarray(r[1:5], dtype=np.float32)) for r in rows]
    num, boxes, scores, classes = outputs
    n = int(np.asarray(num)[image].reshape(-1)[0])
    return [(float(scores[image, i]), int(classes[image, i]), np.asarray(boxes[image, i], dtype=np.float32))
            for i in range(n)]
