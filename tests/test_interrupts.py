"""Interruptions and the user's environment: SIGTERM and Ctrl-C unwind, killed builds are swept up, and a full
disk or a read-only destination is one line."""
from __future__ import annotations

import errno
import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import click
import pytest

from builder.cli import cli, main
from builder.core.errors import UserError
from builder.core.files import CannotWrite, atomic_file, staged_folder, sweep_leftovers

BUNDLE = ("bundle", "--target", "standalone", "--model", "ppyoloe_s", "--input-shape", "64x64", "--runner", "local")
UNWRITABLE = {"Read-only file system", "Operation not permitted", "Permission denied"}


def _builder(*args, env=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "builder", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)


def _lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


def _wait_for(condition, process: subprocess.Popen, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"the process ended first: {process.communicate()}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _scratch(folder: pathlib.Path, name: str = "out") -> list[pathlib.Path]:
    return [p for p in folder.iterdir() if p.name.startswith(f".{name}.")]


def _age(paths, seconds: float = 60.0) -> None:
    """Make leftovers look as old as a build that died a while ago (the sweep spares young ones)."""
    for path in paths:
        past = time.time() - seconds
        os.utime(path, (past, past), follow_symlinks=False)


@pytest.fixture
def tiny_disk(tmp_path):
    """A 64 KiB tmpfs, a disk that fills up; mounting needs root (skipped where it is not allowed)."""
    yield from _mounted(tmp_path / "disk", "size=64k")


@pytest.fixture
def read_only_disk(tmp_path):
    yield from _mounted(tmp_path / "ro", "ro,size=64k")


def _mounted(folder: pathlib.Path, options: str):
    folder.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True,
                              text=True)
    except FileNotFoundError:
        pytest.skip("no mount command here")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


# --- the user's environment: an unwritable destination, a full disk ------------------------------------------

def test_an_unwritable_destination_is_one_line_naming_it():
    if not pathlib.Path("/sys/kernel").is_dir():
        pytest.skip("no sysfs here")
    process = _builder("-q", *BUNDLE, "--output", "/sys/kernel/x/out")
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 2 and "Traceback" not in stderr, stderr
    [line] = _lines(stderr)
    assert line.startswith("error: cannot write '/sys/kernel/x/out': ")
    assert line.split(": ", 2)[2] in UNWRITABLE


def test_a_read_only_filesystem_is_one_line(read_only_disk):
    process = _builder("-q", *BUNDLE, "--output", str(read_only_disk / "bundles" / "out"))
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 2
    assert _lines(stderr) == [f"error: cannot write '{read_only_disk / 'bundles' / 'out'}': Read-only file system"]


def test_a_full_disk_is_one_line_and_leaves_nothing(tiny_disk, tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    process = _builder("-q", *BUNDLE, "--output", str(tiny_disk / "out"), env={**os.environ, "TMPDIR": str(tmp)})
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 2, stderr
    assert _lines(stderr) == [f"error: cannot write '{tiny_disk / 'out'}': No space left on device"]
    assert list(tiny_disk.iterdir()) == []
    # (torch keeps its caches in TMPDIR, torchinductor_root, whatever the outcome; tempfile's folders are ours)
    assert [p.name for p in tmp.iterdir() if p.name.startswith("tmp")] == []


def test_a_file_that_fills_the_disk_is_one_line_naming_it(tiny_disk):
    with pytest.raises(CannotWrite, match=f"^cannot write '{tiny_disk / 'model.onnx'}': No space left on device$"):
        with atomic_file(tiny_disk / "model.onnx") as f:
            f.write(b"x" * (1 << 20))
    assert list(tiny_disk.iterdir()) == []


def test_a_bundle_that_fills_the_disk_names_the_destination_not_its_staging_folder(tiny_disk):
    with pytest.raises(CannotWrite, match=f"^cannot write '{tiny_disk / 'a' / 'out'}': No space left on device$"):
        with staged_folder(tiny_disk / "a" / "out", force=False) as staging:
            with atomic_file(staging / "nested" / "model.onnx") as f:
                f.write(b"x" * (1 << 20))
    assert list(tiny_disk.iterdir()) == []


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_a_full_disk_or_quota_while_staging_is_a_user_error(code, tmp_path):
    with pytest.raises(UserError, match=f"^cannot write '{tmp_path / 'out'}': {os.strerror(code)}$"):
        with staged_folder(tmp_path / "out", force=False) as staging:
            (staging / "part").write_text("half")
            raise OSError(code, os.strerror(code))  # what write() raises on a full disk: no file name
    assert list(tmp_path.iterdir()) == []


def test_an_error_on_another_path_is_not_taken_for_the_users_environment(tmp_path):
    """Permission denied reading some other file, or a missing file, stays what it is: the caller judges it."""
    other = str(tmp_path / "elsewhere" / "weights.pt")
    for error in (PermissionError(errno.EACCES, "Permission denied", other),
                  FileNotFoundError(errno.ENOENT, "No such file or directory", str(tmp_path / "out"))):
        with pytest.raises(type(error)) as raised:
            with staged_folder(tmp_path / "out", force=False):
                raise error
        assert raised.value is error
    assert list(tmp_path.iterdir()) == []


# --- Ctrl-C and SIGTERM --------------------------------------------------------------------------------------

@pytest.fixture
def throwaway(monkeypatch):
    """Registers `callback` as the command `throwaway` on the real group for one test."""
    def register(callback):
        monkeypatch.setitem(cli.commands, "throwaway", click.Command("throwaway", callback=callback))

    return register


def _raised_from_interrupt():
    try:
        raise KeyboardInterrupt
    except KeyboardInterrupt as e:
        raise RuntimeError("export failed") from e


def _raised_while_handling_interrupt():
    try:
        raise KeyboardInterrupt
    except KeyboardInterrupt:
        raise RuntimeError("export failed")


def _raised_after_sigterm():
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler interrupts this
    except KeyboardInterrupt:
        pass  # a library that swallows it and then fails in its own way
    raise UserError("cannot write 'out': something")


@pytest.mark.parametrize("callback, code, line", [
    (_raised_from_interrupt, 130, "error: interrupted"),
    (_raised_while_handling_interrupt, 130, "error: interrupted"),
    (_raised_after_sigterm, 143, "error: terminated"),
])
def test_an_error_that_an_interrupt_caused_is_reported_as_the_interrupt(callback, code, line, throwaway, capsys):
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    throwaway(callback)
    assert main(["throwaway"]) == code
    assert _lines(capsys.readouterr().err) == [line]
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers


def test_a_bug_still_shows_its_traceback(throwaway, capsys):
    def bug():
        raise OSError(errno.EACCES, "Permission denied", "/etc/some/file")

    throwaway(bug)
    assert main(["throwaway"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "PermissionError" in err and "internal error (a bug)" in err


def test_sigterm_during_a_bundle_removes_its_staging_and_exits_143(tmp_path):
    process = _builder("-q", *BUNDLE, "--output", str(tmp_path / "out"))
    _wait_for(lambda: _scratch(tmp_path), process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143 and _lines(stderr) == ["error: terminated"], stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("delay", [0.0, 1.0, 2.5, 5.0, "when the output appears"])
def test_ctrl_c_during_the_export_is_interrupted_never_a_traceback(delay, tmp_path):
    import onnx

    output = tmp_path / "x.onnx"
    process = _builder("export", "--runner", "local", "--model", "ppyoloe_s", "--input-shape", "160x160", "--output",
                       str(output))
    assert process.stderr.readline().startswith("warning: no weights given")  # past startup: the model is built
    if isinstance(delay, float):
        time.sleep(delay)
    else:  # as it finishes: its report, its return, the interpreter's teardown
        _wait_for(output.exists, process)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode in (0, 130) and "Traceback" not in stderr and "internal error" not in stderr, stderr
    if process.returncode == 130:
        assert _lines(stderr) == ["error: interrupted"], stderr
    else:  # it finished first
        assert output.exists()
    assert [p.name for p in tmp_path.iterdir()] in ([], ["x.onnx"])  # nothing half-written
    if output.exists():
        onnx.checker.check_model(onnx.load(output))


def test_sigterm_stops_the_export_stage_without_leftovers(tmp_path):
    from builder.exporting.spec import ExportSpec
    from builder.stage import stage_request

    (tmp_path / "out").mkdir()
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(stage_request(ExportSpec.create(model="ppyoloe_s", input_image_shape=(64, 64)))))
    process = subprocess.Popen([sys.executable, "-m", "builder.stage", str(spec), str(tmp_path / "out")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stderr.readline().startswith("warning: no weights given")
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143 and _lines(stderr) == ["error: terminated"], stderr
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.docker
def test_sigterm_twice_stops_and_removes_the_stage_container(tmp_path):
    from docker_engine import IMAGE as image, engine_with_image

    client = engine_with_image(image)
    process = _builder("-q", *BUNDLE[:-2], "--runner", "docker", "--image", image, "--output", str(tmp_path / "out"))

    def containers():  # this build's (other tests may run containers meanwhile)
        return client.containers.list(all=True, sparse=True, filters={"name": f"builder-stage-{process.pid}-"})

    _wait_for(containers, process)
    time.sleep(1)
    process.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    process.send_signal(signal.SIGTERM)  # a second one, during the cleanup, waits for it
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143 and _lines(stderr)[-1] == "error: terminated", stderr
    assert containers() == []
    assert list(tmp_path.iterdir()) == []


# --- SIGKILL: nothing can run then; the next build sweeps up -------------------------------------------------

HOLD = textwrap.dedent("""
    import pathlib, sys, time
    from builder.core.files import staged_folder
    destination, size = pathlib.Path(sys.argv[1]), int(sys.argv[2])
    with staged_folder(destination, force=True) as staging:
        (staging / "model.onnx").write_bytes(b"x" * size)
        print("ready", flush=True)
        time.sleep(600)
""")


def _held_build(destination: pathlib.Path, size: int = 1000) -> subprocess.Popen:
    """A build of `destination` that stops inside its staging block and says so."""
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(destination), str(size)], stdout=subprocess.PIPE,
                               text=True)
    assert process.stdout.readline() == "ready\n"
    return process


def _killed(process: subprocess.Popen) -> None:
    process.kill()
    process.wait()


def _dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_the_sweep_removes_only_the_leftovers_of_dead_builds_of_that_destination(tmp_path):
    _killed(_held_build(tmp_path / "out"))
    alive = _held_build(tmp_path / "out")
    # a build that runs on in another pid namespace (a container): its pid means nothing here, its lock does
    [alive_scratch] = [p for p in _scratch(tmp_path) if p.name.startswith(f".out.{alive.pid}.")]
    alive_scratch = _marked(alive_scratch.rename(tmp_path / f".out.{_dead_pid()}.zzzz9999.staging"))
    _marked(tmp_path / f".out.{_dead_pid()}.abcd1234.tmp")
    young = _marked(tmp_path / f".out.{_dead_pid()}.efgh5678.staging")
    others = [_marked(tmp_path / f".out2.{_dead_pid()}.abcd1234.staging"),
              _marked(tmp_path / f".out.tar.gz.{_dead_pid()}.abcd1234.tmp"),
              _marked(tmp_path / ".out.precious"), _marked(tmp_path / f".out.{os.getpid()}.ijkl9012.stage"),  # alive
              _marked(tmp_path / "out.1.abcd1234.staging")]
    _age([*_scratch(tmp_path), *others])
    _age([young], 0)
    try:
        sweep_leftovers(tmp_path / "out")
        assert sorted(_scratch(tmp_path)) == sorted([alive_scratch, young, *others[1:4]])
        assert (alive_scratch / "out" / "model.onnx").exists()
    finally:
        _killed(alive)


def _marked(folder: pathlib.Path) -> pathlib.Path:
    """`folder` as builder's scratch_folder marks what it makes (created where it does not exist)."""
    from builder.core.files import SCRATCH_MARKER

    folder.mkdir(exist_ok=True)
    (folder / SCRATCH_MARKER).write_text(folder.name)
    return folder


def test_the_sweep_never_removes_what_builder_cannot_prove_it_made(tmp_path):
    """Names alone prove nothing: a user's `.out.2024.backup.old` (a dead pid, a kind builder once used) stays,
    and so do a folder whose marker names another folder, a marker that is a link, and plain files."""
    from builder.core.files import SCRATCH_MARKER

    users = [tmp_path / f".out.{_dead_pid()}.backup.old", tmp_path / f".out.{_dead_pid()}.backup.staging"]
    for path in users:
        path.mkdir()
        (path / "notes.md").write_text("mine")
    copied = tmp_path / f".out.{_dead_pid()}.copy1234.staging"
    copied.mkdir()
    (copied / SCRATCH_MARKER).write_text(f".out.{_dead_pid()}.other999.staging")
    linked = tmp_path / f".out.{_dead_pid()}.link1234.staging"
    linked.mkdir()
    (linked / SCRATCH_MARKER).symlink_to(tmp_path / "elsewhere")
    (tmp_path / "elsewhere").write_text(linked.name)
    a_file = tmp_path / f".out.{_dead_pid()}.file1234.tmp"
    a_file.write_text("a file is never builder's scratch")
    ours = _marked(tmp_path / f".out.{_dead_pid()}.ours1234.staging")
    _age([*_scratch(tmp_path)])
    sweep_leftovers(tmp_path / "out")
    assert sorted(_scratch(tmp_path)) == sorted([*users, copied, linked, a_file])
    assert not ours.exists()
    assert all((path / "notes.md").read_text() == "mine" for path in users)


def test_killed_builds_keep_the_old_bundle_and_the_next_build_sweeps_up(tmp_path):
    from builder.core.manifest import check_files

    destination = tmp_path / "out"
    process = _builder("-q", *BUNDLE, "--output", str(destination))
    assert process.wait(timeout=600) == 0, process.communicate()
    before = check_files(destination)
    # killed during its export: the scratch folder holds the stage's files
    process = _builder("-q", *BUNDLE, "--force", "--output", str(destination))
    _wait_for(lambda: any(p.name.endswith(".stage") for s in _scratch(tmp_path) for p in s.iterdir()), process)
    _killed(process)
    # killed inside the staging block, one with a model-sized file in it (what is there stays young meanwhile,
    # so that these builds' own sweeps leave it for the count below)
    for size in (10, 40 << 20):
        _age(_scratch(tmp_path), -600)
        _killed(_held_build(destination, size))
    assert check_files(destination) == before  # the old bundle, untouched
    leftovers = _scratch(tmp_path)
    assert len(leftovers) == 3
    _age(leftovers)
    process = _builder(*BUNDLE, "--force", "--output", str(destination))
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert sum(line.startswith("note: removed '") for line in stderr.splitlines()) == 3
    assert check_files(destination).files == before.files


def test_without_renameat2_a_forced_rebuild_still_replaces_the_destination(tmp_path, monkeypatch):
    import builder.core.renames

    monkeypatch.setattr(builder.core.renames, "_renameat2", lambda: None)  # an older C library
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("old")
    with staged_folder(tmp_path / "out", force=True) as staging:
        (staging / "new.txt").write_text("new")
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and [p.name for p in (tmp_path / "out").iterdir()] == ["new.txt"]


FORCE_LOOP = textwrap.dedent("""
    import pathlib, sys
    from builder.core.files import staged_folder
    destination, n = pathlib.Path(sys.argv[1]), 0
    while True:
        n += 1
        with staged_folder(destination, force=True) as staging:
            for part in range(20):
                (staging / f"part{part}").write_text(str(n))
        if n == 1:
            print("ready", flush=True)
""")


def test_a_forced_rebuild_killed_at_any_moment_leaves_the_old_or_the_new_bundle_whole(tmp_path):
    destination = tmp_path / "out"
    for kill in range(20):
        process = subprocess.Popen([sys.executable, "-c", FORCE_LOOP, str(destination)], stdout=subprocess.PIPE,
                                   text=True)
        assert process.stdout.readline() == "ready\n"
        time.sleep(0.01 * (kill % 7))
        _killed(process)
        assert destination.is_dir(), f"kill {kill}: the destination is gone"
        parts = {(destination / f"part{part}").read_text() for part in range(20)}
        assert len(parts) == 1 and len(list(destination.iterdir())) == 20, f"kill {kill}: {parts}"
