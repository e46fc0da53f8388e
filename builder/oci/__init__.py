"""Bundles to and from OCI registries."""
