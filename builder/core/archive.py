"""Bundles as deterministic .tar.gz archives (sorted entries, fixed times), unpacked within what they declare."""
from __future__ import annotations

import contextlib
import gzip
import io
import os
import pathlib
import stat
import tarfile
import zlib
from typing import Iterable, Mapping

from builder.core.errors import UserError
from builder.core.files import atomic_file


def write_archive(folder: pathlib.Path, destination: pathlib.Path, root: str | None = None) -> pathlib.Path:
    """`folder`'s files under one top-level directory (`root`, default the folder's name); the same files give
    the same bytes."""
    folder = pathlib.Path(folder)
    root = root or folder.name
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in [folder, *sorted(folder.rglob("*"), key=lambda p: p.relative_to(folder).as_posix())]:
            relative = path.relative_to(folder).as_posix()
            mode = path.lstat().st_mode
            # checked again here, not only by the caller: opening a fifo would block and a link would be followed
            if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
                raise UserError(f"'{path}' is a link or a special file; bundles hold regular files and folders only")
            info = tarfile.TarInfo(root if relative == "." else f"{root}/{relative}")
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            if stat.S_ISDIR(mode):
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


#: the most a tar stream spends on one entry besides its data: its header, a pax header with its data (long or
#: non-ASCII names), and the padding of both to 512-byte blocks
_ENTRY_OVERHEAD = 4 * tarfile.BLOCKSIZE
#: the end-of-archive blocks and the padding of the whole stream to a record (twice, for any writer's rounding)
_END_OVERHEAD = 2 * tarfile.RECORDSIZE


def folders_of(paths: Iterable[str]) -> set[str]:
    """Every folder above the given relative paths ('a/b/c' -> 'a', 'a/b')."""
    return {"/".join(parts[:i]) for parts in (p.split("/") for p in paths) for i in range(1, len(parts))}


def unpacked_bound(allowed: Mapping[str, int]) -> int:
    """The most bytes a tar stream holding exactly the files of `allowed` (path -> size), the folders above
    them and one top folder can take."""
    entries = [*allowed, *folders_of(allowed), ""]
    return (sum(allowed.values()) + _END_OVERHEAD
            + sum(_ENTRY_OVERHEAD + 2 * len(path.encode("utf-8")) for path in entries))


class _Exhausted(Exception):
    """The decompressed stream went past its bound."""


class _Bounded(io.RawIOBase):
    """Reads `inner` and fails as soon as it yields more than `limit` bytes (a gzip bomb stops there)."""

    def __init__(self, inner, limit: int):
        self.inner, self.left = inner, limit

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        wanted = self.left + 1 if size is None or size < 0 else min(size, self.left + 1)
        data = self.inner.read(wanted)
        if len(data) > self.left:
            raise _Exhausted()
        self.left -= len(data)
        return data


def extract_archive(archive: pathlib.Path, destination: pathlib.Path, allowed: Mapping[str, int]) -> str:
    """Extract a bundle archive into the empty folder `destination`; returns the archive's top folder name.

    `allowed` is what the bundle declares: each file's path inside the top folder and its size. Only those
    files (each at most its size, once) and the folders above them are accepted, so the archive unpacks to
    at most what is declared. The archive is read as a stream and refused at the first entry that breaks
    a rule (a NUL byte in its name, an absolute path, a '..', a link, a device, a second top folder, a file
    not declared or larger than declared) and the decompressed stream is bounded too: a small gzip bomb
    never writes or inflates more than the declared bytes. What was written before a refusal is the
    caller's to remove (pull extracts into a staging folder).
    """
    destination = pathlib.Path(destination).resolve()
    folders = folders_of(allowed)
    bound = unpacked_bound(allowed)
    root = None
    try:
        with gzip.open(archive, "rb") as compressed, \
                tarfile.open(fileobj=_Bounded(compressed, bound), mode="r|") as tar:
            for member in tar:
                name, shown = member.name, _shown(member.name)
                if "\x00" in name:  # a pax header can carry one; no path can hold it
                    raise UserError(f"archive entry '{shown}' has a NUL byte in its name")
                parts = name.split("/")
                if name.startswith("/") or "\\" in name or any(p in ("..", ".", "") for p in parts):
                    raise UserError(f"archive entry '{shown}' escapes the bundle folder")
                if root is None:
                    root = parts[0]
                elif parts[0] != root:
                    raise UserError(f"archive has two top folders ('{_shown(root)}' and '{_shown(parts[0])}'); "
                                    "a bundle archive has one")
                if not (member.isfile() or member.isdir()):
                    raise UserError(f"archive entry '{shown}' is a link or a device; "
                                    "bundles hold files and folders only")
                relative = "/".join(parts[1:])
                target = (destination / relative).resolve() if relative else destination
                if target != destination and destination not in target.parents:
                    raise UserError(f"archive entry '{shown}' escapes the bundle folder")
                if member.isdir():
                    if relative and relative not in folders:
                        raise UserError(f"archive entry '{shown}' is a folder that holds none of the bundle's files")
                    with _writing(target):
                        target.mkdir(parents=True, exist_ok=True)
                    continue
                if relative not in allowed:
                    raise UserError(f"archive entry '{shown}' is not a file the bundle's manifest lists")
                if member.size > allowed[relative]:
                    raise UserError(f"archive entry '{shown}' is {member.size:,} bytes; the bundle's manifest "
                                    f"declares {allowed[relative]:,}")
                with _writing(target):
                    target.parent.mkdir(parents=True, exist_ok=True)
                    try:
                        out = open(target, "xb")
                    except FileExistsError:
                        raise UserError(f"archive holds '{shown}' twice") from None
                with out:
                    source = tar.extractfile(member)
                    while block := source.read(1 << 20):  # a read error is the archive's, not the destination's
                        with _writing(target):
                            out.write(block)
                with _writing(target):
                    os.chmod(target, 0o755 if member.mode & 0o111 else 0o644)
    except _Exhausted:
        raise UserError(f"archive unpacks to more than the {bound:,} bytes its bundle's manifest allows") from None
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:  # gzip.BadGzipFile is an OSError
        raise UserError(f"archive is not a valid .tar.gz: {_shown(' '.join(str(e).split())) or type(e).__name__}") \
            from None
    if root is None:
        raise UserError("archive is empty; a bundle archive has one top folder")
    return root


def _shown(name: str, limit: int = 200) -> str:
    """An entry's name as a message may show it: the archive is untrusted, so no control characters (a
    terminal would obey them) and no unbounded length."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in name[:limit])
    return text + ("..." if len(name) > limit else "")


@contextlib.contextmanager
def _writing(target: pathlib.Path):
    """The destination's own failures (full, read-only, no permission) are one line naming the path."""
    try:
        yield
    except OSError as e:
        raise UserError(f"cannot write '{target}': {e.strerror or e}") from None
