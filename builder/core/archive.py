"""Bundles as deterministic .tar.gz archives: sorted entries, fixed times and owners, no gzip timestamp."""
from __future__ import annotations

import gzip
import io
import os
import pathlib
import tarfile

from builder.core.files import atomic_file


def write_archive(folder: pathlib.Path, destination: pathlib.Path, root: str | None = None) -> pathlib.Path:
    """`folder`'s files under one top-level directory (`root`, default the folder's name); the same files give
    the same bytes."""
    folder = pathlib.Path(folder)
    root = root or folder.name
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in [folder, *sorted(folder.rglob("*"), key=lambda p: p.relative_to(folder).as_posix())]:
            if path.is_symlink():
                raise RuntimeError(f"bundles hold no links: {path}")
            relative = path.relative_to(folder).as_posix()
            info = tarfile.TarInfo(root if relative == "." else f"{root}/{relative}")
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            if path.is_dir():
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size, info.mode = path.stat().st_size, 0o755 if os.access(path, os.X_OK) else 0o644
                with path.open("rb") as f:
                    tar.addfile(info, f)
    with atomic_file(destination) as out:
        with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=6) as gz:
            gz.write(buffer.getvalue())
    return destination


def extract_archive(archive: pathlib.Path, destination: pathlib.Path, max_bytes: int) -> str:
    """Extract a bundle archive into the empty folder `destination`; returns the archive's top folder name.

    Only regular files and folders under one top folder are accepted: an absolute path, a '..', a link,
    a device or a second top folder refuses the whole archive, before anything is written outside.
    """
    from builder.core.errors import UserError

    destination = pathlib.Path(destination).resolve()
    written = 0
    try:
        with tarfile.open(archive, mode="r:gz") as tar:
            members = tar.getmembers()
            roots = {m.name.split("/", 1)[0] for m in members}
            if len(roots) != 1:
                raise UserError(f"archive has {len(roots)} top folders; a bundle archive has one")
            [root] = roots
            for member in members:
                name = member.name
                parts = name.split("/")
                if name.startswith("/") or "\\" in name or any(p in ("..", "") for p in parts) or root in ("..", "."):
                    raise UserError(f"archive entry '{name}' escapes the bundle folder")
                if not (member.isfile() or member.isdir()):
                    raise UserError(f"archive entry '{name}' is a link or a device; bundles hold files and folders only")
                target = (destination / pathlib.PurePosixPath(*parts[1:])).resolve() if len(parts) > 1 else destination
                if target != destination and destination not in target.parents:
                    raise UserError(f"archive entry '{name}' escapes the bundle folder")
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                written += member.size
                if written > max_bytes:
                    raise UserError(f"archive unpacks to more than {max_bytes:,} bytes")
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                with open(target, "xb") as out:
                    while block := source.read(1 << 20):
                        out.write(block)
                os.chmod(target, 0o755 if member.mode & 0o111 else 0o644)
    except (tarfile.TarError, EOFError, OSError, gzip.BadGzipFile) as e:
        if isinstance(e, FileExistsError):
            raise UserError(f"archive holds '{e.filename}' twice") from None
        raise UserError(f"archive is not a valid .tar.gz: {e}") from None
    return root
