"""manifest.json: what a bundle holds (every file's sha256 and size), what the model is, and what built it."""
from __future__ import annotations

import json
import pathlib

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1


def file_entries(folder: pathlib.Path) -> list[dict]:
    from builder.core.hashing import sha256_of

    return [{"path": p.relative_to(folder).as_posix(), "sha256": sha256_of(p), "size": p.stat().st_size}
            for p in sorted(folder.rglob("*"), key=lambda p: p.relative_to(folder).as_posix())
            if p.is_file() and p.name != MANIFEST]


def write_manifest(folder: pathlib.Path, description: dict) -> dict:
    """manifest.json in `folder`: `description` plus the files, written last so that it covers them all."""
    from builder.core.files import atomic_file

    manifest = {"manifest_format": MANIFEST_FORMAT, **description, "files": file_entries(folder)}
    with atomic_file(folder / MANIFEST) as f:
        f.write((json.dumps(manifest, indent=2, sort_keys=False) + "\n").encode("utf-8"))
    return manifest


def read_manifest(folder: pathlib.Path) -> dict:
    from builder.core.errors import UserError

    path = pathlib.Path(folder) / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"'{folder}' is not a bundle: it has no {MANIFEST}") from None
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read '{path}': {e}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), list):
        raise UserError(f"'{path}' is not a builder manifest")
    return manifest


def check_files(folder: pathlib.Path) -> dict:
    """The bundle's manifest, after checking that the folder holds exactly its files with their sha256."""
    from builder.core.errors import UserError

    folder = pathlib.Path(folder)
    manifest = read_manifest(folder)
    listed = {entry["path"]: entry for entry in manifest["files"]}
    actual = {entry["path"]: entry for entry in file_entries(folder)}
    missing, extra = sorted(set(listed) - set(actual)), sorted(set(actual) - set(listed))
    if missing:
        raise UserError(f"bundle '{folder}' lacks {len(missing)} file(s) its manifest lists: {', '.join(missing[:5])}")
    if extra:
        raise UserError(f"bundle '{folder}' holds {len(extra)} file(s) its manifest does not list: {', '.join(extra[:5])}")
    changed = [p for p in listed if (listed[p]["sha256"], listed[p]["size"]) != (actual[p]["sha256"], actual[p]["size"])]
    if changed:
        raise UserError(f"bundle '{folder}': {len(changed)} file(s) differ from the manifest's sha256: "
                        f"{', '.join(changed[:5])}")
    return manifest
