"""A release in the registry: one OCI image index listing its bundles, each entry annotated with what it is.

The bundles are pushed to the release's repository tagged by build key (`build-<sha256>`), so the index only
refers to manifests the registry already holds, and a later release finds a bundle it would build again. The
index is written last: a release that did not finish leaves no index tag behind.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from builder.core.errors import UserError

RELEASE_ARTIFACT_TYPE = "application/vnd.builder.release.v1"
ANNOTATION_PREFIX = "dev.builder."
#: what `pull --select` matches on: these annotations of an index entry, without the prefix
SELECTABLE = ("model", "precision", "target", "gpu", "name", "build-key")


@dataclass(frozen=True)
class StoredBundle:
    """A bundle manifest in the registry: what an index entry needs of it."""

    digest: str
    size: int  # of the manifest
    annotations: dict[str, str] = field(default_factory=dict)
    layer_size: int = 0  # of the bundle's archive


def find_bundle(client, tag: str) -> Optional[StoredBundle]:
    """The bundle manifest tagged `tag` in the client's repository, or None where there is none."""
    from builder.oci.client import ImageManifest, parse_record
    from builder.oci.transfer import ARTIFACT_TYPE, LAYER_MEDIA_TYPE

    found = client.fetch_manifest(tag, missing_ok=True)
    if found is None:
        return None
    content, digest = found
    manifest = parse_record(ImageManifest, content, f"{client.ref.registry}/{client.ref.repository}:{tag}")
    if manifest.artifactType != ARTIFACT_TYPE:
        raise UserError(f"'{client.ref.registry}/{client.ref.repository}:{tag}' is not a builder bundle")
    layer_size = sum(layer.size for layer in manifest.layers if layer.mediaType == LAYER_MEDIA_TYPE)
    return StoredBundle(digest, len(content), dict(manifest.annotations or {}), layer_size)


def push_index(client, tag: str, entries: list[tuple[StoredBundle, dict[str, str]]],
               annotations: dict[str, str]) -> tuple[str, int]:
    """Write the release's index as `tag`: one entry per (bundle, what the release says of it)."""
    from builder.oci.client import INDEX_MEDIA_TYPE, MANIFEST_MEDIA_TYPE
    from builder.oci.transfer import ARTIFACT_TYPE

    manifests = []
    for stored, said in entries:
        manifests.append({"mediaType": MANIFEST_MEDIA_TYPE, "artifactType": ARTIFACT_TYPE, "digest": stored.digest,
                          "size": stored.size,
                          "annotations": {f"{ANNOTATION_PREFIX}{k}": v for k, v in sorted(said.items())}})
    index = {"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "artifactType": RELEASE_ARTIFACT_TYPE,
             "manifests": manifests, "annotations": annotations}
    return client.put_index(index, tag)


def read_index(client):
    """The index the client's reference names, validated, and its digest."""
    from builder.oci.client import INDEX_MEDIA_TYPE, ImageIndex, _media_type, parse_record

    content, digest = client.fetch_manifest()
    if _media_type(content) != INDEX_MEDIA_TYPE:
        raise UserError(f"'{client.ref.name}' is not a release index; --select picks a bundle from one",
                        hint="drop --select to pull a single bundle")
    index = parse_record(ImageIndex, content, client.ref.name)
    if index.artifactType != RELEASE_ARTIFACT_TYPE:
        raise UserError(f"'{client.ref.name}' is an image index but not a builder release "
                        f"(artifact type {index.artifactType!r})")
    return index, digest


def parse_selection(text: str) -> dict[str, str]:
    """'model=yolo_nas_s,precision=int8,gpu=T4' -> {"model": ..., ...}; a bad one is one line."""
    selection: dict[str, str] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise UserError(f"invalid selection '{text}'", hint="KEY=VALUE[,KEY=VALUE...], e.g. model=yolo_nas_s,precision=int8")
        if key not in SELECTABLE:
            raise UserError(f"cannot select on '{key}'", hint=f"one of {', '.join(SELECTABLE)}")
        if key in selection:
            raise UserError(f"'{key}' is selected twice in '{text}'")
        selection[key] = value
    return selection


def select_bundle(client, selection: dict[str, str]) -> tuple[str, list[dict[str, str]]]:
    """The digest of the one bundle of the index whose annotations match every KEY=VALUE of `selection`, and what
    each entry that names it says of it (its annotations, without the prefix): pull holds the bundle to them."""
    from builder.oci.client import _shown

    index, _digest = read_index(client)
    rows = [(entry, {k.removeprefix(ANNOTATION_PREFIX): v for k, v in (entry.annotations or {}).items()
                     if k.startswith(ANNOTATION_PREFIX)}) for entry in index.manifests]
    chosen = [(entry, said) for entry, said in rows if all(said.get(k) == v for k, v in selection.items())]
    asked = ",".join(f"{k}={v}" for k, v in selection.items())
    if not chosen:
        available = sorted({f"{k}={_shown(v, 40)}" for _e, said in rows for k, v in said.items()
                            if k in selection})
        raise UserError(f"no bundle of '{client.ref.name}' matches {asked}",
                        hint=f"it has {', '.join(available) or 'no such annotations'}")
    digests = sorted({entry.digest for entry, _said in chosen})
    if len(digests) > 1:
        differing = [k for k in SELECTABLE if k not in selection and len({said.get(k) for _e, said in chosen}) > 1]
        shown = [k for k in differing if k != "build-key"] or differing
        # entries alike in every annotation a selection can name are told apart by their digests alone
        pinned = [f"{client.ref.registry}/{client.ref.repository}@{digest}" for digest in digests]
        by_digest = ", ".join(pinned[:3]) + (f" (and {len(pinned) - 3} more)" if len(pinned) > 3 else "")
        raise UserError(f"{len(chosen)} bundles of '{client.ref.name}' match {asked}",
                        hint=f"narrow it with {', '.join(shown)}" if shown else
                        f"no selectable annotation tells them apart: pull one by digest: {by_digest}")
    return digests[0], [said for _entry, said in chosen]
