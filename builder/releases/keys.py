"""Build keys: the sha256 of everything a bundle is made from, so that a bundle is built once.

A key covers the canonical bundle spec (every default resolved), the content of every file it names (the
weights' sha256, the calibration and report images, the labels, the template overrides), builder's version,
the stage the export runs in (the builder image's id, or the local toolchain's versions) and, for a TensorRT
engine, the GPU type it is built for. Same key, same bundle: a release finds it in the registry and skips it.
"""
from __future__ import annotations

import hashlib
import json
import pathlib
from typing import Any, Optional

from builder.core.errors import UserError

#: the packages whose versions make the local stage what it is
STAGE_PACKAGES = ("builder", "torch", "onnx", "onnxscript", "onnxsim", "onnxruntime", "numpy", "pillow", "tensorrt")


def local_stage() -> dict[str, Any]:
    from builder.core.version import toolchain_versions

    return {"runner": "local", "toolchain": toolchain_versions(STAGE_PACKAGES)}


def resolve_stages(runner: str, image: Optional[str], gpu_image: Optional[str], kinds: set[str]) -> dict[str, dict]:
    """The stage of CPU builds ("cpu") and TensorRT builds ("gpu"), as the release's runner setting resolves here.

    docker: the image's id on this host's Docker engine (every node must have the same); local: the versions of
    the toolchain installed here (every node must have the same); auto: docker where the engine has the image.
    """
    from builder.runners.docker_runner import cpu_image, default_image

    wanted = {"cpu": image or cpu_image(), "gpu": gpu_image or default_image()}
    if runner == "local":
        return {kind: local_stage() for kind in kinds}
    from builder.runners.docker_runner import engine, image_info

    try:
        client = engine()
    except UserError as e:
        if runner == "docker":
            raise
        from builder.core.log import notice

        notice(f"builds run on each node's own toolchain (runner local): {e.one_line()}")
        return {kind: local_stage() for kind in kinds}
    stages = {}
    for kind in sorted(kinds):
        found = image_info(client, wanted[kind])
        if found:
            stages[kind] = {"runner": "docker", "image": wanted[kind], "image_id": found["image_id"]}
        elif runner == "docker":
            raise UserError(f"image '{wanted[kind]}' is not on the Docker engine here: a build key names the "
                            f"image's id", hint="build or load it here (and on every node), or set runner: local")
        else:
            stages[kind] = local_stage()
    return stages


def build_key(bundle_spec, stage: dict, gpu: Optional[str]) -> str:
    """The key of one bundle: see the module's docstring."""
    from builder.core.version import __version__

    spec = bundle_spec.model_dump(mode="json")
    export = spec["export"]
    export["weights"] = _weights_digest(export["weights"], export["model"])
    for option in ("calibration_images", "report_images"):
        export[option] = _folder_digest(export[option])
    spec["labels"] = _file_digest(spec["labels"])
    spec["templates"] = _folder_digest(spec["templates"])
    canonical = {"builder": __version__, "spec": spec, "stage": stage,
                 "gpu": gpu if bundle_spec.export.serving.builds_plan else None}
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _weights_digest(weights: Optional[str], variant: str) -> Optional[str]:
    """Weights by their content: a file's, and what a URL (or 'coco', which is one) serves now, fetched through the
    cache, which asks the server whether the file changed; a changed file at the same URL is a new key. 'demo' is
    builder's own checkpoint, whose sha256 builder pins: its name stands for it."""
    if weights is None or weights == "demo":
        return weights
    if "://" in weights or weights == "coco":
        from builder.models.registry import resolve_weights

        return _file_digest(str(resolve_weights(variant, weights)))
    return _file_digest(weights)


def _file_digest(path: Optional[str]) -> Optional[str]:
    if path is None:
        return None
    from builder.core.hashing import sha256_of

    try:
        return "sha256:" + sha256_of(pathlib.Path(path))
    except OSError as e:
        raise UserError(f"cannot read '{path}': {e.strerror or e}") from None


def _folder_digest(path: Optional[str]) -> Optional[str]:
    """Every file of the folder by relative path and content: a changed, added or removed image changes it."""
    if path is None:
        return None
    from builder.core.hashing import sha256_of

    root = pathlib.Path(path)
    digest = hashlib.sha256()
    try:
        for file in sorted(p for p in root.rglob("*") if p.is_file()):
            digest.update(f"{file.relative_to(root).as_posix()}\0{sha256_of(file)}\n".encode())
    except OSError as e:
        raise UserError(f"cannot read '{path}': {e.strerror or e}") from None
    return "sha256:" + digest.hexdigest()
