"""`builder push` and `builder pull`: a bundle as an ORAS artifact (its deterministic archive is the layer).

The artifact's config blob is the bundle's manifest.json; annotations say what the bundle is. Blobs go up
first and the tag last, so a push that fails midway leaves the tag as it was; the same bundle always
makes the same bytes, hence the same digest. Pull validates the OCI manifest as it arrives, fetches the
bundle's manifest.json first and lets the layer be no larger, and unpack to no more, than the files it
declares; it checks every digest and every file against manifest.json, refuses archive entries that would
land outside the destination, and moves the bundle into place only when all of that has passed.
"""
from __future__ import annotations

import hashlib
import json
import pathlib
import tempfile
from dataclasses import dataclass
from typing import Optional

from builder.core.errors import UserError
from builder.core.log import notice

ARTIFACT_TYPE = "application/vnd.builder.bundle.v1"
CONFIG_MEDIA_TYPE = "application/vnd.builder.bundle.manifest.v1+json"
LAYER_MEDIA_TYPE = "application/vnd.builder.bundle.layer.v1.tar+gzip"
ANNOTATION_PREFIX = "dev.builder."
MAX_BUNDLE_BYTES = 16 << 30  # what a pull will unpack at most
MAX_CONFIG_BYTES = 64 << 20  # a bundle's manifest.json (the artifact's config)


@dataclass(frozen=True)
class Transfer:
    #: registry/repository[:tag], without the digest: str() adds the one that was transferred
    reference: str
    digest: str
    bundle: pathlib.Path
    size: int
    #: the size of the OCI manifest (what an index entry of the bundle states with its digest)
    manifest_size: int = 0

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


def push(bundle: str | pathlib.Path, reference: str, insecure: bool = False,
         annotations: Optional[dict[str, str]] = None) -> Transfer:
    """Push the bundle folder as `reference`; `annotations` are added to those its manifest gives (a release adds
    its build key and accuracy summary)."""
    from builder.core.manifest import check_against_spec, check_files
    from builder.oci.client import RegistryClient
    from builder.oci.reference import parse_reference
    from builder.targets.spec import BundleSpec, read_spec_file

    ref = parse_reference(reference, need_tag=True)
    folder = pathlib.Path(bundle)
    if not folder.is_dir():
        raise UserError(f"bundle '{folder}' is not a folder")
    client = RegistryClient(ref, insecure)
    try:
        manifest = check_files(folder)  # never publish a bundle that differs from its own manifest
        # nor one whose manifest.json (which its annotations repeat) says it is something its build.yaml does not
        check_against_spec(manifest, BundleSpec.create(read_spec_file(folder / "build.yaml")), folder)
        _refuse_empty_folders(folder, manifest)
        digest, size, manifest_size = _push_archive(client, ref, folder, manifest, annotations or {})
    except OSError as e:  # the network's failures are UserErrors already: this is a file of the bundle (or TMPDIR)
        where = f"'{e.filename}': " if e.filename else ""
        raise UserError(f"cannot push '{folder}': {where}{e.strerror or e}") from None
    notice(f"pushed {ref.pinned(digest)}")
    return Transfer(ref.tagged, digest, folder.resolve(), size, manifest_size)


def _push_archive(client, ref, folder: pathlib.Path, manifest, extra: dict[str, str]) -> tuple[str, int, int]:
    """Upload the config and the archive, then the tag: the manifest digest, the layer's size and the manifest's."""
    from builder.core.archive import write_archive
    from builder.core.manifest import MANIFEST
    from builder.oci.client import MANIFEST_MEDIA_TYPE, manifest_bytes

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
            "annotations": {**extra, **annotations_of(manifest, config["digest"].removeprefix("sha256:"))},
        }
        return client.put_manifest(oci_manifest, ref.tag), layer["size"], len(manifest_bytes(oci_manifest))


def pull(reference: str, destination: str | pathlib.Path, insecure: bool = False, force: bool = False,
         select: Optional[dict[str, str]] = None) -> Transfer:
    """Pull a bundle into `destination`; from a release's index, the one bundle whose annotations match `select`
    (and which is what they say)."""
    from builder.core.files import check_folder_destination, parents_made, scratch_folder
    from builder.oci.client import RegistryClient
    from builder.oci.reference import parse_reference

    ref = parse_reference(reference)
    destination = check_folder_destination(pathlib.Path(destination), force)
    client = RegistryClient(ref, insecure)
    indexed = None
    if select is not None:
        from builder.oci.index import select_bundle

        digest, indexed = select_bundle(client, select)
        ref = parse_reference(f"{ref.registry}/{ref.repository}@{digest}")
        client = RegistryClient(ref, insecure)
    try:
        # the download folder beside the destination comes first: an unwritable destination fails before the network;
        # it is builder's scratch, so what a killed pull leaves there the next pull or build of `destination` sweeps
        with parents_made(destination), scratch_folder(destination, "pull") as tmp:
            digest, size = _pull_into(client, ref, destination, tmp, force, indexed)
    except OSError as e:  # the network's failures are UserErrors already: this is the destination's filesystem
        raise UserError(f"cannot write '{destination}': {e.strerror or e}") from None
    notice(f"pulled {ref.pinned(digest)} into {destination}")
    return Transfer(ref.tagged, digest, destination.resolve(), size)


def _pull_into(client, ref, destination: pathlib.Path, tmp: pathlib.Path, force: bool,
               indexed: Optional[list[dict[str, str]]]) -> tuple[str, int]:
    """Download (the bundle's manifest first, then the layer it bounds), check, unpack and move into place;
    `indexed`: what the entries of a release's index that named the bundle say of it."""
    from builder.core.archive import extract_archive, unpacked_bound
    from builder.core.files import staged_folder
    from builder.core.manifest import MANIFEST, check_files, parse_manifest

    oci_manifest, digest = client.get_manifest()  # validated: every field used below has its type
    config = oci_manifest.config
    if oci_manifest.artifactType != ARTIFACT_TYPE and config.mediaType != CONFIG_MEDIA_TYPE:
        raise UserError(f"'{ref.name}' is not a builder bundle (artifact type "
                        f"{oci_manifest.artifactType or config.mediaType!r})")
    bundle_layers = [layer for layer in oci_manifest.layers if layer.mediaType == LAYER_MEDIA_TYPE]
    if len(bundle_layers) != 1:
        raise UserError(f"'{ref.name}' has {len(bundle_layers)} bundle layers; expected one")
    [layer] = bundle_layers
    config_path, layer_path = tmp / MANIFEST, tmp / "bundle.tar.gz"
    client.fetch_blob(config, config_path, max_size=MAX_CONFIG_BYTES)
    expected = (oci_manifest.annotations or {}).get(f"{ANNOTATION_PREFIX}manifest-sha256")
    config_bytes = config_path.read_bytes()
    if expected and hashlib.sha256(config_bytes).hexdigest() != expected:
        raise UserError(f"'{ref.name}': the bundle manifest does not match the annotated sha256")
    try:
        announced = parse_manifest(json.loads(config_bytes), f"{ref.name} (artifact config)")
    except (ValueError, RecursionError):
        raise UserError(f"'{ref.name}': the artifact's config is not JSON") from None
    if indexed is not None:
        _check_indexed(ref, announced, oci_manifest.annotations or {}, indexed)
    # what the bundle declares bounds what the layer may be and unpack to, before a byte of it is fetched
    allowed = {entry.path: entry.size for entry in announced.files}
    allowed[MANIFEST] = config.size
    unpacked = sum(allowed.values())
    if unpacked > MAX_BUNDLE_BYTES:
        raise UserError(f"'{ref.name}' declares {unpacked:,} bytes of files; a pull unpacks at most "
                        f"{MAX_BUNDLE_BYTES:,}")
    stream = unpacked_bound(allowed)
    # gzip never grows data by more than ~0.03% plus a few bytes (zlib's deflateBound): 1% + 1 MiB is ample
    most = stream + stream // 100 + (1 << 20)
    if layer.size > most:
        raise UserError(f"'{ref.name}': its layer is {layer.size:,} bytes, more than the {unpacked:,} bytes of files "
                        "its manifest declares can take")
    notice(f"downloading {layer.size:,} bytes from {ref.registry} ...")
    client.fetch_blob(layer, layer_path, max_size=most)
    with staged_folder(destination, force) as staging:
        extract_archive(layer_path, staging, allowed)
        manifest = check_files(staging)
        if announced != manifest:
            raise UserError(f"'{ref.name}': the bundle's manifest.json differs from the artifact's config")
    return digest, layer.size


def _check_indexed(ref, manifest, annotations: dict[str, str], indexed: list[dict[str, str]]) -> None:
    """A bundle picked by its index entry must be what the entry says: every selectable annotation of the entries
    that named it against what the bundle says of itself, in its manifest.json and in its OCI manifest's
    annotations (where a release puts the build key). A mislabelled index would otherwise deliver another model."""
    from builder.core.manifest import identity
    from builder.oci.client import _shown
    from builder.oci.index import SELECTABLE

    annotated = {key: annotations[f"{ANNOTATION_PREFIX}{key}"] for key in SELECTABLE
                 if f"{ANNOTATION_PREFIX}{key}" in annotations}
    if "org.opencontainers.image.title" in annotations:
        annotated["name"] = annotations["org.opencontainers.image.title"]
    said = {"manifest.json": identity(manifest), "OCI manifest": annotated}
    for entry in indexed:
        for key in SELECTABLE:
            for where, says in said.items():
                if key in entry and key in says and says[key] != entry[key]:
                    raise UserError(f"'{ref.name}' is not the bundle the release index says: the index says "
                                    f"{key}={_shown(entry[key], 80)}, its {where} says {key}={_shown(says[key], 80)}",
                                    hint="nothing was pulled: the index is wrong")


def _refuse_empty_folders(folder: pathlib.Path, manifest) -> None:
    """A pull accepts only the folders above the files a manifest lists, so a push publishes no other."""
    from builder.core.archive import folders_of

    needed = folders_of(entry.path for entry in manifest.files)
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).as_posix()
        if path.is_dir() and relative not in needed:
            raise UserError(f"bundle '{folder}' holds the folder '{relative}', which holds none of its files",
                            hint="remove it")
