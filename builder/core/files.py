"""Writing files and folders atomically: a reader sees the old one or the whole new one, never a part."""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import pathlib
import re
import shutil
import stat
import tempfile
import time

from builder.core.errors import UserError
from builder.core.renames import move_file, rename_exchange, rename_no_replace

#: how often a --force move retries when concurrent builds keep putting a destination back
FORCE_MOVE_ATTEMPTS = 20
#: write failures that are the user's environment (a full disk, a quota, a read-only or forbidden place), not a bug
ENVIRONMENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})
#: those that are the environment whichever file met them (a full TMPDIR too); EACCES and EPERM only on our paths
_ALWAYS_ENVIRONMENT = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})
#: what builds leave beside a destination while they run: folders `.NAME.PID.RANDOM.KIND`
SCRATCH_KINDS = ("staging", "stage", "tmp", "pull", "build")
#: the file inside every scratch folder that proves builder made it: it holds the folder's own name, so neither a
#: user's entry that merely looks like scratch (`.out.2024.backup.old`) nor a copy of another's is ever swept
SCRATCH_MARKER = ".builder-scratch"
#: a leftover younger than this is spared: a build in another pid namespace may not have locked it yet
STALE_AFTER_S = 5.0


class CannotWrite(UserError):
    """An output could not be written for a reason of the user's environment; names the path the user gave."""

    def __init__(self, path: pathlib.Path | str, code: int):
        super().__init__(f"cannot write '{path}': {os.strerror(code)}")
        self.path = pathlib.Path(path)
        self.errno = code


def _scratch(path: pathlib.Path, destination: pathlib.Path) -> bool:
    """Whether `path` lies in what a build of `destination` keeps beside it while it runs (`.NAME.*`)."""
    parent = destination.parent
    return parent in path.parents and path.relative_to(parent).parts[0].startswith(f".{destination.name}.")


def _ours(path: pathlib.Path, destination: pathlib.Path) -> bool:
    """Whether `path` is where writing `destination` writes: it, a folder above it, our scratch beside it, or an
    entry being created in its folder (the place the user chose)."""
    return (path == destination or path in destination.parents or _scratch(path, destination)
            or (path.parent == destination.parent and not os.path.lexists(path)))


@contextlib.contextmanager
def user_environment_errors(destination: pathlib.Path):
    """Turn a full disk, a quota, or a read-only or forbidden destination met while writing `destination` into
    one line naming it (CannotWrite); what was made is cleaned up by the blocks inside. The same errors on
    another path (a weights file one may not read) are not ours to judge and go on unchanged."""
    destination = pathlib.Path(destination)
    absolute = destination.absolute()
    try:
        yield
    except CannotWrite as e:
        if _scratch(e.path.absolute(), absolute):  # a scratch file's name means nothing to the user
            raise CannotWrite(destination, e.errno) from e
        raise
    except OSError as e:
        if e.errno not in ENVIRONMENT_ERRNOS:
            raise
        failed = [pathlib.Path(os.fsdecode(name)).absolute() for name in (e.filename, e.filename2) if name is not None]
        outside = [path for path in failed if not _ours(path, absolute)]
        if not outside:
            raise CannotWrite(destination, e.errno) from e
        if e.errno in _ALWAYS_ENVIRONMENT:
            raise CannotWrite(outside[0], e.errno) from e
        raise


def _process_alive(pid: int) -> bool:
    if pid <= 0:
        return True  # not a process id: never a reason to remove anything
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def _lock(fd: int) -> None:
    """Mark a scratch entry as in use for as long as this process holds `fd`, whatever pid namespace it is in."""
    with contextlib.suppress(OSError):  # a filesystem without locks: the pid in the name has to do
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _held(path: pathlib.Path) -> bool:
    """Whether a live process holds `path`'s lock (where the filesystem cannot tell, the pid has decided)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # (releases the lock if we took it)
    return False


def _scratch_prefix(destination: pathlib.Path) -> str:
    return f".{destination.name}.{os.getpid()}."


def sweep_leftovers(destination: pathlib.Path) -> None:
    """Remove what builds of `destination` that were killed (SIGKILL, a lost machine) left beside it.

    A leftover is a folder `.NAME.PID.RANDOM.KIND` that holds builder's marker naming it (SCRATCH_MARKER):
    anything else, however scratch-like its name, is the user's and stays. It is removed when its process is
    gone, it is older than STALE_AFTER_S, and nobody holds its lock: a live build in another pid namespace (a
    container), whose pid means nothing here, still holds its lock. Leftovers of builds that ran as pid 1 of a
    container wait for a build that runs where that pid is free.
    """
    from builder.core.log import notice

    destination = pathlib.Path(destination).absolute()
    pattern = re.compile(re.escape(f".{destination.name}.") + r"(\d+)\.[a-z0-9_]+\.(?:" + "|".join(SCRATCH_KINDS)
                         + r")")
    try:
        entries = list(os.scandir(destination.parent))
    except OSError:
        return
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match is None or _process_alive(int(match[1])):
            continue
        path = pathlib.Path(entry.path)
        if not _made_by_builder(path):
            continue
        try:
            age = time.time() - entry.stat(follow_symlinks=False).st_mtime
        except OSError:
            continue
        if age < STALE_AFTER_S or _held(path):
            continue
        shutil.rmtree(path, ignore_errors=True)
        if not os.path.lexists(path):
            notice(f"removed '{path}', left by a build (process {match[1]}) that did not finish")


def _made_by_builder(path: pathlib.Path) -> bool:
    """Whether `path` is a real folder (no link) holding builder's marker with the folder's own name."""
    try:
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            return False
        fd = os.open(path / SCRATCH_MARKER, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        return stat.S_ISREG(os.fstat(fd).st_mode) and os.read(fd, 4096) == os.fsencode(path.name)
    except OSError:
        return False
    finally:
        os.close(fd)


@contextlib.contextmanager
def scratch_folder(destination: pathlib.Path, kind: str):
    """Yields a new folder `.NAME.PID.RANDOM.KIND` beside `destination` for a build's temporary files, removed
    at the end; locked meanwhile, and marked as builder's (SCRATCH_MARKER). What a killed build leaves there the
    next build of `destination` sweeps."""
    destination = pathlib.Path(destination)
    if kind not in SCRATCH_KINDS:
        raise ValueError(f"scratch kind {kind!r}: one of {SCRATCH_KINDS}")
    sweep_leftovers(destination)
    folder = pathlib.Path(tempfile.mkdtemp(prefix=_scratch_prefix(destination), suffix=f".{kind}",
                                           dir=destination.absolute().parent))
    lock = None
    try:
        (folder / SCRATCH_MARKER).write_bytes(os.fsencode(folder.name))
        lock = os.open(folder, os.O_RDONLY)
        _lock(lock)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        if lock is not None:
            os.close(lock)


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
    with user_environment_errors(destination):
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
def atomic_file(destination: pathlib.Path, mode: int = 0o644, replace: bool = True):
    """Yields a binary file beside `destination` (in a scratch folder of its own), moved onto it when the block
    succeeds. `replace=False` never replaces a file that is at `destination` by then, whenever it appeared:
    the move is refused with the hint to pass --force, and nothing is left."""
    destination = pathlib.Path(destination)
    with parents_made(destination), scratch_folder(destination, "tmp") as scratch:
        tmp = scratch / (destination.name or "file")
        with open(tmp, "xb") as f:
            yield f
        os.chmod(tmp, mode)
        move_file(tmp, destination, replace)


def check_folder_destination(destination: pathlib.Path, force: bool) -> pathlib.Path:
    """Refuse a destination that exists (unless `force`), is not a folder, has a file in its path, or is the
    current folder or one above it (never replaced, even with `force`)."""
    destination = pathlib.Path(destination)
    if _holds_the_current_folder(destination):
        raise UserError(f"'{destination}' is the current folder or a folder above it, which cannot be replaced",
                        hint="name a folder to create, or one to replace with --force")
    if destination.exists() and not force:
        raise UserError(f"'{destination}' already exists", hint="pass --force to replace it")
    if destination.exists() and not destination.is_dir():
        raise UserError(f"'{destination}' exists and is not a folder")
    check_writable(destination)
    return destination


def _holds_the_current_folder(destination: pathlib.Path) -> bool:
    """Whether a folder build would move something onto the current folder or one above it: a rename onto '.',
    '..' or '/' fails (EBUSY), and one onto the current folder by its full name would swap it away with --force.
    A link's own name is the destination, not what it points at (a build replaces the link)."""
    try:
        here, path = pathlib.Path.cwd(), pathlib.Path(destination).absolute()
    except OSError:  # the current folder is gone: nothing can be it
        return False
    place = path.resolve() if path.name in ("", "..") else path.parent.resolve() / path.name
    return place == here or place in here.parents


def check_writable(destination: pathlib.Path) -> None:
    """Refuse, before any slow work, a destination whose folder cannot be written (read-only filesystem, no
    permission, a virtual filesystem such as /proc): an empty folder is made and removed where it will go."""
    missing = missing_parents(destination)
    folder = missing[0].parent if missing else pathlib.Path(destination).absolute().parent
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".builder-probe.", dir=folder))
    except OSError as e:
        raise CannotWrite(destination, e.errno or errno.EACCES) from None


def check_model_destination(destination: pathlib.Path) -> pathlib.Path:
    """Refuse an unusable output path up front, before minutes of work."""
    destination = destination.resolve()
    if destination.suffix != ".onnx":
        raise UserError(f"output '{destination}' must end in .onnx")
    if destination.is_dir():
        raise UserError(f"output '{destination}' is a directory; give a file name such as model.onnx")
    check_writable(destination)  # missing folders are made when the file is written; a file in the way is not
    return destination


def _move_into_place(staging: pathlib.Path, destination: pathlib.Path, force: bool) -> None:
    """`staging` becomes `destination`; with `force` what was there ends up at `staging`, for the caller to remove."""
    for _ in range(FORCE_MOVE_ATTEMPTS):
        try:
            rename_no_replace(staging, destination)
            return
        except FileExistsError:
            if not force:
                raise UserError(f"'{destination}' already exists", hint="pass --force to replace it") from None
        try:
            if rename_exchange(staging, destination):
                return
        except FileNotFoundError:
            continue  # a concurrent build moved it away first
        # no exchange here: move what is there aside, then try again (a concurrent build may put one back);
        # a kill in between leaves the old one in the scratch folder, for the next build's sweep
        aside = staging.with_name(f"{staging.name}.aside")
        try:
            os.replace(destination, aside)
        except FileNotFoundError:
            pass
        finally:
            shutil.rmtree(aside, ignore_errors=True)
    raise UserError(f"'{destination}' keeps being replaced by another process", hint="build one at a time")


@contextlib.contextmanager
def staged_folder(destination: pathlib.Path, force: bool):
    """Yields an empty folder near `destination`; when the block succeeds it becomes `destination`.

    Without `force` whatever exists at `destination` at the final move is left untouched and the build
    fails; with `force` it is replaced in one rename. On failure, Ctrl-C or SIGTERM the staging folder and
    any parent folders made for it are removed and `destination` is as it was. The yielded folder sits in a
    scratch folder `.NAME.PID.RANDOM.staging` of its own (its parent, for the build's other temporary
    files), so what a killed build leaves is one entry, which the next build of `destination` sweeps away.
    """
    destination = check_folder_destination(destination, force)
    with parents_made(destination), scratch_folder(destination, "staging") as scratch:
        staging = scratch / (destination.absolute().name or "staging")
        staging.mkdir()
        yield staging
        os.chmod(staging, 0o755)
        _move_into_place(staging, destination, force)
