"""SuperGradients drop-in: export code written against SG's API (its names, enums, keywords and result fields) runs
on builder unchanged but for its imports, and each SG keyword is honoured or accepted with one warning line."""
from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
import pickle
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import builder
from builder import models
from builder.compat import DetectionOutputFormatMode, ExportQuantizationMode, ExportTargetBackend, Models
from builder.core.errors import UserError
from builder.core.images import CALIBRATION_PHOTOS, builtin_photos, fit_to_input, to_network_input
from builder.models.registry import family_of
from builder.stage.supergradients import FirstBatches, supergradients_options
from builder.stage.result import ExportResult, ModelPath
from reference_weights import lively_model

#: how SG code trains: a checkpoint per model, with its class count
CLASSES = {Models.YOLO_NAS_S: 80, Models.PP_YOLOE_S: 20}
#: the keywords this module is about: a warning that names none of them is someone else's (random weights, ...)
SG_KEYWORDS = ("device", "onnx_export_kwargs", "input_image_channels", "input_image_dtype", "calibration_batches",
               "calibration_percentile", "selective_quantizer", "postprocessing_kwargs", "calibration_loader",
               "calibration_method", "output_predictions_format", "engine=")
LOADER = "a calibration DataLoader of the input's size"


def _fitted(names, shape, variant) -> np.ndarray:
    """Built-in photos resized as the family was trained: uint8 RGB [N, 3, H, W]."""
    prep = family_of(variant).preprocessing
    return np.stack([fit_to_input(photo, shape, prep)[0].transpose(2, 0, 1) for _, photo in builtin_photos(names)])


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, pathlib.Path]:
    """SG trainer checkpoints ({"net": state_dict}) of models whose scores spread on real photos (random
    weights detect nothing, and a threshold check on no detections checks nothing)."""
    folder = tmp_path_factory.mktemp("checkpoints")
    out = {}
    for variant, classes in CLASSES.items():
        images = _fitted(CALIBRATION_PHOTOS, (96, 96), variant)
        x = torch.from_numpy(to_network_input(images, family_of(variant).preprocessing))
        out[variant] = folder / f"{variant}_ckpt_best.pth"
        torch.save({"net": lively_model(variant, x, count=40, num_classes=classes).state_dict()}, out[variant])
    return out


def _loader(variant, shape) -> torch.utils.data.DataLoader:
    """3 batches (2, 2, 1) of photos in the training normalisation, as SG's calibration loaders yield them."""
    x = torch.from_numpy(to_network_input(_fitted(CALIBRATION_PHOTOS, shape, variant),
                                          family_of(variant).preprocessing))
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, torch.zeros(len(x))), batch_size=2)


def _sg_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and any(k in r.getMessage() for k in SG_KEYWORDS)]


# Each combination is one export at 64-96 px; together they cover every value of every axis: both families,
# flat/batch, FP32/FP16/INT8 (enum members and plain strings), with and without pre-/postprocessing, four input
# shapes, batch 1, 2 and dynamic, device="cpu", a calibration loader cut by calibration_batches, SG's keywords.
# (INT8 with a fixed batch of 2 is test_int8_with_a_fixed_batch_of_2_exports.)
EXPORTS = [
    pytest.param(Models.YOLO_NAS_S, dict(
        engine=ExportTargetBackend.ONNXRUNTIME, output_predictions_format=DetectionOutputFormatMode.FLAT_FORMAT,
        device="cpu", input_image_shape=(96, 96), batch_size=2, max_predictions_per_image=None,
        onnx_export_kwargs={"do_constant_folding": True}), [], id="yolo_nas_s-fp32-flat-b2-96x96"),
    pytest.param(Models.YOLO_NAS_S, dict(
        quantization_mode=ExportQuantizationMode.FP16, output_predictions_format=DetectionOutputFormatMode.BATCH_FORMAT,
        input_image_shape=(64, 96), onnx_export_kwargs={"opset_version": 19, "dynamic_axes": {"input": {0: "batch"}}},
        postprocessing_kwargs={}), [], id="yolo_nas_s-fp16-batch-dynamic-64x96-opset19"),
    pytest.param(Models.YOLO_NAS_S, dict(
        quantization_mode=ExportQuantizationMode.INT8, calibration_loader=LOADER, calibration_batches=2,
        calibration_method="max", output_predictions_format="flat", input_image_shape=(64, 64), device="cpu",
        selective_quantizer=object()), ["selective_quantizer is ignored"], id="yolo_nas_s-int8-loader-flat-64x64"),
    pytest.param(Models.YOLO_NAS_S, dict(
        preprocessing=False, postprocessing=False, output_predictions_format=DetectionOutputFormatMode.FLAT_FORMAT,
        input_image_dtype=torch.float32, input_image_shape=(64, 64)),
        ["output_predictions_format='flat' is ignored"], id="yolo_nas_s-fp32-raw-float-64x64"),
    pytest.param(Models.PP_YOLOE_S, dict(
        engine="onnxruntime", output_predictions_format="batch", input_image_shape=(96, 64), batch_size=2,
        input_image_channels=3, input_image_dtype=torch.uint8, confidence_threshold=0.6), [],
        id="ppyoloe_s-fp32-batch-b2-96x64"),
    pytest.param(Models.PP_YOLOE_S, dict(
        quantization_mode="fp16", calibration_loader=LOADER, device="cpu", input_image_shape=(64, 64),
        output_predictions_format=DetectionOutputFormatMode.FLAT_FORMAT),
        ["calibration_loader is ignored: only INT8 is calibrated, this export is FP16"],
        id="ppyoloe_s-fp16-flat-64x64"),
    pytest.param(Models.PP_YOLOE_S, dict(
        quantization_mode="int8", calibration_count=4, preprocessing=False, output_predictions_format="batch",
        input_image_shape=(64, 64), onnx_export_kwargs={"dynamic_axes": {"input": {0: "batch"}}},
        calibration_percentile=99.99), ["calibration_percentile is ignored"],
        id="ppyoloe_s-int8-builtin-float-batch-dynamic-64x64"),
    pytest.param(Models.PP_YOLOE_S, dict(
        postprocessing=False, engine=ExportTargetBackend.TENSORRT, quantization_mode=ExportQuantizationMode.FP16,
        input_image_shape=(96, 96)), ["engine='tensorrt' is ignored"], id="ppyoloe_s-fp16-raw-tensorrt-96x96"),
]


@pytest.mark.parametrize("variant, options, warned", EXPORTS)
def test_sg_export_code_runs_and_its_result_fields_describe_the_model(variant, options, warned, checkpoints,
                                                                      tmp_path, caplog):
    options = dict(options)
    shape = options["input_image_shape"]
    if options.get("calibration_loader") == LOADER:
        options["calibration_loader"] = _loader(variant, shape)
    model = models.get(variant, num_classes=CLASSES[variant], checkpoint_path=str(checkpoints[variant]))
    with caplog.at_level(logging.WARNING, logger="builder"):
        result = model.export(str(tmp_path / "model.onnx"), **options)

    notes = _sg_warnings(caplog)
    assert len(notes) == len(warned) and all(w in n for w, n in zip(warned, notes)), notes
    assert all("\n" not in n for n in notes)

    # SG's result fields
    pre = options.get("preprocessing", True)
    post = options.get("postprocessing", True)
    dynamic = "dynamic_axes" in options.get("onnx_export_kwargs", {})
    mode = options.get("quantization_mode")
    assert result.input_image_shape == shape and result.input_image_channels == 3
    assert result.input_image_dtype == (torch.uint8 if pre else torch.float32)
    assert result.quantization_mode == mode and (result.quantization_mode is None) == (mode is None)
    assert result.engine == ExportTargetBackend.ONNXRUNTIME  # SG's result says tensorrt without NMS; warned above
    fmt = options.get("output_predictions_format") if post else None
    assert result.output_predictions_format == fmt
    assert result.batch_size == (None if dynamic else options.get("batch_size", 1))
    assert isinstance(result.output, str) and result.output == str((tmp_path / "model.onnx").resolve())
    assert isinstance(result.usage_instructions, str) and result.output in result.usage_instructions
    assert repr(result) == result.usage_instructions
    if "onnx_export_kwargs" in options and "opset_version" in options["onnx_export_kwargs"]:
        assert onnx.load(result.output).opset_import[0].version == options["onnx_export_kwargs"]["opset_version"]
    if "calibration_batches" in options:  # 2 of the loader's 3 batches of 2
        assert result.accuracy_report["calibration"]["images"] == 4

    # run it as SG's usage instructions do, on real photos
    batch = 2 if dynamic else result.batch_size
    images = _fitted(["astronaut", "coffee"][:batch], shape, variant)
    if not pre:
        images = to_network_input(images, family_of(variant).preprocessing)
    session = ort.InferenceSession(result.output, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    outputs = session.run(None, {"images": images})
    conf = result.confidence_threshold
    if not post:
        boxes, scores = outputs
        anchors = sum((shape[0] // s) * (shape[1] // s) for s in (8, 16, 32))
        assert boxes.shape == (batch, anchors, 4) and scores.shape == (batch, anchors, CLASSES[variant])
        assert boxes.dtype == scores.dtype == np.float32 and 0 <= scores.min() and scores.max() <= 1
        return
    assert conf == options.get("confidence_threshold", family_of(variant).default_confidence)
    if fmt == "flat":
        [rows] = outputs
        assert rows.dtype == np.float32 and rows.ndim == 2 and rows.shape[1] == 7 and len(rows) > 0
        assert set(rows[:, 0].astype(int)) <= set(range(batch))
        assert (rows[:, 5] >= conf).all() and (rows[:, 6] >= 0).all() and (rows[:, 6] < CLASSES[variant]).all()
        for image in range(batch):  # best first within each image
            image_scores = rows[rows[:, 0] == image, 5]
            assert (np.diff(image_scores) <= 0).all()
    else:
        num, boxes, scores, classes = outputs
        top = result.outputs[1]["shape"][1]
        assert num.shape == (batch, 1) and boxes.shape == (batch, top, 4)
        assert scores.shape == classes.shape == (batch, top)
        assert (num.dtype, boxes.dtype, scores.dtype, classes.dtype) == (np.int64, np.float32, np.float32, np.int64)
        assert num.sum() > 0
        for image, count in enumerate(num[:, 0]):
            assert (scores[image, :count] >= conf).all() and (np.diff(scores[image, :count]) <= 0).all()
            assert (classes[image, :count] < CLASSES[variant]).all() and (classes[image, count:] == -1).all()
            assert (scores[image, count:] == -1).all()


def test_sg_names_are_supergradients_values():
    assert (Models.YOLO_NAS_S, Models.YOLO_NAS_M, Models.YOLO_NAS_L) == ("yolo_nas_s", "yolo_nas_m", "yolo_nas_l")
    assert (Models.PP_YOLOE_S, Models.PP_YOLOE_M, Models.PP_YOLOE_L, Models.PP_YOLOE_X) == (
        "ppyoloe_s", "ppyoloe_m", "ppyoloe_l", "ppyoloe_x")
    assert {m.name: m.value for m in ExportTargetBackend} == {"ONNXRUNTIME": "onnxruntime", "TENSORRT": "tensorrt"}
    assert {m.name: m.value for m in ExportQuantizationMode} == {"FP16": "fp16", "INT8": "int8"}
    assert {m.name: m.value for m in DetectionOutputFormatMode} == {"FLAT_FORMAT": "flat", "BATCH_FORMAT": "batch"}
    assert ExportQuantizationMode.INT8 == "int8" and f"{ExportTargetBackend.TENSORRT}" == "tensorrt"
    assert set(vars(Models).values()) >= set(models.list_variants())


def test_coco_weights_by_sg_name(tmp_path, file_server, weights_cache, monkeypatch):
    torch.manual_seed(1)
    torch.save({"net": models.get(Models.PP_YOLOE_S).state_dict()}, tmp_path / "ppyoloe_s_coco.pth")
    file_server.files["mirror/ppyoloe_s_coco.pth"] = (tmp_path / "ppyoloe_s_coco.pth").read_bytes()
    monkeypatch.setenv("BUILDER_WEIGHTS_MIRROR", f"{file_server.url}/mirror/")
    model = models.get(Models.PP_YOLOE_S, pretrained_weights="coco")
    assert model.num_classes == 80 and model.class_names[:3] == ["person", "bicycle", "car"]


def _result(output) -> ExportResult:
    return ExportResult(output=output, model="ppyoloe_s", engine="onnxruntime", output_predictions_format="batch",
                        input_name="images", input_shape=["batch", 3, 96, 64], input_dtype="uint8", inputs=[],
                        outputs=[], preprocessing_steps=[], resize="stretch to 96x64", confidence_threshold=0.5,
                        nms_threshold=0.65, num_pre_nms_predictions=1000, max_predictions_per_image=1000,
                        batch_size=None, export_seconds=0.0, precision="int8")


def test_result_output_is_sgs_str_and_builders_path(tmp_path):
    path = (tmp_path / "m.onnx").resolve()
    result = _result(path)
    assert isinstance(result.output, str) and result.output == str(path) and result.output == path
    assert result.output.with_suffix(".plan") == path.with_suffix(".plan") and result.output.parent == tmp_path
    assert result.output / "x" == path / "x" and not result.output.exists()
    assert result.output.replace(".onnx", ".engine") == str(path.with_suffix(".engine"))  # str's replace, as in SG
    assert isinstance(dataclasses.replace(result, output=pathlib.Path("/x.onnx")).output, ModelPath)
    assert json.loads(json.dumps(dataclasses.asdict(result)))["output"] == str(path)
    assert pickle.loads(pickle.dumps(result)) == result
    assert (result.input_image_shape, result.input_image_channels, result.quantization_mode) == ((96, 64), 3, "int8")
    assert result.quantization_mode == ExportQuantizationMode.INT8 and result.input_image_dtype is torch.uint8


def test_sg_result_fields_read_without_torch(tmp_path):
    """The host reads stage.json into an ExportResult and has no torch: only input_image_dtype needs it."""
    code = ("import sys, builder.stage.result as r\n"
            f"x = r.ExportResult(**{dict(vars(_result('/m.onnx')), output='/m.onnx')!r})\n"
            "print(x.input_image_shape, x.input_image_channels, x.quantization_mode, x.output, x.engine, "
            "len(x.usage_instructions) > 0, 'torch' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["(96,", "64)", "3", "int8", "/m.onnx", "onnxruntime", "True", "False"]


_DATA = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.zeros(6, 3, 64, 64)), batch_size=3)
OPTIONS = [
    # (SG keywords, builder options expected among the result, keys gone, the one warning or None)
    (dict(device="cpu"), {}, ["device"], None),
    (dict(device=torch.device("cpu"), max_predictions_per_image=None), {}, ["device", "max_predictions_per_image"],
     None),
    (dict(quantization_mode=None, engine=ExportTargetBackend.TENSORRT), dict(precision="fp32", engine="tensorrt"),
     ["quantization_mode"], None),
    (dict(onnx_export_kwargs={"opset_version": 19}), dict(onnx_opset=19), ["onnx_export_kwargs"], None),
    (dict(onnx_export_kwargs={"opset_version": 14}), dict(onnx_opset=18), [], "['opset_version'] 14 is not available"),
    (dict(onnx_export_kwargs={"do_constant_folding": True, "keep_initializers_as_inputs": False, "verbose": False,
                              "export_params": True, "input_names": ["images"], "dynamic_axes": None}), {}, [], None),
    (dict(onnx_export_kwargs={"do_constant_folding": False}), {}, [], "['do_constant_folding'] is ignored"),
    (dict(onnx_export_kwargs={"keep_initializers_as_inputs": True}), {}, [], "['keep_initializers_as_inputs'] is ign"),
    (dict(onnx_export_kwargs={"export_params": False}), {}, [], "['export_params'] is ignored"),
    (dict(onnx_export_kwargs={"verbose": True}), {}, [], "['verbose'] is ignored"),
    (dict(onnx_export_kwargs={"input_names": ["input"]}), {}, [], "the input is named 'images'"),
    (dict(onnx_export_kwargs={"output_names": ["a", "b"]}), {}, [], "['output_names'] is ignored"),
    (dict(onnx_export_kwargs={"training": None}), {}, [], "['training'] is ignored"),
    (dict(onnx_export_kwargs={"dynamic_axes": {"input": {0: "b"}, "output": [0]}}, batch_size=4),
     dict(dynamic_batch=True), ["batch_size"], None),
    (dict(onnx_export_kwargs={"dynamic_axes": {"input": {0: "b", 2: "h", 3: "w"}}}), dict(dynamic_batch=True), [],
     "makes only the batch axis dynamic"),
    (dict(input_image_channels=3), {}, ["input_image_channels"], None),
    (dict(input_image_dtype=torch.uint8), {}, ["input_image_dtype"], None),
    (dict(input_image_dtype="uint8"), {}, [], None),
    (dict(input_image_dtype=np.uint8), {}, [], None),
    (dict(input_image_dtype=torch.float32), {}, [],
     "input_image_dtype=float32 is not available: the model's input is uint8"),
    (dict(input_image_dtype=torch.float32, preprocessing=False), {}, [], None),
    (dict(input_image_dtype=torch.float16, preprocessing=False), {}, [], "input is float32, the normalised"),
    (dict(calibration_method="max"), dict(calibration_method="minmax"), [], None),
    (dict(calibration_method="mse"), dict(calibration_method="entropy"), [], "'mse' is not available"),
    (dict(quantization_mode="int8", calibration_loader=_DATA, calibration_batches=1), dict(calibration_count=3),
     ["calibration_batches"], None),
    (dict(quantization_mode="int8", calibration_batches=3), {}, [], "without one builder calibrates on "
                                                                       "calibration_count=64 images"),
    (dict(calibration_batches=16), {}, [], "calibration_batches is ignored: only INT8 is calibrated"),
    (dict(quantization_mode=ExportQuantizationMode.FP16, calibration_loader=_DATA), dict(precision="fp16"),
     ["calibration_loader"], "this export is FP16"),
    (dict(quantization_mode="int8", calibration_method="percentile", calibration_percentile=99.999), {}, [], None),
    (dict(quantization_mode="int8", calibration_method="percentile", calibration_percentile=99.99), {}, [],
     "calibration_percentile=99.99 is not available"),
    (dict(quantization_mode="int8", calibration_percentile=99.99), {}, [], "calibration_percentile is ignored"),
    (dict(selective_quantizer=object()), {}, ["selective_quantizer"], "selective_quantizer is ignored"),
    (dict(postprocessing_kwargs={}), {}, ["postprocessing_kwargs"], None),
    (dict(postprocessing_kwargs={"num_pre_nms_predictions": 10}), {}, [], "['num_pre_nms_predictions'] are ignored"),
    (dict(postprocessing=False, output_predictions_format=DetectionOutputFormatMode.FLAT_FORMAT), {},
     ["output_predictions_format"], "output_predictions_format='flat' is ignored"),
    (dict(postprocessing=False, engine="TensorRT"), {}, ["engine"], "engine='TensorRT' is ignored"),
    (dict(postprocessing=False, output_predictions_format="batch", engine="onnxruntime"),
     dict(output_predictions_format="batch", engine="onnxruntime"), [], None),
]


@pytest.mark.parametrize("given, expected, gone, warned", OPTIONS)
def test_each_sg_keyword_is_honoured_or_warned_about_once(given, expected, gone, warned):
    options, notes = supergradients_options(dict(given), combinations=True)
    assert {k: options.get(k) for k in expected} == expected
    assert not set(gone) & set(options)
    assert all(type(v) is str for v in options.values() if isinstance(v, str))  # enum members became plain values
    assert len(notes) == (warned is not None) and all(warned in n and "\n" not in n for n in notes), notes


def test_calibration_batches_cut_the_loader_to_that_many_batches():
    options, _ = supergradients_options(dict(quantization_mode="int8", calibration_loader=_DATA,
                                             calibration_batches=1), combinations=True)
    assert isinstance(options["calibration_loader"], FirstBatches)
    assert [len(b[0]) for b in options["calibration_loader"]] == [3]


@pytest.mark.parametrize("given, message", [
    (dict(input_image_channels=1), "invalid input_image_channels 1: the models take 3-channel (RGB) images"),
    (dict(input_image_dtype="nonsense"), "invalid input_image_dtype 'nonsense'"),
    (dict(device="gpu"), "invalid device 'gpu': expected 'cpu' or 'cuda'"),
    (dict(device="meta"), "invalid device 'meta': builder exports on 'cpu'"),
    (dict(onnx_export_kwargs=["opset_version"]), "invalid onnx_export_kwargs: expected a dict, got list"),
    (dict(onnx_export_kwargs={"opset_version": "17"}), "invalid onnx_export_kwargs['opset_version'] '17'"),
    (dict(onnx_export_kwargs={"opset_version": 19}, onnx_opset=20), "contradict each other"),
    (dict(onnx_export_kwargs={"dynamic_axes": [0]}), "invalid onnx_export_kwargs['dynamic_axes']"),
    (dict(calibration_batches=0, quantization_mode="int8"), "invalid calibration_batches 0"),
    (dict(calibration_percentile=101), "invalid calibration_percentile 101"),
    (dict(postprocessing_kwargs=[1]), "invalid postprocessing_kwargs: expected a dict, got list"),
    (dict(quantization_mode="int4"), "invalid quantization_mode 'int4'"),
    (dict(quantization_mode="fp16", precision="int8"), "contradict each other"),
    (dict(postprocessing=False, engine="openvino"), "openvino"),
    (dict(postprocessing=False, engine=ExportTargetBackend.TENSORRT, quantization_mode="int8"),
     "INT8 with postprocessing=False and engine='tensorrt'"),
    (dict(nonsense=1), "unknown option 'nonsense'"),
])
def test_sg_keywords_that_cannot_be_built_are_one_error_line_and_write_nothing(given, message, checkpoints,
                                                                               tmp_path, caplog):
    model = models.get(Models.YOLO_NAS_S, num_classes=80, checkpoint_path=str(checkpoints[Models.YOLO_NAS_S]))
    with caplog.at_level(logging.WARNING, logger="builder"), pytest.raises(UserError) as error:
        model.export(tmp_path / "m.onnx", input_image_shape=(64, 64), **given)
    assert message in error.value.one_line() and "\n" not in error.value.one_line()
    assert not _sg_warnings(caplog)  # no warning in front of the error
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("given, message", [
    (dict(postprocessing=False, output_predictions_format="flat"), "output_predictions_format only applies"),
    (dict(postprocessing=False, engine="tensorrt"), "without postprocessing there is none"),
])
def test_exports_by_name_keep_the_cli_strictness(given, message, tmp_path):
    """SG code exports model objects; by name (as `builder export` does) contradictions stay refused."""
    with pytest.raises(UserError, match=message):
        builder.export(Models.YOLO_NAS_S, tmp_path / "m.onnx", input_image_shape=(64, 64), **given)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="no CUDA here: device='cuda' is one error line instead (test_device_cuda_without_cuda...)")
def test_device_cuda_exports_where_cuda_exists(checkpoints, tmp_path, caplog):
    model = models.get(Models.YOLO_NAS_S, num_classes=80, checkpoint_path=str(checkpoints[Models.YOLO_NAS_S]))
    with caplog.at_level(logging.WARNING, logger="builder"):
        result = model.export(tmp_path / "m.onnx", device="cuda", quantization_mode=ExportQuantizationMode.FP16,
                              input_image_shape=(64, 64))
    assert [n for n in _sg_warnings(caplog)] == [
        "device='cuda': builder traces and quantizes on the CPU; the ONNX file is the same on any device (FP16 and "
        "INT8 need no GPU)"]
    images = _fitted(["astronaut"], (64, 64), Models.YOLO_NAS_S)
    num, *_ = ort.InferenceSession(result.output, providers=["CPUExecutionProvider"]).run(None, {"images": images})
    assert num.shape == (1, 1)


@pytest.mark.skipif(torch.cuda.is_available(),
                    reason="CUDA is here: device='cuda' exports (test_device_cuda_exports...)")
@pytest.mark.parametrize("device", ["cuda", "cuda:0", torch.device("cuda")])
def test_device_cuda_without_cuda_is_one_error_line(device, tmp_path):
    with pytest.raises(UserError) as error:
        builder.export(Models.YOLO_NAS_S, tmp_path / "m.onnx", device=device, input_image_shape=(64, 64))
    assert error.value.one_line() == (f"device={str(device)!r} was asked for, but CUDA is not available here (pass "
                                      f"device='cpu': builder's FP16 and INT8 exports need no GPU)")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("variant", [Models.YOLO_NAS_S, Models.PP_YOLOE_S])
def test_opset_version_17_gives_opset_18_with_one_warning(variant, tmp_path, caplog):
    """torch's dynamo exporter writes opset 18 or later: 17 (SG's own examples ask for it) is one warning and a
    file that says 18, never a silent mismatch or a crash."""
    with caplog.at_level(logging.WARNING, logger="builder"):
        result = builder.export(variant, tmp_path / "m.onnx", input_image_shape=(64, 64),
                                onnx_export_kwargs={"opset_version": 17})
    assert onnx.load(result.output).opset_import[0].version == 18
    assert [n for n in _sg_warnings(caplog) if "opset_version" in n] == [
        "onnx_export_kwargs['opset_version'] 17 is not available: builder exports opset 18 (it exports opsets 18 to 21)"]


def test_int8_with_a_fixed_batch_of_2_exports(tmp_path):
    result = builder.export(Models.YOLO_NAS_S, tmp_path / "m.onnx", input_image_shape=(64, 64), batch_size=2,
                            quantization_mode=ExportQuantizationMode.INT8, calibration_count=2)
    assert result.batch_size == 2
