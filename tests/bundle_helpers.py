"""What the bundle tests share: weights that give real detections, and the reference a client must match."""
from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import torch

from builder.core.images import fit_to_input, to_network_input
from builder.models.registry import family_of
from builder.core.images import CALIBRATION_PHOTOS, HELD_OUT_PHOTOS, PHOTOS, builtin_photos
from builder.quantize.calibration import fitted
from reference_weights import lively_model

SIZE = (320, 320)
TEST_PHOTOS = ["grace_hopper", "flower", "coffee"]


def lively_weights(path: pathlib.Path, variant: str = "yolo_nas_s") -> pathlib.Path:
    """A state_dict file whose model finds tens of objects per built-in photo at SIZE."""
    prep = family_of(variant).preprocessing
    images = np.concatenate(fitted(builtin_photos(CALIBRATION_PHOTOS + HELD_OUT_PHOTOS), SIZE, prep))
    model = lively_model(variant, torch.from_numpy(to_network_input(images, prep)), count=20)
    torch.save(model.state_dict(), path)
    return path


def photo_paths(names=TEST_PHOTOS) -> list[str]:
    return [str(PHOTOS / f"{name}.jpg") for name in names]


def direct_detections(model_onnx: pathlib.Path, paths: list[str], variant: str, class_names: list[str]) -> list[dict]:
    """What a client must print: builder's own resize, the ONNX model run directly, boxes mapped back."""
    from PIL import Image

    session = ort.InferenceSession(str(model_onnx), providers=["CPUExecutionProvider"])
    prep = family_of(variant).preprocessing
    shape = session.get_inputs()[0].shape
    names = [o.name for o in session.get_outputs()]
    results = []
    for path in paths:
        image = np.asarray(Image.open(path).convert("RGB"))
        fitted_image, placement = fit_to_input(image, tuple(shape[2:]), prep)
        batch = fitted_image.transpose(2, 0, 1)[None]
        if isinstance(shape[0], int) and shape[0] > 1:
            batch = np.concatenate([batch, np.zeros((shape[0] - 1,) + batch.shape[1:], np.uint8)])
        outputs = dict(zip(names, session.run(None, {"images": batch})))
        if "predictions" in outputs:
            rows = outputs["predictions"][outputs["predictions"][:, 0] == 0]
            boxes, scores, classes = rows[:, 1:5], rows[:, 5], rows[:, 6]
        else:
            n = int(outputs["num_predictions"][0, 0])
            boxes, scores, classes = (outputs[k][0, :n] for k in ("pred_boxes", "pred_scores", "pred_classes"))
        mapped = placement.to_original(boxes)
        mapped[:, [0, 2]] = np.clip(mapped[:, [0, 2]], 0, image.shape[1])
        mapped[:, [1, 3]] = np.clip(mapped[:, [1, 3]], 0, image.shape[0])
        results.append([{"label": class_names[int(c)], "class_id": int(c), "score": float(s), "box": b.tolist()}
                        for b, s, c in zip(mapped, scores, classes)])
    return results


def assert_same_detections(printed: list[dict], expected: list[list[dict]]) -> None:
    assert len(printed) == len(expected)
    for result, want in zip(printed, expected):
        got = result["detections"]
        assert len(got) == len(want) > 0
        for g, w in zip(got, want):
            assert (g["label"], g["class_id"]) == (w["label"], w["class_id"])
            assert abs(g["score"] - w["score"]) < 1e-5
            np.testing.assert_allclose(g["box"], w["box"], atol=0.02)


def run_json(command: list[str], **kwargs) -> list[dict]:
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, **kwargs)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


PYTHON = sys.executable
