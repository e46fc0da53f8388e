"""Bundles: a Triton model repository or a standalone ONNX Runtime package, rendered from templates."""
