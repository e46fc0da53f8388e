"""Building the ONNX graph: the traced network, the NMS flavours appended to it, the output formats."""
