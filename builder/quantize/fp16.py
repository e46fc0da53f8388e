"""FP16: the network's nodes compute in float16; the uint8 input, decoding and NMS stay as they were."""
from __future__ import annotations

import collections

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from builder.quantize.region import Region

#: inputs that the ONNX spec types as float32 regardless of the data's type
FLOAT32_PARAMETERS = {"Resize": (1, 2), "Upsample": (1,)}


def convert_fp16(model: onnx.ModelProto, region: Region) -> onnx.ModelProto:
    """Float32 tensors inside the region become float16, with a Cast at every edge that crosses it.

    Needs no GPU: it rewrites the graph. Initializers only the region reads are stored in float16 (half the
    file size); a Cast in, one Cast out per tensor that leaves the region.
    """
    model = onnx.shape_inference.infer_shapes(model)
    graph = model.graph
    float_values = {v.name for v in list(graph.value_info) + list(graph.input) + list(graph.output)
                    if v.type.tensor_type.elem_type == TensorProto.FLOAT}
    initializers = {i.name: i for i in graph.initializer}
    inside = [n for n in graph.node if n.name in region.nodes]
    readers: dict[str, list[onnx.NodeProto]] = collections.defaultdict(list)
    for node in graph.node:
        for name in node.input:
            readers[name].append(node)
    produced_inside = {out for n in inside for out in n.output}

    new_initializers, casts_in = [], {}
    for node in inside:
        _retype_node(node)
        for index, name in enumerate(node.input):
            if index in FLOAT32_PARAMETERS.get(node.op_type, ()):
                continue  # e.g. Resize's scales are float32 whatever the data type
            if name in initializers and initializers[name].data_type == TensorProto.FLOAT:
                half = f"{name}/fp16"
                if half not in casts_in:
                    array = numpy_helper.to_array(initializers[name]).astype(np.float16)
                    new_initializers.append(numpy_helper.from_array(array, half))
                    casts_in[half] = None
                node.input[index] = half
            elif name in float_values and name not in produced_inside:
                half = f"{name}/fp16"
                casts_in.setdefault(half, onnx.helper.make_node("Cast", [name], [half], name=f"{name}/to_fp16",
                                                                to=TensorProto.FLOAT16))
                node.input[index] = half

    casts_out = []
    outputs = {o.name for o in graph.output}
    for node in inside:
        for index, name in enumerate(node.output):
            outside = [r for r in readers[name] if r.name not in region.nodes]
            if name not in float_values or not (outside or name in outputs):
                continue
            half = f"{name}/fp16"
            node.output[index] = half
            for reader in readers[name]:
                if reader.name in region.nodes:
                    reader.input[:] = [half if i == name else i for i in reader.input]
            casts_out.append(onnx.helper.make_node("Cast", [half], [name], name=f"{name}/to_fp32", to=TensorProto.FLOAT))

    # unused float32 initializers (now read as float16) are dropped
    still_read = {i for n in graph.node for i in n.input}
    kept = [i for i in graph.initializer if i.name in still_read or i.name not in initializers]
    del graph.initializer[:]
    graph.initializer.extend(kept + new_initializers)
    nodes = [c for c in casts_in.values() if c is not None] + list(graph.node) + casts_out
    del graph.node[:]
    graph.node.extend(_toposort(nodes, {i.name for i in graph.input} | {i.name for i in graph.initializer}))
    del graph.value_info[:]
    return onnx.shape_inference.infer_shapes(model)


def _retype_node(node: onnx.NodeProto) -> None:
    """Attributes that name float32 (a Cast inside the region, a Constant) now name float16."""
    for attr in node.attribute:
        if node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT:
            attr.i = TensorProto.FLOAT16
        elif attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == TensorProto.FLOAT:
            attr.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attr.t).astype(np.float16), attr.t.name))


def _toposort(nodes: list[onnx.NodeProto], available: set[str]) -> list[onnx.NodeProto]:
    ready = set(available) | {""}
    pending, ordered = list(nodes), []
    while pending:
        progressed = []
        for node in pending:
            if all(i in ready for i in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                progressed.append(node)
        if len(progressed) == len(pending):
            raise RuntimeError("cycle or missing input while converting to float16")
        pending = progressed
    return ordered
