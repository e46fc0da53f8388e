"""Writing files and folders atomically: a reader sees the old one or the whole new one, never a part."""
from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import pathlib
import shutil
import tempfile

from builder.core.errors import UserError

#: how often a --force move retries when concurrent builds keep putting a destination back
FORCE_MOVE_ATTEMPTS = 20


def missing_parents(destination: pathlib.Path) -> list[pathlib.Path]:
    """The folders above `destination` that do not exist yet, outermost first; refuses a file in the way."""
    missing = []
    for parent in pathlib.Path(destination).absolute().parents:
        if parent.is_dir():
            break
        if parent.exists() or parent.is_symlink():
            raise UserError(f"'{parent}' is not a folder, so '{destination}' cannot be created under it")
        missing.append(parent)
    return missing[::-1]


@contextlib.contextmanager
def parents_made(destination: pathlib.Path):
    """Create the missing folders above `destination` (as mkdir -p would); remove them again on failure."""
    created = []
    try:
        for folder in missing_parents(destination):
            try:
                folder.mkdir()
            except FileExistsError:  # made by a concurrent build: not ours to remove
                continue
            created.append(folder)
        yield
    except BaseException:
        for folder in reversed(created):
            with contextlib.suppress(OSError):  # a folder that has gained other content stays
                folder.rmdir()
        raise


@contextlib.contextmanager
def atomic_file(destination: pathlib.Path, mode: int = 0o644):
    """Yields a binary file beside `destination`, renamed onto it when the block succeeds."""
    destination = pathlib.Path(destination)
    with parents_made(destination):
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
    """Refuse a destination that exists (unless `force`), is not a folder, or has a file in its path."""
    destination = pathlib.Path(destination)
    if destination.exists() and not force:
        raise UserError(f"'{destination}' already exists", hint="pass --force to replace it")
    if destination.exists() and not destination.is_dir():
        raise UserError(f"'{destination}' exists and is not a folder")
    missing_parents(destination)
    return destination


def check_model_destination(destination: pathlib.Path) -> pathlib.Path:
    """Refuse an unusable output path up front, before minutes of work."""
    destination = destination.resolve()
    if destination.suffix != ".onnx":
        raise UserError(f"output '{destination}' must end in .onnx")
    if destination.is_dir():
        raise UserError(f"output '{destination}' is a directory; give a file name such as model.onnx")
    missing_parents(destination)  # missing folders are made when the file is written; a file in the way is not
    return destination


def _renameat2():
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2  # glibc 2.28+
    except (AttributeError, OSError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return function


_AT_FDCWD = -100
_RENAME_NOREPLACE = 1


def rename_no_replace(source: pathlib.Path, destination: pathlib.Path) -> None:
    """Move `source` to `destination` in one step, or raise FileExistsError if anything is there.

    renameat2(RENAME_NOREPLACE) makes the check and the move one atomic operation in the kernel, so a
    folder that appears at `destination` at any moment during a build is never replaced. Where the call or
    the filesystem lacks it, an exclusive mkdir claims the name first and the rename replaces only that
    empty folder of ours (a rename onto a non-empty folder fails, so content put there is never lost).
    """
    function = _renameat2()
    if function is not None:
        if function(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(destination), _RENAME_NOREPLACE) == 0:
            return
        code = ctypes.get_errno()
        if code == errno.EEXIST:
            raise FileExistsError(code, os.strerror(code), str(destination))
        if code not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
            raise OSError(code, os.strerror(code), str(destination))
    os.mkdir(destination)  # FileExistsError when taken
    try:
        os.replace(source, destination)
    except OSError:
        with contextlib.suppress(OSError):
            os.rmdir(destination)
        raise


def _move_into_place(staging: pathlib.Path, destination: pathlib.Path, force: bool, parent: pathlib.Path) -> None:
    for _ in range(FORCE_MOVE_ATTEMPTS):
        try:
            rename_no_replace(staging, destination)
            return
        except FileExistsError:
            if not force:
                raise UserError(f"'{destination}' already exists", hint="pass --force to replace it") from None
        # --force: move what is there aside, then try again (a concurrent build may have put one back)
        old = pathlib.Path(tempfile.mkdtemp(prefix=f".{destination.name}.", suffix=".old", dir=parent))
        try:
            os.replace(destination, old / "replaced")
        except FileNotFoundError:
            pass  # a concurrent build moved it first
        finally:
            shutil.rmtree(old, ignore_errors=True)
    raise UserError(f"'{destination}' keeps being replaced by another process", hint="build one at a time")


@contextlib.contextmanager
def staged_folder(destination: pathlib.Path, force: bool):
    """Yields an empty folder beside `destination`; when the block succeeds it becomes `destination`.

    Without `force` whatever exists at `destination` at the final move is left untouched and the build
    fails; with `force` it is replaced in one rename. On failure (or Ctrl-C) the staging folder and any
    parent folders made for it are removed and `destination` is as it was.
    """
    destination = check_folder_destination(destination, force)
    with parents_made(destination):
        parent = destination.absolute().parent
        staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{destination.name}.", suffix=".staging", dir=parent))
        try:
            yield staging
            os.chmod(staging, 0o755)
            _move_into_place(staging, destination, force, parent)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
