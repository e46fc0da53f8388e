"""manifest.json: what a bundle holds (every file's sha256 and size), what the model is, and what built it."""
from __future__ import annotations

import json
import pathlib
import platform

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1


def toolchain_versions() -> dict[str, str]:
    """Versions of what built and verified the bundle (the same environment gives the same manifest)."""
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for name in ("builder", "torch", "onnx", "onnxruntime", "numpy", "pillow", "tritonclient"):
        distribution = "model-bundle-builder" if name == "builder" else name
        try:
            versions[name] = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            continue
    return versions


def file_entries(folder: pathlib.Path) -> list[dict]:
    from builder.models.download import sha256_of

    return [{"path": p.relative_to(folder).as_posix(), "sha256": sha256_of(p), "size": p.stat().st_size}
            for p in sorted(folder.rglob("*"), key=lambda p: p.relative_to(folder).as_posix())
            if p.is_file() and p.name != MANIFEST]


def write_manifest(folder: pathlib.Path, description: dict) -> dict:
    """manifest.json in `folder`: `description` plus the files, written last so that it covers them all."""
    from builder.files import atomic_file

    manifest = {"manifest_format": MANIFEST_FORMAT, **description, "files": file_entries(folder)}
    with atomic_file(folder / MANIFEST) as f:
        f.write((json.dumps(manifest, indent=2, sort_keys=False) + "\n").encode("utf-8"))
    return manifest
