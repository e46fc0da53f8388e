"""Inference engines builder builds in the export stage: TensorRT plans."""
