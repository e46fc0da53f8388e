"""Bundles checked against the PyTorch model they were built from, and timed."""
