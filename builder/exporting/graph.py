"""A small helper for appending nodes to an ONNX graph by hand, with unique names and constants."""
from __future__ import annotations

import itertools

import numpy as np
import onnx
from onnx import helper, numpy_helper


class GraphEditor:
    """Appends nodes to `model.graph`; every name it makes starts with `prefix`."""

    def __init__(self, model: onnx.ModelProto, prefix: str):
        self.model = model
        self.graph = model.graph
        self.prefix = prefix
        self._ids = itertools.count()

    def _name(self, hint: str) -> str:
        return f"{self.prefix}/{hint}_{next(self._ids)}"

    def const(self, value, dtype=None, hint: str = "const") -> str:
        array = np.asarray(value, dtype=dtype)
        name = self._name(hint)
        self.graph.initializer.append(numpy_helper.from_array(array, name))
        return name

    def op(self, op_type: str, *inputs: str, outputs: int | list[str] = 1, domain: str = "", **attrs) -> str | list[str]:
        names = outputs if isinstance(outputs, list) else [self._name(op_type.lower()) for _ in range(outputs)]
        self.graph.node.append(helper.make_node(op_type, list(inputs), names, name=self._name(op_type), domain=domain, **attrs))
        return names[0] if len(names) == 1 else names

    def set_outputs(self, outputs: list[tuple[str, int, list]]) -> None:
        """Replace the graph outputs by (name, elem_type, shape) where shape entries are ints or symbol names."""
        del self.graph.output[:]
        for name, elem_type, shape in outputs:
            self.graph.output.append(helper.make_tensor_value_info(name, elem_type, shape))

