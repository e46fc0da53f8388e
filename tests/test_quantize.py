"""FP16 and INT8 exports: where the reduced precision is, what stays float, the report, calibration sources."""
from __future__ import annotations

import json
import subprocess
import sys
from collections import deque

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, numpy_helper

import builder
from builder.core.errors import UserError
from builder.core.images import to_network_input
from builder.models.registry import family_of
from builder.core.images import CALIBRATION_PHOTOS, HELD_OUT_PHOTOS, builtin_photos
from builder.quantize.calibration import fitted
from builder.quantize.report import agreement, match
from reference_weights import lively_model

SIZE = (160, 160)


@pytest.fixture(scope="module")
def model():
    """yolo_nas_s whose scores spread on the built-in photos, held-out ones included."""
    prep = family_of("yolo_nas_s").preprocessing
    images = np.concatenate(fitted(builtin_photos(CALIBRATION_PHOTOS + HELD_OUT_PHOTOS), SIZE, prep))
    return lively_model("yolo_nas_s", torch.from_numpy(to_network_input(images, prep)), count=8)


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    made = {}

    def get(**options):
        key = tuple(sorted(options.items()))
        if key not in made:
            made[key] = builder.export(model, tmp_path_factory.mktemp("q") / "m.onnx", input_image_shape=SIZE,
                                       dynamic_batch=True, **options)
        return made[key]

    return get


def _graph(result):
    return onnx.load(result.output).graph


def _downstream_ops(graph, start_names):
    consumers = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    seen, ops, queue = set(), [], deque(start_names)
    while queue:
        for node in consumers.get(queue.popleft(), []):
            if node.name not in seen:
                seen.add(node.name)
                ops.append(node.op_type)
                queue.extend(node.output)
    return ops


def _last_convs(graph):
    convs = [n for n in graph.node if n.op_type == "Conv"]
    return [c for c in convs if "Conv" not in _downstream_ops(graph, c.output)]


def _run(result, images):
    return ort.InferenceSession(str(result.output), providers=["CPUExecutionProvider"]).run(None, {"images": images})


def _photos(names):
    return np.concatenate(fitted(builtin_photos(names), SIZE, family_of("yolo_nas_s").preprocessing))


def test_fp16_network_keeps_uint8_input_and_float32_int64_outputs(exported):
    result = exported(precision="fp16")
    graph = _graph(result)
    assert graph.input[0].type.tensor_type.elem_type == TensorProto.UINT8
    num, boxes, scores, classes = _run(result, _photos(HELD_OUT_PHOTOS))
    assert (num.dtype, boxes.dtype, scores.dtype, classes.dtype) == (np.int64, np.float32, np.float32, np.int64)
    initializers = {i.name: i for i in graph.initializer}
    conv_weights = [initializers[n.input[1]].data_type for n in graph.node if n.op_type == "Conv"]
    assert conv_weights and set(conv_weights) == {TensorProto.FLOAT16}
    # decoding, top-k and NMS run in float32: nothing float16 downstream of the prediction layers but the casts back
    values = {v.name: v.type.tensor_type.elem_type for v in graph.value_info}
    [nms] = [n for n in graph.node if n.op_type == "NonMaxSuppression"]
    assert values[nms.input[0]] == values[nms.input[1]] == TensorProto.FLOAT
    for op in ("Softmax", "TopK"):
        assert all(values.get(n.input[0]) == TensorProto.FLOAT for n in graph.node if n.op_type == op)


def test_int8_is_symmetric_qdq_on_the_network_only(exported):
    graph = _graph(exported(precision="int8", calibration_count=8))
    initializers = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    last = _last_convs(graph)
    class_convs = [c for c in last if c.input[1] in initializers and initializers[c.input[1]].shape[0] == 80]
    assert len(class_convs) == 3 and len(last) == 6
    for conv in convs:  # every convolution reads dequantized int8 activations...
        assert producer[conv.input[0]].op_type == "DequantizeLinear"
        if conv in class_convs:  # ...the class-logit layers keep float weights and emit float logits
            continue
        weight = producer[conv.input[1]]  # ...the others (box layers too) have per-channel int8 weights
        w = initializers[weight.input[0]]
        assert w.dtype == np.int8 and initializers[weight.input[1]].shape == (w.shape[0],)
    for node in graph.node:  # symmetric: weights int8 with zero points of 0, activations uint8 around 128
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            zero_point = initializers[node.input[2]]
            weight = node.input[0] in initializers
            assert zero_point.dtype == (np.int8 if weight else np.uint8)
            assert (zero_point == (0 if weight else 128)).all()
    # the postprocessing starts at the class logits and at the box layers' dequantized outputs: all float
    consumers = {i: n for n in graph.node for i in n.input}
    starts = []
    for conv in last:
        if conv in class_convs:
            starts.append(conv.output[0])
        else:
            quantize = consumers[conv.output[0]]
            dequantize = consumers[quantize.output[0]]
            assert (quantize.op_type, dequantize.op_type) == ("QuantizeLinear", "DequantizeLinear")
            starts.append(dequantize.output[0])
    after = _downstream_ops(graph, starts)
    assert "NonMaxSuppression" in after and "TopK" in after and "Softmax" in after
    assert "QuantizeLinear" not in after and "DequantizeLinear" not in after
    # the preprocessing (uint8 -> float cast) stays float; quantization starts at the first convolution's input
    first_act = producer[convs[0].input[0]]
    assert producer[first_act.input[0]].op_type == "QuantizeLinear"
    assert producer[producer[first_act.input[0]].input[0]].op_type == "Cast"


def test_int8_tensorrt_flavour_is_int8_with_zero_points_of_0_and_computes_the_same(exported):
    """TensorRT takes zero points of 0 only; the flavours differ in the activations' encoding, not in value.

    Proven without the CPU's int8 kernels, whose results differ between CPUs (AVX2's u8s8 multiply-add
    saturates int16 sums where VNNI does not, so an int8-activation graph run on ONNX Runtime's AVX2 kernels
    is off by hundreds of pixels while TensorRT's own kernels are not): node for node the two graphs hold the
    same weights and scales, with zero points 0 (int8) against 128 (uint8), so every dequantized value is
    equal; and run with ONNX Runtime's graph fusions off (Q, DQ and float convolutions, no int8 GEMM) both
    give the same candidates bit for bit.
    """
    for_trt, for_ort = (exported(precision="int8", calibration_count=8, engine=e) for e in ("tensorrt", "onnxruntime"))
    trt_graph, ort_graph = _graph(for_trt), _graph(for_ort)
    trt_init = {i.name: numpy_helper.to_array(i) for i in trt_graph.initializer}
    ort_init = {i.name: numpy_helper.to_array(i) for i in ort_graph.initializer}
    zero_points = [trt_init[n.input[2]] for n in trt_graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert len(zero_points) > 100 and all(z.dtype == np.int8 and not z.any() for z in zero_points)

    def qdq(graph, init):
        return [(n.op_type, init[n.input[1]], init[n.input[2]], n.input[0] in init and init[n.input[0]])
                for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]

    trt_qdq, ort_qdq = qdq(trt_graph, trt_init), qdq(ort_graph, ort_init)
    assert [q[0] for q in trt_qdq] == [q[0] for q in ort_qdq]
    activations = 0
    for (_, scale_t, zero_t, weight_t), (_, scale_o, zero_o, weight_o) in zip(trt_qdq, ort_qdq):
        np.testing.assert_array_equal(scale_t, scale_o)
        if weight_t is not False:  # a weight: the same int8 values, zero point 0, in both
            np.testing.assert_array_equal(weight_t, weight_o)
            assert zero_o.dtype == np.int8 and not zero_o.any()
        else:  # an activation: q_uint8 - 128 == q_int8 - 0 for every value, so dequantized values are equal
            assert zero_o.dtype == np.uint8 and (zero_o == 128).all()
            activations += 1
    assert activations > 50
    images = _photos(HELD_OUT_PHOTOS)  # the candidates both flavours hand to their NMS, computed in float
    for_trt, for_ort = (_pre_nms(onnx.load(r.output), images) for r in (for_trt, for_ort))
    for a, b in zip(for_trt, for_ort):
        np.testing.assert_array_equal(a, b)


def _pre_nms(model, images):
    from builder.exporting.graphs import TOP_K_OUTPUTS, keep_outputs

    model.graph.output.extend(onnx.helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in TOP_K_OUTPUTS)
    model = keep_outputs(model, TOP_K_OUTPUTS)
    options = ort.SessionOptions()  # QuantizeLinear, DequantizeLinear and float kernels: no CPU-specific int8 GEMM
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"images": images})


@pytest.mark.parametrize("fmt", ["batch", "flat"])
def test_int8_runs_on_onnxruntime_in_both_formats(fmt, exported):
    result = exported(precision="int8", calibration_count=8, output_predictions_format=fmt)
    outputs = _run(result, _photos(["grace_hopper", "flower", "coffee"]))
    if fmt == "flat":
        assert outputs[0].dtype == np.float32 and outputs[0].shape[1] == 7
        assert set(outputs[0][:, 0].astype(int)) <= {0, 1, 2}
    else:
        assert [o.dtype for o in outputs] == [np.int64, np.float32, np.float32, np.int64]
        assert outputs[1].shape == (3, 1000, 4)


def test_report_is_written_next_to_the_model_and_equals_an_independent_recount(model, exported, tmp_path):
    result = exported(precision="int8", calibration_count=8)
    report = json.loads(result.output.with_suffix(".accuracy.json").read_text())
    assert report == json.loads(json.dumps(result.accuracy_report))
    assert report["held_out"]["images"] == list(HELD_OUT_PHOTOS)
    assert report["calibration"]["images"] == 8 and report["calibration"]["augmented"] == 3
    # recount: the FP32 export of the same weights and the INT8 file, run here, matched here
    fp32 = builder.export(model, tmp_path / "fp32.onnx", input_image_shape=SIZE, dynamic_batch=True)
    images = _photos(HELD_OUT_PHOTOS)
    ref, q = _run(fp32, images), _run(result, images)

    def dets(out, b):
        num, boxes, scores, classes = out
        return [(float(scores[b, i]), int(classes[b, i]), boxes[b, i]) for i in range(int(num[b, 0]))]

    matched = sum(len(match(dets(ref, b), dets(q, b))) for b in range(len(images)))
    total = sum(int(n) for n in ref[0][:, 0])
    assert total > 0 and report["detections"]["reference_detections"] == total
    assert report["detections"]["matched"] == matched
    assert report["detections"]["recall"] == pytest.approx(matched / total)


def test_matching_needs_the_same_class_and_half_overlap():
    box = np.array([0.0, 0.0, 10.0, 10.0])
    shifted = np.array([0.0, 0.0, 10.0, 20.0])  # IoU 0.5 with box
    far = np.array([0.0, 0.0, 10.0, 21.0])  # IoU < 0.5
    assert match([(0.9, 1, box)], [(0.8, 1, shifted)]) == [0.5]
    assert match([(0.9, 1, box)], [(0.8, 1, far)]) == []
    assert match([(0.9, 1, box)], [(0.8, 2, box)]) == []
    assert match([(0.9, 1, box), (0.7, 1, box)], [(0.8, 1, box)]) == [1.0]  # one-to-one
    same = [[(0.9, 1, box)], []]
    assert agreement(same, same, ["a", "b"])["recall"] == 1.0


def test_fp16_keeps_float32_where_onnx_requires_it(tmp_path):
    """PP-YOLOE's neck upsamples with Resize, whose scales input stays float32 in a float16 graph."""
    result = builder.export("ppyoloe_s", tmp_path / "h.onnx", input_image_shape=(96, 96), precision="fp16")
    graph = _graph(result)
    initializers = {i.name: i.data_type for i in graph.initializer}
    resizes = [n for n in graph.node if n.op_type == "Resize"]
    assert resizes and all(initializers.get(n.input[2], TensorProto.FLOAT) == TensorProto.FLOAT for n in resizes)
    assert result.accuracy_report["precision"] == "fp16"


def test_fp16_report_checks_all_built_in_photos(exported):
    report = exported(precision="fp16").accuracy_report
    assert report["held_out"]["images"] == list(CALIBRATION_PHOTOS + HELD_OUT_PHOTOS)
    assert report["target_recall"] == 0.99 and "calibration" not in report
    assert report["detections"]["reference_detections"] > 0


def test_int8_calibrates_on_a_folder_and_holds_out_every_built_in_photo(model, tmp_path, caplog):
    from PIL import Image

    folder = tmp_path / "calib"
    folder.mkdir()
    for i, (name, image) in enumerate(builtin_photos(["astronaut", "rocket", "china"])):
        Image.fromarray(image[:, ::-1]).save(folder / f"{i}_{name}.png")
    (folder / "notes.txt").write_text("not an image")
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    with caplog.at_level("WARNING", logger="builder"):
        result = builder.export(model, tmp_path / "q.onnx", input_image_shape=SIZE, precision="int8",
                                calibration_images=str(folder), calibration_count=4)
    report = result.accuracy_report
    assert report["calibration"]["images"] == 3 and report["calibration"]["augmented"] == 0
    assert report["held_out"]["images"] == list(CALIBRATION_PHOTOS + HELD_OUT_PHOTOS)
    assert "skipping broken.jpg" in caplog.text and "only 3 images" in caplog.text


def test_report_images_are_the_held_out_set_and_never_the_calibration_folder(model, tmp_path, caplog):
    from PIL import Image

    calibration, held_out = tmp_path / "calib", tmp_path / "held_out"
    for folder, names in ((calibration, ["astronaut", "rocket", "china"]), (held_out, ["grace_hopper", "coffee"])):
        folder.mkdir()
        for name, image in builtin_photos(names):
            Image.fromarray(image).save(folder / f"{name}.png")
    result = builder.export(model, tmp_path / "q.onnx", input_image_shape=SIZE, precision="int8",
                            calibration_images=str(calibration), calibration_count=3, report_images=str(held_out))
    report = result.accuracy_report
    assert report["held_out"]["images"] == ["coffee.png", "grace_hopper.png"]
    assert report["held_out"]["source"] == f"'{held_out}'"
    # the recount on exactly those two images
    recount = builder.export(model, tmp_path / "r.onnx", input_image_shape=SIZE, precision="fp16",
                             report_images=str(held_out)).accuracy_report
    assert recount["detections"]["reference_detections"] == report["detections"]["reference_detections"]
    assert [i["image"] for i in recount["detections"]["per_image"]] == ["coffee.png", "grace_hopper.png"]
    with pytest.raises(UserError, match="the report images are the calibration images"):
        builder.export(model, tmp_path / "s.onnx", input_image_shape=SIZE, precision="int8",
                       calibration_images=str(calibration), report_images=str(calibration) + "/")
    assert not (tmp_path / "s.onnx").exists()


def test_a_report_on_few_detections_says_so(tmp_path, caplog):
    # seeded random weights: nearly nothing passes the threshold on the built-in photos
    with caplog.at_level("WARNING", logger="builder"):
        result = builder.export("ppyoloe_s", tmp_path / "q.onnx", input_image_shape=(96, 96), precision="fp16")
    found = result.accuracy_report["detections"]["reference_detections"]
    assert found < 20 and f"the accuracy report rests on {found} FP32 detection" in caplog.text
    assert "--report-images DIR" in caplog.text


def test_int8_without_images_warns_and_uses_the_built_in_photos(model, tmp_path, caplog):
    with caplog.at_level("WARNING", logger="builder"):
        builder.export(model, tmp_path / "q.onnx", input_image_shape=SIZE, quantization_mode="int8", calibration_count=6)
    assert "calibrating on builder's built-in photos" in caplog.text


def test_int8_accepts_a_dataloader_in_training_normalisation(model, tmp_path):
    prep = model.family.preprocessing
    images = _photos(["coffee", "chelsea", "rocket", "china"])
    dataset = torch.utils.data.TensorDataset(torch.from_numpy(to_network_input(images, prep)), torch.zeros(4))
    loader = torch.utils.data.DataLoader(dataset, batch_size=2)
    result = builder.export(model, tmp_path / "q.onnx", input_image_shape=SIZE, quantization_mode="int8",
                            calibration_loader=loader, calibration_method="percentile")
    assert result.accuracy_report["calibration"]["source"] == "the calibration DataLoader"
    assert result.accuracy_report["calibration"]["images"] == 4


@pytest.mark.parametrize("kwargs, message", [
    (dict(calibration_images="/no/such/folder", precision="int8"), "does not exist"),
    (dict(calibration_images="x", precision="fp16"), "calibration_images only apply to precision int8"),
    (dict(report_images="x"), "report_images only apply to precision fp16 or int8"),
    (dict(report_images="/no/such/folder", precision="fp16"), "images folder '/no/such/folder' does not exist"),
    (dict(quantization_mode="int4"), "invalid quantization_mode"),
    (dict(calibration_loader=[torch.zeros(1, 3, 64, 64)], quantization_mode="int8"), "yields 64x64 images"),
])
def test_bad_quantization_options_are_refused(model, tmp_path, kwargs, message):
    with pytest.raises(UserError, match=message):
        builder.export(model, tmp_path / "q.onnx", input_image_shape=SIZE, **kwargs)
    assert not (tmp_path / "q.onnx").exists()


def test_cli_int8_with_a_calibration_folder_prints_the_report_and_shows_progress(tmp_path):
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    for name, image in builtin_photos(["coffee", "rocket"]):
        Image.fromarray(image).save(folder / f"{name}.jpg")
    proc = subprocess.run([sys.executable, "-m", "builder", "export", "--model", "ppyoloe_s", "--input-shape", "128x128",
                           "--precision", "int8", "--calibration-images", str(folder), "--calibration-count", "2",
                           "--output", str(tmp_path / "q.onnx")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "precision: int8; int8 vs fp32 on 7 held-out images: recall" in proc.stdout
    assert "calibrating" in proc.stderr and "2/2" in proc.stderr
    assert (tmp_path / "q.accuracy.json").exists()


def test_calibration_runs_in_strides_that_divide_the_image_count():
    from builder.quantize.int8 import calibration_stride

    assert [calibration_stride(n) for n in (64, 7, 12, 1, 30)] == [8, 7, 6, 1, 6]


def test_histogram_calibration_of_a_constant_tensor_is_one_clear_error(tmp_path):
    """Random PP-YOLOE weights start with zero prediction layers: constant tensors that onnxruntime's
    histogram calibrators cannot bin."""
    with pytest.raises(UserError, match="percentile calibration failed: a tensor is constant"):
        builder.export("ppyoloe_s", tmp_path / "q.onnx", input_image_shape=(96, 96), precision="int8",
                       calibration_method="percentile", calibration_count=2)
    assert not (tmp_path / "q.onnx").exists()


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_reduced_precision_runs_without_preprocessing_with_and_without_postprocessing(precision, tmp_path):
    """Calibration and the accuracy report feed each graph what it takes: uint8 images, or the normalised
    float tensor of a graph exported without preprocessing (which used to crash ONNX Runtime). The other
    precision x preprocessing x postprocessing combinations are exported by the tests above and in test_export."""
    for post in (True, False):
        result = builder.export("ppyoloe_s", tmp_path / f"{post}.onnx", input_image_shape=(64, 64),
                                preprocessing=False, postprocessing=post, precision=precision,
                                **({"calibration_count": 4} if precision == "int8" else {}))
        assert result.input_dtype == "float32" and result.accuracy_report["held_out"]["images"]
        images = np.zeros((1, 3, 64, 64), np.float32)
        outputs = ort.InferenceSession(str(result.output), providers=["CPUExecutionProvider"]).run(None, {"images": images})
        assert len(outputs) == (4 if post else 2) and all(o.shape[0] == 1 for o in outputs)
