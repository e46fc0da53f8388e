"""Moves that are one step in the kernel: renameat2's no-replace and exchange renames, for files and folders."""
from __future__ import annotations

import contextlib
import errno
import functools
import os
import pathlib
from typing import Optional

from builder.core.errors import UserError


@functools.cache
def _renameat2():
    import ctypes  # here: the CLI imports this module at start, and ctypes is most of its cost

    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2  # glibc 2.28+
    except (AttributeError, OSError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return function


_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2


def _rename_at(source: pathlib.Path, destination: pathlib.Path, flags: int) -> Optional[int]:
    """renameat2(source, destination, flags): 0 when done, the errno when it failed, None where the C library
    or the filesystem lacks the call (the caller falls back)."""
    import ctypes

    function = _renameat2()
    if function is None:
        return None
    if function(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(destination), flags) == 0:
        return 0
    code = ctypes.get_errno()
    return None if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP) else code


def rename_no_replace(source: pathlib.Path, destination: pathlib.Path) -> None:
    """Move `source` to `destination` in one step, or raise FileExistsError if anything is there.

    renameat2(RENAME_NOREPLACE) makes the check and the move one atomic operation in the kernel, so a
    folder that appears at `destination` at any moment during a build is never replaced. Where the call or
    the filesystem lacks it, an exclusive mkdir claims the name first and the rename replaces only that
    empty folder of ours (a rename onto a non-empty folder fails, so content put there is never lost).
    """
    code = _rename_at(source, destination, _RENAME_NOREPLACE)
    if code == 0:
        return
    if code == errno.EEXIST:
        raise FileExistsError(code, os.strerror(code), str(destination))
    if code is not None:
        raise OSError(code, os.strerror(code), str(destination))
    os.mkdir(destination)  # FileExistsError when taken
    try:
        os.replace(source, destination)
    except OSError:
        with contextlib.suppress(OSError):
            os.rmdir(destination)
        raise


def rename_exchange(source: pathlib.Path, destination: pathlib.Path) -> bool:
    """Swap `source` and `destination` in one step (renameat2 RENAME_EXCHANGE): a reader, or a kill at any
    moment, finds one of the two whole at `destination`. False where the call or the filesystem lacks it;
    FileNotFoundError when `destination` is gone."""
    code = _rename_at(source, destination, _RENAME_EXCHANGE)
    if code is None:
        return False
    if code == errno.ENOENT:
        raise FileNotFoundError(code, os.strerror(code), str(destination))
    if code:
        raise OSError(code, os.strerror(code), str(source), None, str(destination))
    return True


def move_file(source: pathlib.Path, destination: pathlib.Path, replace: bool) -> None:
    """Move the file `source` to `destination` in one step. `replace=False`: refused (UserError, with the hint to
    pass --force) when anything is at `destination` at that moment; the check and the move are one operation."""
    if replace:
        os.replace(source, destination)
        return
    code = _rename_at(source, destination, _RENAME_NOREPLACE)
    if code is None:  # no renameat2: a hard link is made only where the name is free, then the source goes
        try:
            os.link(source, destination, follow_symlinks=False)
        except FileExistsError:
            code = errno.EEXIST
        else:
            os.unlink(source)
            return
    if code == errno.EEXIST:
        raise UserError(f"'{destination}' already exists", hint="pass --force to replace it")
    if code:
        raise OSError(code, os.strerror(code), str(destination))
