"""`builder push` and `builder pull`: a bundle as an ORAS artifact (its deterministic archive is the layer).

The artifact's config blob is the bundle's manifest.json; annotations say what the bundle is. Blobs go up
first and the tag last, so a push that fails midway leaves the tag as it was; the same bundle always
makes the same bytes, hence the same digest. Pull checks every digest and every file against
manifest.json, refuses archive entries that would land outside the destination, and moves the bundle
into place only when all of that has passed.
"""
from __future__ import annotations

import hashlib
import json
import pathlib
import tempfile
from dataclasses import dataclass

from builder.core.errors import UserError
from builder.core.log import notice

ARTIFACT_TYPE = "application/vnd.builder.bundle.v1"
CONFIG_MEDIA_TYPE = "application/vnd.builder.bundle.manifest.v1+json"
LAYER_MEDIA_TYPE = "application/vnd.builder.bundle.layer.v1.tar+gzip"
ANNOTATION_PREFIX = "dev.builder."
MAX_BUNDLE_BYTES = 16 << 30  # what a pull will unpack at most


@dataclass(frozen=True)
class Transfer:
    reference: str
    digest: str
    bundle: pathlib.Path
    size: int

    def __str__(self) -> str:
        return f"{self.reference}@{self.digest}"


def annotations_of(manifest, manifest_sha256: str) -> dict[str, str]:
    """OCI annotations from a (validated) BundleManifest: what a registry UI shows without pulling."""
    from builder.core.version import __version__

    return {
        "org.opencontainers.image.title": manifest.name,
        "org.opencontainers.image.version": str(manifest.version),
        f"{ANNOTATION_PREFIX}model": manifest.model.variant,
        f"{ANNOTATION_PREFIX}version": str(manifest.version),
        f"{ANNOTATION_PREFIX}target": manifest.target,
        f"{ANNOTATION_PREFIX}precision": manifest.precision,
        f"{ANNOTATION_PREFIX}output-format": manifest.postprocessing.output_format,
        f"{ANNOTATION_PREFIX}builder-version": manifest.versions.get("builder", __version__),
        f"{ANNOTATION_PREFIX}manifest-sha256": manifest_sha256,
    }


def push(bundle: str | pathlib.Path, reference: str, insecure: bool = False) -> Transfer:
    from builder.core.archive import write_archive
    from builder.core.manifest import MANIFEST, check_files
    from builder.oci.client import MANIFEST_MEDIA_TYPE, RegistryClient
    from builder.oci.reference import parse_reference

    ref = parse_reference(reference, need_tag=True)
    folder = pathlib.Path(bundle)
    if not folder.is_dir():
        raise UserError(f"bundle '{folder}' is not a folder")
    manifest = check_files(folder)  # never publish a bundle that differs from its own manifest
    client = RegistryClient(ref, insecure)
    with tempfile.TemporaryDirectory(prefix="builder-push-") as tmp:
        name = manifest.name
        layer_path = pathlib.Path(tmp) / f"{name}.tar.gz"
        write_archive(folder, layer_path, root=name)  # the root is the bundle's name, not the folder's
        manifest_path = folder / MANIFEST
        config = client.upload_blob(manifest_path, CONFIG_MEDIA_TYPE)
        notice(f"uploading {layer_path.stat().st_size:,} bytes to {ref.registry} ...")
        layer = client.upload_blob(layer_path, LAYER_MEDIA_TYPE,
                                   {"org.opencontainers.image.title": layer_path.name})
        oci_manifest = {
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "artifactType": ARTIFACT_TYPE,
            "config": config,
            "layers": [layer],
            "annotations": annotations_of(manifest, config["digest"].removeprefix("sha256:")),
        }
        digest = client.put_manifest(oci_manifest, ref.tag)
        size = layer["size"]
    notice(f"pushed {ref.name}@{digest}")
    return Transfer(ref.name, digest, folder.resolve(), size)


def pull(reference: str, destination: str | pathlib.Path, insecure: bool = False, force: bool = False) -> Transfer:
    from builder.core.archive import extract_archive
    from builder.core.files import check_folder_destination, parents_made, staged_folder
    from builder.core.manifest import check_files, parse_manifest
    from builder.oci.client import RegistryClient
    from builder.oci.reference import parse_reference

    ref = parse_reference(reference)
    destination = check_folder_destination(pathlib.Path(destination), force)
    client = RegistryClient(ref, insecure)
    oci_manifest, digest = client.get_manifest()
    config = oci_manifest.get("config") or {}
    layers = oci_manifest.get("layers") or []
    if oci_manifest.get("artifactType") != ARTIFACT_TYPE and config.get("mediaType") != CONFIG_MEDIA_TYPE:
        raise UserError(f"'{ref.name}' is not a builder bundle (artifact type "
                        f"{oci_manifest.get('artifactType') or config.get('mediaType')!r})")
    bundle_layers = [layer for layer in layers if isinstance(layer, dict) and layer.get("mediaType") == LAYER_MEDIA_TYPE]
    if len(bundle_layers) != 1:
        raise UserError(f"'{ref.name}' has {len(bundle_layers)} bundle layers; expected one")
    with parents_made(destination), tempfile.TemporaryDirectory(prefix="builder-pull-",
                                                                dir=destination.absolute().parent) as tmp:
        config_path, layer_path = pathlib.Path(tmp) / "manifest.json", pathlib.Path(tmp) / "bundle.tar.gz"
        client.fetch_blob(config, config_path, max_size=64 << 20)
        notice(f"downloading {bundle_layers[0].get('size', 0):,} bytes from {ref.registry} ...")
        client.fetch_blob(bundle_layers[0], layer_path, max_size=MAX_BUNDLE_BYTES)
        expected = (oci_manifest.get("annotations") or {}).get(f"{ANNOTATION_PREFIX}manifest-sha256")
        if expected and hashlib.sha256(config_path.read_bytes()).hexdigest() != expected:
            raise UserError(f"'{ref.name}': the bundle manifest does not match the annotated sha256")
        with staged_folder(destination, force) as staging:
            extract_archive(layer_path, staging, MAX_BUNDLE_BYTES)
            manifest = check_files(staging)
            try:
                announced = parse_manifest(json.loads(config_path.read_bytes()), f"{ref.name} (artifact config)")
            except ValueError:
                raise UserError(f"'{ref.name}': the artifact's config is not JSON") from None
            if announced != manifest:
                raise UserError(f"'{ref.name}': the bundle's manifest.json differs from the artifact's config")
    notice(f"pulled {ref.name}@{digest} into {destination}")
    return Transfer(ref.name, digest, destination.resolve(), bundle_layers[0]["size"])
