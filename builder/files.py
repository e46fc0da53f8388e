"""Writing files and folders atomically: a reader sees the old one or the whole new one, never a part."""
from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import tempfile

from builder.errors import UserError


@contextlib.contextmanager
def atomic_file(destination: pathlib.Path, mode: int = 0o644):
    """Yields a binary file beside `destination`, renamed onto it when the block succeeds."""
    destination = pathlib.Path(destination)
    fd, tmp = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".tmp", dir=destination.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        os.chmod(tmp, mode)
        os.replace(tmp, destination)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def check_folder_destination(destination: pathlib.Path, force: bool) -> pathlib.Path:
    """Refuse a destination that exists (unless `force`) or whose parent does not."""
    destination = pathlib.Path(destination)
    if destination.exists() and not force:
        raise UserError(f"'{destination}' already exists", hint="pass --force to replace it")
    if destination.exists() and not destination.is_dir():
        raise UserError(f"'{destination}' exists and is not a folder")
    if not destination.resolve().parent.is_dir():
        raise UserError(f"folder '{destination.resolve().parent}' does not exist")
    return destination


@contextlib.contextmanager
def staged_folder(destination: pathlib.Path, force: bool):
    """Yields an empty folder beside `destination`; when the block succeeds it replaces `destination`.

    On failure (or Ctrl-C) the staging folder is removed and `destination` is as it was.
    """
    destination = check_folder_destination(destination, force)
    parent = destination.resolve().parent
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{destination.name}.", suffix=".staging", dir=parent))
    try:
        yield staging
        os.chmod(staging, 0o755)
        if destination.exists():
            old = pathlib.Path(tempfile.mkdtemp(prefix=f".{destination.name}.", suffix=".old", dir=parent))
            os.replace(destination, old / "replaced")
            os.replace(staging, destination)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, destination)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
