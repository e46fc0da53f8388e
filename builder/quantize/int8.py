"""INT8: explicit, symmetric QDQ (per-channel weights, per-tensor activations), calibrated on images.

Symmetric int8 with zero points of 0 is what TensorRT 10/11 accept for explicit quantization. The
ONNX Runtime flavour stores the same activations as uint8 with zero point 128 (`encode_activations_uint8`),
the encoding of its fast u8s8 kernels.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile

import numpy as np
import onnx
from onnx import numpy_helper

from builder.core.errors import UserError
from builder.quantize.region import Region

METHODS = ("minmax", "entropy", "percentile")
CALIBRATION_STRIDE = 8


def quantize_int8(model: onnx.ModelProto, region: Region, batches: list[np.ndarray], method: str,
                  keep_float: set[str], progress: bool = True) -> onnx.ModelProto:
    """The graph with Q/DQ on the network's nodes except `keep_float`, calibrated on `batches`."""
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
    exclude = [n.name for n in model.graph.node if n.name not in region.nodes or n.name in keep_float]
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
    return quantized


def calibration_stride(count: int, most: int = CALIBRATION_STRIDE) -> int:
    """Images per calibration pass: the largest divisor of `count` up to `most` (onnxruntime needs a divisor).

    Without strides onnxruntime keeps every calibrated tensor of every image in memory at once (about
    0.4 GB per 640 px image for the histogram methods): 64 images did not fit in 24 GB.
    """
    return max(d for d in range(1, min(count, most) + 1) if count % d == 0)


def encode_activations_uint8(model: onnx.ModelProto) -> None:
    """Store the activations' Q/DQ as uint8 with zero point 128: the same values, ONNX Runtime's encoding.

    ONNX Runtime's x86 kernels are u8s8. It rewrites a symmetric int8 activation to uint8 itself, but only
    where the QuantizeLinear feeds a single DequantizeLinear; every convolution whose output feeds more
    than one node (SiLU's Sigmoid and Mul, CSP branches, skips) then ran in float, and PP-YOLOE's INT8 was
    slower than FP32. uint8 = int8 + 128 with the same scales is exactly the arithmetic that rewrite does,
    applied to every pair. TensorRT accepts zero points of 0 only, so its flavour keeps the int8 encoding.
    Weights stay int8 (symmetric, per channel) in both.
    """
    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    renamed: dict[str, str] = {}
    changed: set[str] = set()
    for node in graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or node.input[0] in initializers:
            continue  # a weight's DequantizeLinear reads an initializer: weights stay int8
        zero_point = numpy_helper.to_array(initializers[node.input[2]])
        if zero_point.dtype != np.int8 or zero_point.any():
            raise RuntimeError(f"{node.name}: expected a symmetric int8 zero point, found {zero_point.dtype}")
        if node.input[2] not in renamed:
            renamed[node.input[2]] = f"{node.input[2]}/uint8"
            graph.initializer.append(numpy_helper.from_array(np.full(zero_point.shape, 128, np.uint8),
                                                             renamed[node.input[2]]))
        node.input[2] = renamed[node.input[2]]
        if node.op_type == "QuantizeLinear":
            changed.add(node.output[0])
    used = {name for node in graph.node for name in node.input}
    kept = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    for value in graph.value_info:
        if value.name in changed:
            value.type.tensor_type.elem_type = onnx.TensorProto.UINT8
