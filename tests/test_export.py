"""Export: the ONNX graph against eager PyTorch and an independent NMS reference, formats, batches, options."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import builder
from builder.core.images import fit_to_input, to_network_input
from builder.models.registry import family_of
from nms_reference import detect
from reference_weights import lively_model

SIZE = (320, 320)
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
#: How far an exported score may sit from eager PyTorch's. Scores are sigmoids in [0, 1]. ONNX Runtime and
#: torch sum each convolution's up to 9 * C_in products in different orders, and so do one CPU's kernels
#: and another's (AVX2 vs AVX-512 block sizes): float32 rounding of ~1e-7 relative per sum, compounded
#: over ~60 layers, moves logits by up to ~1e-5 * |logit|. Measured worst case 1.1e-5 on an AVX2-only
#: CPU; 1e-4 covers any x86-64 kernel and is still 100x below any score step that changes a detection
#: (thresholds and score ranks are compared at 1e-2 and coarser).
SCORE_ATOL = 1e-4


@pytest.fixture(scope="module")
def cases(photos):
    """Per family: a model whose scores spread on real photos, and those photos as uint8 RGB NCHW."""
    out = {}
    for variant in ("yolo_nas_s", "ppyoloe_s"):
        prep = family_of(variant).preprocessing
        images = np.stack([fit_to_input(photos[n], SIZE, prep)[0].transpose(2, 0, 1) for n in PHOTOS])
        model = lively_model(variant, torch.from_numpy(to_network_input(images, prep)), count=40)
        out[variant] = (model, images)
    return out


@pytest.fixture(scope="module")
def exported(cases, tmp_path_factory):
    """Exports shared by the tests that only read them: (variant, options...) -> ExportResult."""
    made = {}

    def get(variant: str, **options):
        key = (variant, tuple(sorted(options.items())))
        if key not in made:
            path = tmp_path_factory.mktemp("exports") / f"{variant}.onnx"
            made[key] = builder.export(cases[variant][0], path, input_image_shape=SIZE, **options)
        return made[key]

    return get


_EAGER: dict = {}


def _session(path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _eager(model, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eager PyTorch on the same images (cached: the forward pass is the slow part of these tests)."""
    key = (id(model), images.tobytes())
    if key not in _EAGER:
        x = torch.from_numpy(to_network_input(images, model.family.preprocessing))
        with torch.no_grad():
            boxes, scores = model(x)
        _EAGER[key] = boxes.numpy(), scores.numpy()
    return _EAGER[key]


def _reference(model, images, conf=None, iou=None, top_k=1000, max_det=1000) -> list[list[tuple]]:
    family = model.family
    conf = family.default_confidence if conf is None else conf
    iou = family.default_iou if iou is None else iou
    boxes, scores = _eager(model, images)
    return [detect(boxes[b], scores[b], conf, iou, top_k, max_det) for b in range(len(images))]


def _batch_to_detections(num, boxes, scores, classes) -> list[list[tuple]]:
    return [[(scores[b, i], int(classes[b, i]), boxes[b, i]) for i in range(int(num[b, 0]))] for b in range(len(num))]


def _flat_to_detections(rows, batch) -> list[list[tuple]]:
    out = [[] for _ in range(batch)]
    for image, x1, y1, x2, y2, score, cls in rows:
        out[int(image)].append((score, int(cls), np.array([x1, y1, x2, y2])))
    return out


def _assert_same_detections(actual, expected):
    assert [len(a) for a in actual] == [len(e) for e in expected]
    for got, want in zip(actual, expected):
        assert [c for _, c, _ in got] == [c for _, c, _ in want]
        np.testing.assert_allclose([s for s, _, _ in got], [s for s, _, _ in want], atol=SCORE_ATOL)
        if got:
            np.testing.assert_allclose(np.stack([b for _, _, b in got]), np.stack([b for _, _, b in want]), atol=2e-3)


def _run(path, images):
    return _session(path).run(None, {"images": images})


@pytest.mark.parametrize("variant", ["yolo_nas_s", "ppyoloe_s"])
def test_raw_onnx_outputs_equal_eager_pytorch_on_real_photos(variant, cases, tmp_path):
    model, images = cases[variant]
    result = builder.export(model, tmp_path / "raw.onnx", input_image_shape=SIZE, postprocessing=False,
                            dynamic_batch=True)
    boxes, scores = _run(result.output, images)
    ref_boxes, ref_scores = _eager(model, images)
    assert result.output_names == ["boxes", "scores"] and boxes.shape == (4, 2100, 4) and scores.shape == (4, 2100, 80)
    assert np.abs(scores - ref_scores).max() / np.abs(ref_scores).max() <= 1e-4
    assert np.abs(boxes - ref_boxes).max() / np.abs(ref_boxes).max() <= 1e-4


def test_without_preprocessing_the_input_is_the_normalised_float_tensor(cases, tmp_path):
    model, images = cases["ppyoloe_s"]
    result = builder.export(model, tmp_path / "float.onnx", input_image_shape=SIZE, batch_size=4,
                            preprocessing=False, postprocessing=False)
    assert result.input_dtype == "float32" and result.input_shape == [4, 3, 320, 320]
    x = to_network_input(images, model.family.preprocessing)
    _, scores = _run(result.output, x)
    np.testing.assert_allclose(scores, _eager(model, images)[1], atol=SCORE_ATOL)


@pytest.mark.parametrize("variant", ["yolo_nas_s", "ppyoloe_s"])
def test_end_to_end_detections_equal_the_numpy_reference_box_for_box(variant, cases, exported):
    model, images = cases[variant]
    result = exported(variant, dynamic_batch=True)
    assert result.output_names == ["num_predictions", "pred_boxes", "pred_scores", "pred_classes"]
    num, boxes, scores, classes = _run(result.output, images)
    assert (num.dtype, boxes.dtype, scores.dtype, classes.dtype) == (np.int64, np.float32, np.float32, np.int64)
    assert boxes.shape == (4, 1000, 4) and classes.shape == (4, 1000)
    expected = _reference(model, images)
    assert all(len(e) >= 5 for e in expected), "the test weights must give real detections on every photo"
    _assert_same_detections(_batch_to_detections(num, boxes, scores, classes), expected)
    for b in range(4):  # padding beyond num_predictions is -1, scores sorted best first
        n = int(num[b, 0])
        assert (boxes[b, n:] == -1).all() and (scores[b, n:] == -1).all() and (classes[b, n:] == -1).all()
        assert (np.diff(scores[b, :n]) <= 0).all()


def test_one_box_can_yield_several_classes(cases, exported):
    """Class-aware NMS over (box, class) pairs, as SuperGradients does: the same anchor box can be reported
    for two classes."""
    _, images = cases["yolo_nas_s"]
    num, boxes, _, classes = _run(exported("yolo_nas_s", dynamic_batch=True).output, images)
    classes_per_box: dict = {}
    for b in range(len(images)):
        for i in range(int(num[b, 0])):
            classes_per_box.setdefault((b, *boxes[b, i].tolist()), set()).add(int(classes[b, i]))
    assert max(len(c) for c in classes_per_box.values()) > 1


@pytest.mark.parametrize("variant", ["yolo_nas_s", "ppyoloe_s"])
def test_flat_format_gives_the_same_detections_as_batch(variant, cases, exported):
    model, images = cases[variant]
    result = exported(variant, dynamic_batch=True, output_predictions_format="flat")
    [rows] = _run(result.output, images)
    assert result.output_names == ["predictions"] and rows.dtype == np.float32 and rows.shape[1] == 7
    assert result.outputs[0]["shape"] == ["num_rows", 7]
    _assert_same_detections(_flat_to_detections(rows, 4), _reference(model, images))


@pytest.mark.parametrize("fmt", ["batch", "flat"])
def test_dynamic_batch_gives_each_image_what_it_gives_alone(fmt, cases, exported):
    model, images = cases["yolo_nas_s"]
    result = exported("yolo_nas_s", dynamic_batch=True, output_predictions_format=fmt)
    session = _session(result.output)

    def detections(batch):
        out = session.run(None, {"images": batch})
        return _batch_to_detections(*out) if fmt == "batch" else _flat_to_detections(out[0], len(batch))

    alone = [detections(images[i:i + 1])[0] for i in range(3)]
    for size in (1, 2, 3):
        together = detections(images[:size])
        for i in range(size):
            _assert_same_detections([together[i]], [alone[i]])


def test_fixed_batch_size_exports_that_batch(cases, tmp_path):
    model, images = cases["ppyoloe_s"]
    result = builder.export(model, tmp_path / "b2.onnx", input_image_shape=SIZE, batch_size=2)
    assert result.input_shape == [2, 3, 320, 320] and result.outputs[1]["shape"] == [2, 1000, 4]
    _assert_same_detections(_batch_to_detections(*_run(result.output, images[2:4])), _reference(model, images[2:4]))


def test_max_predictions_keeps_the_best_scores_not_the_lowest_class_ids(cases, tmp_path):
    model, images = cases["yolo_nas_s"]
    result = builder.export(model, tmp_path / "top5.onnx", input_image_shape=SIZE, batch_size=1,
                            max_predictions_per_image=5)
    out = _run(result.output, images[:1])
    expected = _reference(model, images[:1], max_det=5)
    _assert_same_detections(_batch_to_detections(*out), expected)
    everything = _reference(model, images[:1])[0]
    assert [s for s, _, _ in expected[0]] == [s for s, _, _ in everything[:5]]
    assert sorted(c for _, c, _ in everything[:5]) != sorted(c for _, c, _ in sorted(everything, key=lambda d: d[1])[:5])


def test_one_detection_and_custom_thresholds_are_honoured(cases, tmp_path):
    model, images = cases["ppyoloe_s"]
    one = builder.export(model, tmp_path / "one.onnx", input_image_shape=SIZE, dynamic_batch=True, max_predictions_per_image=1)
    num, boxes, scores, classes = _run(one.output, images)
    assert boxes.shape == (4, 1, 4) and (num[:, 0] == 1).all()
    _assert_same_detections(_batch_to_detections(num, boxes, scores, classes), _reference(model, images, max_det=1))

    strict = builder.export(model, tmp_path / "strict.onnx", input_image_shape=SIZE, dynamic_batch=True,
                            confidence_threshold=0.6, nms_threshold=0.3, num_pre_nms_predictions=50)
    out = _run(strict.output, images)
    expected = _reference(model, images, conf=0.6, iou=0.3, top_k=50)
    _assert_same_detections(_batch_to_detections(*out), expected)
    assert sum(map(len, expected)) < sum(map(len, _reference(model, images)))
    assert strict.confidence_threshold == 0.6 and strict.nms_threshold == 0.3 and strict.num_pre_nms_predictions == 50


@pytest.mark.parametrize("variant, before_first_conv", [("yolo_nas_s", ["Cast"]), ("ppyoloe_s", ["Cast", "Sub"])])
def test_normalisation_is_folded_into_the_first_convolution(variant, before_first_conv, exported):
    result = exported(variant, dynamic_batch=True)
    graph = onnx.load(result.output).graph
    producer = {out: node for node in graph.node for out in node.output}
    first_conv = next(n for n in graph.node if n.op_type == "Conv")
    chain, value = [], first_conv.input[0]
    while value in producer:  # walk back from the first convolution to the input
        chain.insert(0, producer[value].op_type)
        value = producer[value].input[0]
    assert value == "images" and chain == before_first_conv
    ops = [n.op_type for n in graph.node]
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert "BatchNormalization" not in ops


def test_the_callers_model_is_not_changed_by_export(cases, tmp_path):
    model, images = cases["yolo_nas_s"]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.export(tmp_path / "m.onnx", input_image_shape=SIZE)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


class _Double(torch.nn.Module):
    def forward(self, boxes, scores):
        return scores.amax(dim=2)


def test_custom_pre_and_postprocessing_modules_are_exported(cases, tmp_path):
    model, images = cases["ppyoloe_s"]
    prep = model.family.preprocessing

    class Pre(torch.nn.Module):
        def forward(self, x):
            x = x.float().flip(1)
            return (x - torch.tensor(prep.mean).reshape(1, 3, 1, 1)) / torch.tensor(prep.std).reshape(1, 3, 1, 1)

    result = builder.export(model, tmp_path / "custom.onnx", input_image_shape=SIZE, batch_size=4,
                            preprocessing=Pre(), postprocessing=_Double())
    [best] = _run(result.output, images)
    np.testing.assert_allclose(best, _eager(model, images)[1].max(axis=2), atol=SCORE_ATOL)
    assert result.output_predictions_format is None and result.preprocessing_steps == ["custom Pre"]


def test_tensorrt_flavour_carries_efficient_nms_with_its_real_attributes(cases, tmp_path):
    model, _ = cases["yolo_nas_s"]
    result = builder.export(model, tmp_path / "trt.onnx", input_image_shape=SIZE, dynamic_batch=True,
                            engine="tensorrt", max_predictions_per_image=100, confidence_threshold=0.3)
    proto = onnx.load(result.output)
    onnx.checker.check_model(proto, full_check=True)
    [node] = [n for n in proto.graph.node if n.op_type == "EfficientNMS_TRT"]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["plugin_version"] == b"1" and attrs["background_class"] == -1 and attrs["max_output_boxes"] == 100
    assert attrs["score_activation"] == 0 and attrs["box_coding"] == 0 and attrs["class_agnostic"] == 0
    assert abs(attrs["score_threshold"] - 0.3) < 1e-7 and abs(attrs["iou_threshold"] - 0.7) < 1e-7
    outputs = {o["name"]: (o["dtype"], o["shape"]) for o in result.outputs}
    assert outputs == {"num_dets": ("int32", ["batch", 1]), "det_boxes": ("float32", ["batch", 100, 4]),
                       "det_scores": ("float32", ["batch", 100]), "det_classes": ("int32", ["batch", 100])}
    assert "trtexec --onnx=" in str(result) and "--minShapes=images:1x3x320x320" in str(result)


def test_tensorrt_flat_format_converts_the_plugin_outputs_to_rows(cases, tmp_path):
    model, _ = cases["ppyoloe_s"]
    result = builder.export(model, tmp_path / "trtflat.onnx", input_image_shape=SIZE, engine="tensorrt",
                            output_predictions_format="flat")
    proto = onnx.load(result.output)
    onnx.checker.check_model(proto, full_check=True)
    assert result.output_names == ["predictions"] and result.outputs[0]["shape"] == ["num_rows", 7]
    assert any(n.op_type == "EfficientNMS_TRT" for n in proto.graph.node)


def test_export_is_checked_and_uses_the_pinned_opset(exported):
    result = exported("yolo_nas_s", dynamic_batch=True)
    proto = onnx.load(result.output)
    onnx.checker.check_model(proto, full_check=True)
    assert {o.domain: o.version for o in proto.opset_import}[""] == 18
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["model"] == "yolo_nas_s" and meta["builder_version"] == builder.__version__


@pytest.mark.slow
def test_full_size_640_end_to_end(photos, tmp_path):
    """The one real 640x640 run: 8400 anchors, default options, against the numpy reference."""
    prep = family_of("yolo_nas_s").preprocessing
    images = np.stack([fit_to_input(photos[n], (640, 640), prep)[0].transpose(2, 0, 1) for n in ("astronaut", "rocket")])
    model = lively_model("yolo_nas_s", torch.from_numpy(to_network_input(images, prep)), count=100)
    result = builder.export(model, tmp_path / "full.onnx", dynamic_batch=True)
    assert result.input_shape == ["batch", 3, 640, 640] and result.num_pre_nms_predictions == 1000
    _assert_same_detections(_batch_to_detections(*_run(result.output, images)), _reference(model, images))
