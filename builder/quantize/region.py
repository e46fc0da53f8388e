"""Which nodes of an exported graph are "the network": what quantization may touch.

The network is every node upstream of the last convolutions (the prediction layers), less the
preprocessing in front of the first convolution. Decoding, top-k and NMS are downstream of the last
convolutions and stay float32.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import onnx

CONV_OPS = ("Conv", "ConvTranspose")


@dataclass(frozen=True)
class Region:
    nodes: frozenset[str]  # names of the network's nodes
    prediction_convs: tuple[str, ...]  # the last convolutions (class and box prediction layers)


def name_nodes(model: onnx.ModelProto) -> None:
    """Give every node a unique name: quantization tools select nodes by name."""
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}"
        seen.add(node.name)


def network_region(model: onnx.ModelProto) -> Region:
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)

    def reaches_conv(node: onnx.NodeProto) -> bool:
        stack, seen = list(node.output), set()
        while stack:
            for nxt in consumers.get(stack.pop(), []):
                if nxt.name in seen:
                    continue
                seen.add(nxt.name)
                if nxt.op_type in CONV_OPS:
                    return True
                stack.extend(nxt.output)
        return False

    convs = [n for n in graph.node if n.op_type in CONV_OPS]
    if not convs:
        raise RuntimeError("the exported graph has no convolutions")
    last = [n for n in convs if not reaches_conv(n)]

    def ancestors(starts: list[onnx.NodeProto]) -> set[str]:
        found, stack = set(), list(starts)
        while stack:
            node = stack.pop()
            if node.name in found:
                continue
            found.add(node.name)
            stack.extend(producer[i] for i in node.input if i in producer)
        return found

    first = convs[0]
    preprocessing = ancestors([producer[first.input[0]]]) if first.input[0] in producer else set()
    return Region(frozenset(ancestors(last) - preprocessing), tuple(n.name for n in last))


def class_prediction_convs(model: onnx.ModelProto, region: Region, num_classes: int) -> list[str]:
    """The prediction convolutions that emit class logits (one output channel per class)."""
    weights = {i.name: i for i in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}
    found = [name for name in region.prediction_convs
             if nodes[name].input[1] in weights and weights[nodes[name].input[1]].dims[0] == num_classes]
    if not found:
        raise RuntimeError(f"no prediction convolution with {num_classes} output channels")
    return found
