"""FP16 or INT8 applied to a traced export, with the report that says what it cost against FP32."""
from __future__ import annotations


import numpy as np
import onnx

from builder.core.log import warn
from builder.core.images import Preprocessing
from builder.exporting.spec import ExportSpec

# The last convolutions emit the class logits and the box distributions. The class-logit convolutions stay
# float: quantized, their outputs get an int8 grid (a logit range of ~30 in steps of ~0.25), which moves
# scores across the threshold (on weights trained on shape scenes, YOLO-NAS S recall against FP32 drops
# from 0.961 to 0.938 with no gain in speed; benchmarks/README.md). The box convolutions are quantized: the
# softmax over each side's distribution averages the grid away (0.02-0.2 px mean box error), and they are
# half the head's cost (PP-YOLOE S: 1.74x -> 2.0x over FP32; the same recall).
KEEP_CLASS_CONVS_FLOAT = True
#: fewer FP32 detections than this on the held-out images make the agreement numbers noise: warn
FEW_DETECTIONS = 20


def quantize_graph(graph: onnx.ModelProto, spec: ExportSpec, prep: Preprocessing, size: tuple[int, int],
                   settings: dict, loader=None) -> tuple[onnx.ModelProto, dict]:
    """The traced analysis graph (top-k and raw outputs) in the spec's precision, and its accuracy report."""
    from builder.quantize.calibration import calibration_images, held_out_images
    from builder.quantize.fp16 import convert_fp16
    from builder.quantize.int8 import encode_activations_uint8, quantize_int8
    from builder.quantize.region import class_prediction_convs, name_nodes, network_region

    name_nodes(graph)
    region = network_region(graph)
    calibration = None
    if spec.precision == "fp16":
        quantized = convert_fp16(graph, region)
    else:
        calibration = calibration_images(size, prep, spec.calibration_count, spec.calibration_images, loader)
        keep = set(class_prediction_convs(graph, region, settings["num_classes"])) if KEEP_CLASS_CONVS_FLOAT else set()
        quantized = quantize_int8(graph, region, model_inputs(graph, calibration.batches, prep, tile=True),
                                  spec.calibration_method, keep)
        if spec.serving.int8_activation_zero_point == 128:
            encode_activations_uint8(quantized)
    builtin = calibration is not None and spec.calibration_images is None and loader is None
    held_out = held_out_images(size, prep, calibrated_on_builtin=builtin, folder=spec.report_images,
                               calibration_folder=spec.calibration_images)
    held_out.batches = model_inputs(graph, held_out.batches, prep)
    report = accuracy_report(graph, quantized, held_out, spec, settings)
    found = report["detections"]["reference_detections"]
    if found < FEW_DETECTIONS:
        hint = "" if spec.report_images else ": give held-out images of the model's own domain (--report-images DIR)"
        warn(f"the accuracy report rests on {found} FP32 detection{'s' * (found != 1)} in {len(held_out.batches)} "
             f"held-out images{hint}")
    if calibration is not None:
        report["calibration"] = {"source": calibration.source, "images": len(calibration.batches),
                                 "augmented": calibration.augmented, "method": spec.calibration_method,
                                 "description": calibration.describe()}
    if spec.precision == "int8":
        report["prediction_convs"] = {"class": "float32" if KEEP_CLASS_CONVS_FLOAT else "int8", "box": "int8"}
    else:
        report["prediction_convs"] = {"class": spec.precision, "box": spec.precision}
    return quantized, report


def model_inputs(graph: onnx.ModelProto, batches: list[np.ndarray], prep: Preprocessing,
                 tile: bool = False) -> list[np.ndarray]:
    """The uint8 RGB images as the graph takes them: as they are, or normalised float32 for a graph exported
    without preprocessing (whose input is the network's own). `tile`: each image repeated to the graph's fixed
    batch size (calibration runs the graph itself; the report's runner tiles on its own)."""
    from builder.core.images import to_network_input

    if graph.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT:
        batches = [to_network_input(batch, prep) for batch in batches]
    fixed = graph.graph.input[0].type.tensor_type.shape.dim[0].dim_value  # 0 for a symbolic batch
    if tile and fixed > 1:
        batches = [np.repeat(batch, fixed, axis=0) for batch in batches]
    return batches


def accuracy_report(reference: onnx.ModelProto, quantized: onnx.ModelProto, held_out, spec: ExportSpec,
                    settings: dict) -> dict:
    from builder.exporting.graphs import RAW_OUTPUTS, keep_outputs, with_postprocessing
    from builder.quantize import report as metrics
    from builder.exporting.outputs import detections_of

    # detections always through ONNX NonMaxSuppression in batch format, whatever the deployed flavour
    runnable = spec.model_copy(update={"postprocessing": True, "output_predictions_format": "batch",
                                       "nms": "onnx", "runtime": "onnxruntime"})
    raw_ref = _run_all(keep_outputs(reference, RAW_OUTPUTS), held_out.batches)
    raw_q = _run_all(keep_outputs(quantized, RAW_OUTPUTS), held_out.batches)
    det_ref = _run_all(with_postprocessing(reference, runnable, settings), held_out.batches)
    det_q = _run_all(with_postprocessing(quantized, runnable, settings), held_out.batches)
    report = {
        "precision": spec.precision,
        "held_out": {"source": held_out.source, "images": held_out.names},
        "raw": metrics.raw_errors((np.concatenate([r[0] for r in raw_ref]), np.concatenate([r[1] for r in raw_ref])),
                                  (np.concatenate([r[0] for r in raw_q]), np.concatenate([r[1] for r in raw_q]))),
        "detections": metrics.agreement([detections_of(o, "batch") for o in det_ref],
                                        [detections_of(o, "batch") for o in det_q],
                                        held_out.names),
        "target_recall": metrics.TARGET_RECALL[spec.precision],
        "thresholds": {"confidence": settings["conf"], "iou": settings["iou"], "match_iou": metrics.MATCH_IOU},
    }
    report["meets_target"] = report["detections"]["recall"] >= report["target_recall"]
    return report


def _run_all(model: onnx.ModelProto, batches: list[np.ndarray]) -> list[list[np.ndarray]]:
    """Each image through the model on its own (tiled to a fixed batch size when the model has one)."""
    from builder.exporting.sessions import inference_session

    session = inference_session(model)
    batch = session.get_inputs()[0].shape[0]
    out = []
    for image in batches:
        feed = np.repeat(image, batch, axis=0) if isinstance(batch, int) and batch > 1 else image
        out.append([o[:1] for o in session.run(None, {"images": feed})])
    return out
