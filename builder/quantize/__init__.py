"""Quantization of the exported graph: FP16 conversion and calibrated INT8 (QDQ), with an accuracy report."""
