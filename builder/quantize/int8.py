"""INT8: explicit, symmetric QDQ (per-channel weights, per-tensor activations), calibrated on images.

Symmetric int8 with zero points of 0 is what TensorRT 10/11 accept for explicit quantization; ONNX
Runtime runs the same file with its u8s8 kernels once it has turned each Q/DQ pair into uint8 (see
`dedicate_qdq_pairs`).
"""
from __future__ import annotations

import collections
import contextlib
import io
import logging
import os
import tempfile

import numpy as np
import onnx
from onnx import numpy_helper

from builder.errors import UserError
from builder.quantize.region import Region

METHODS = ("minmax", "entropy", "percentile")
CALIBRATION_STRIDE = 8


def quantize_int8(model: onnx.ModelProto, region: Region, batches: list[np.ndarray], method: str,
                  keep_prediction_convs_float: bool, progress: bool = True) -> onnx.ModelProto:
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
    from tqdm import tqdm

    class Reader(CalibrationDataReader):
        """Feeds the images; onnxruntime asks for them in strides (`set_range`) to bound its memory."""

        def __init__(self):
            self.bar = tqdm(total=len(batches), desc="calibrating", unit="image", disable=not progress)
            self.items = iter(batches)

        def __len__(self):
            return len(batches)

        def set_range(self, start_index: int, end_index: int) -> None:
            self.items = iter(batches[start_index:end_index])

        def get_next(self):
            batch = next(self.items, None)
            if batch is None:
                return None
            self.bar.update(1)
            if self.bar.n == len(batches):
                self.bar.close()
            return {"images": batch}

    calibration = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                   "percentile": CalibrationMethod.Percentile}[method]
    keep = set(region.prediction_convs) if keep_prediction_convs_float else set()
    exclude = [n.name for n in model.graph.node if n.name not in region.nodes or n.name in keep]
    root = logging.getLogger()
    level = root.level
    # onnxruntime's calibrators print their progress on stdout and warn on the root logger: keep our
    # stdout for results and show our own progress bar instead
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
        root.setLevel(logging.ERROR)
        try:
            source, target = os.path.join(tmp, "fp32.onnx"), os.path.join(tmp, "int8.onnx")
            onnx.save(model, source)
            quantize_static(source, target, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                            calibrate_method=calibration, nodes_to_exclude=exclude,
                            # biases stay float: TensorRT has no int32 DequantizeLinear, and onnxruntime
                            # quantizes a float bias itself when it fuses the convolution
                            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                                           "QuantizeBias": False, "CalibPercentile": 99.999,
                                           "CalibTensorRangeSymmetric": True,
                                           "CalibStridedMinMax": calibration_stride(len(batches))})
            quantized = onnx.load(target)
        except ValueError as e:
            if "bins" not in str(e):
                raise
            # onnxruntime's histogram calibrators cannot bin a tensor that never changes
            raise UserError(f"{method} calibration failed: a tensor is constant over all calibration images "
                            f"(are the weights random?)", hint="use --calibration-method minmax") from None
        finally:
            root.setLevel(level)
    dedicate_qdq_pairs(quantized)
    return quantized


def calibration_stride(count: int, most: int = CALIBRATION_STRIDE) -> int:
    """Images per calibration pass: the largest divisor of `count` up to `most` (onnxruntime needs a divisor).

    Without strides onnxruntime keeps every calibrated tensor of every image in memory at once (about
    0.4 GB per 640 px image for the histogram methods): 64 images did not fit in 24 GB.
    """
    return max(d for d in range(1, min(count, most) + 1) if count % d == 0)


def dedicate_qdq_pairs(model: onnx.ModelProto) -> None:
    """Give every consumer of a shared DequantizeLinear its own QuantizeLinear/DequantizeLinear pair.

    ONNX Runtime's x86 kernels are u8s8: it rewrites a symmetric int8 Q->DQ pair to uint8 (zero point 128)
    only when the Q feeds exactly one DQ feeding one node, and its common-subexpression pass merges
    identical pairs again. Each copy therefore gets its own scale tensor, one float ulp away from the
    original (a relative change of 6e-8), which keeps them apart. Without this, convolutions that share an
    input (CSP branches, skips) run in float and INT8 is no faster than FP32 on a CPU.
    """
    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = collections.defaultdict(list)
    for node in graph.node:
        for index, name in enumerate(node.input):
            consumers[name].append((node, index))
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        nodes.append(node)
        uses = consumers[node.output[0]] if node.op_type == "DequantizeLinear" else []
        quantize = producer.get(node.input[0])
        if len(uses) < 2 or quantize is None or quantize.op_type != "QuantizeLinear":
            continue
        scale = numpy_helper.to_array(initializers[node.input[1]])
        for copy, (user, index) in enumerate(uses[1:], start=1):
            scale = np.nextafter(scale, np.float32(np.inf)).astype(np.float32)
            scale_name = f"{node.input[1]}/dedicated_{copy}"
            graph.initializer.append(numpy_helper.from_array(scale, scale_name))
            q_out, dq_out = f"{quantize.output[0]}/dedicated_{copy}", f"{node.output[0]}/dedicated_{copy}"
            nodes.append(onnx.helper.make_node("QuantizeLinear", [quantize.input[0], scale_name, *quantize.input[2:]],
                                               [q_out], name=f"{quantize.name}/dedicated_{copy}"))
            nodes.append(onnx.helper.make_node("DequantizeLinear", [q_out, scale_name, *node.input[2:]],
                                               [dq_out], name=f"{node.name}/dedicated_{copy}"))
            user.input[index] = dq_out
    del graph.node[:]
    graph.node.extend(nodes)
