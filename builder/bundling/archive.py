"""Bundles as deterministic .tar.gz archives: sorted entries, fixed times and owners, no gzip timestamp."""
from __future__ import annotations

import gzip
import io
import os
import pathlib
import tarfile

from builder.files import atomic_file


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
