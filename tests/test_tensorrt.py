"""TensorRT engines: built from builder's exports and checked against ONNX Runtime (GPU machines only)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import builder
from builder.engines.tensorrt import tensorrt_version

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def gpu():
    if tensorrt_version() is None:
        pytest.skip("TensorRT's Python package is not installed (it comes with the builder image)")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_engine_finds_what_onnxruntime_finds(gpu, precision, tmp_path):
    import onnxruntime as ort

    from builder.engines.tensorrt import EngineRunner, build_engine
    from builder.core.images import to_network_input
    from builder.models.registry import family_of
    from builder.core.images import HELD_OUT_PHOTOS, builtin_photos
    from builder.quantize.calibration import fitted
    from builder.quantize.report import match
    from reference_weights import lively_model

    prep = family_of("yolo_nas_s").preprocessing
    images = np.concatenate(fitted(builtin_photos(HELD_OUT_PHOTOS), (320, 320), prep))
    model = lively_model("yolo_nas_s", torch.from_numpy(to_network_input(images, prep)), count=20)
    builder.export(model, tmp_path / "ref.onnx", input_image_shape=(320, 320), dynamic_batch=True)
    builder.export(model, tmp_path / "trt.onnx", input_image_shape=(320, 320), dynamic_batch=True,
                   precision=precision, engine="tensorrt", calibration_count=32)
    built = build_engine(str(tmp_path / "trt.onnx"), str(tmp_path / "m.plan"), 1, 2, 4, 4.0, progress=False)
    assert built["profile"] == {"min": 1, "opt": 2, "max": 4}
    session = ort.InferenceSession(str(tmp_path / "ref.onnx"), providers=["CPUExecutionProvider"])
    engine = EngineRunner(str(tmp_path / "m.plan"))
    matched = total = 0
    for i in range(len(images)):
        n, boxes, scores, classes = session.run(None, {"images": images[i:i + 1]})
        reference = [(float(scores[0, k]), int(classes[0, k]), boxes[0, k]) for k in range(int(n[0, 0]))]
        out = engine(images[i:i + 1])
        num, b, s, c = (out[name] for name in ("num_dets", "det_boxes", "det_scores", "det_classes"))
        found = [(float(s[0, k]), int(c[0, k]), b[0, k]) for k in range(int(num[0, 0]))]
        matched += len(match(reference, found))
        total += len(reference)
    assert total > 0 and matched / total >= (0.99 if precision == "fp16" else 0.9)
