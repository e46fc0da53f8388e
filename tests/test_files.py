"""Atomic outputs: missing parents made (and removed on failure), destinations never replaced without force."""
from __future__ import annotations

import threading

import pytest

from builder.core.errors import UserError
from builder.core.files import atomic_file, staged_folder
from builder.core.renames import rename_no_replace


def test_staged_folder_makes_missing_parents_like_mkdir_p(tmp_path):
    destination = tmp_path / "a" / "b" / "bundle"
    with staged_folder(destination, force=False) as staging:
        (staging / "file.txt").write_text("ok")
    assert (destination / "file.txt").read_text() == "ok"
    assert [p.name for p in (tmp_path / "a" / "b").iterdir()] == ["bundle"]


def test_a_failed_build_removes_the_parents_it_made_and_nothing_else(tmp_path):
    (tmp_path / "kept").mkdir()
    with pytest.raises(RuntimeError):
        with staged_folder(tmp_path / "kept" / "new" / "deeper" / "bundle", force=False) as staging:
            (staging / "half.txt").write_text("half")
            raise RuntimeError("export failed")
    assert [p.name for p in tmp_path.iterdir()] == ["kept"] and not any((tmp_path / "kept").iterdir())


def test_a_file_in_the_destination_path_is_one_clear_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is not a folder"):
        with staged_folder(tmp_path / "file" / "bundle", force=False):
            pass


def test_a_destination_that_appears_during_the_build_is_left_untouched_without_force(tmp_path):
    destination = tmp_path / "dest"
    with pytest.raises(UserError, match="already exists"):
        with staged_folder(destination, force=False) as staging:
            (staging / "model.onnx").write_text("new")
            destination.mkdir()
            (destination / "precious.txt").write_text("data")
    assert [p.name for p in tmp_path.iterdir()] == ["dest"]
    assert [p.name for p in destination.iterdir()] == ["precious.txt"]


def test_with_force_an_existing_destination_is_replaced_whole(tmp_path):
    destination = tmp_path / "dest"
    destination.mkdir()
    (destination / "old.txt").write_text("old")
    with staged_folder(destination, force=True) as staging:
        (staging / "new.txt").write_text("new")
    assert [p.name for p in tmp_path.iterdir()] == ["dest"]
    assert [p.name for p in destination.iterdir()] == ["new.txt"]


def test_concurrent_forced_builds_end_with_one_complete_bundle(tmp_path):
    destination = tmp_path / "dest"
    start = threading.Barrier(4)
    errors = []

    def build(i):
        try:
            with staged_folder(destination, force=True) as staging:
                for n in range(20):
                    (staging / f"part{n}.txt").write_text(str(i))
                start.wait()
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=build, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    contents = {(destination / f"part{n}.txt").read_text() for n in range(20)}
    assert len(contents) == 1 and len(list(destination.iterdir())) == 20
    assert [p.name for p in tmp_path.iterdir()] == ["dest"]


def test_rename_no_replace_refuses_an_existing_folder(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "dst").mkdir()
    with pytest.raises(FileExistsError):
        rename_no_replace(tmp_path / "src", tmp_path / "dst")
    rename_no_replace(tmp_path / "src", tmp_path / "moved")
    assert (tmp_path / "moved").is_dir() and not (tmp_path / "src").exists()


def test_atomic_file_makes_parents_and_leaves_nothing_on_failure(tmp_path):
    with pytest.raises(ValueError):
        with atomic_file(tmp_path / "x" / "y" / "m.onnx") as f:
            f.write(b"half")
            raise ValueError
    assert not any(tmp_path.iterdir())
    with atomic_file(tmp_path / "x" / "y" / "m.onnx") as f:
        f.write(b"whole")
    assert (tmp_path / "x" / "y" / "m.onnx").read_bytes() == b"whole"


def _bundle_processes(destination, *extra):
    import subprocess
    import sys

    command = [sys.executable, "-m", "builder", "bundle", "--target", "standalone", "--model", "ppyoloe_s",
               "--input-shape", "64x64", "--runner", "local", "--output", str(destination), *extra]
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    return [(p.wait(timeout=600), p.stderr.read()) for p in processes]


def test_two_builder_processes_to_one_destination_never_lose_a_bundle(tmp_path):
    """Without --force exactly one of two concurrent builds lands and the other says the destination exists;
    with --force both succeed and one complete bundle is left, never a mix and never a leftover."""
    import json

    from builder.core.manifest import check_files

    plain = tmp_path / "plain" / "det"
    results = sorted(_bundle_processes(plain))
    assert [code for code, _ in results] == [0, 2], results
    assert results[1][1].strip().splitlines()[-1] == f"error: '{plain}' already exists (pass --force to replace it)"
    check_files(plain)  # every file the manifest lists, with its sha256, and nothing else
    forced = tmp_path / "forced" / "det"
    assert [code for code, _ in _bundle_processes(forced, "--force")] == [0, 0]
    check_files(forced)
    assert json.loads((forced / "manifest.json").read_text())["target"] == "standalone"
    assert [p.name for p in plain.parent.iterdir()] == ["det"] and [p.name for p in forced.parent.iterdir()] == ["det"]


def test_atomic_file_without_replace_never_replaces_a_file_that_appeared_meanwhile(tmp_path):
    destination = tmp_path / "m.onnx"
    with pytest.raises(UserError, match="already exists"):
        with atomic_file(destination, replace=False) as f:
            f.write(b"ours")
            destination.write_bytes(b"the user's, written while we worked")
    assert destination.read_bytes() == b"the user's, written while we worked"
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # no scratch left
    destination.unlink()
    with atomic_file(destination, replace=False) as f:
        f.write(b"ours")
    assert destination.read_bytes() == b"ours"


def test_a_file_moves_without_replacing_also_where_renameat2_is_missing(tmp_path, monkeypatch):
    import builder.core.renames
    from builder.core.renames import move_file

    monkeypatch.setattr(builder.core.renames, "_renameat2", lambda: None)  # an older C library
    (tmp_path / "src").write_text("new")
    (tmp_path / "dst").write_text("old")
    with pytest.raises(UserError, match="already exists"):
        move_file(tmp_path / "src", tmp_path / "dst", replace=False)
    assert (tmp_path / "dst").read_text() == "old" and (tmp_path / "src").exists()
    move_file(tmp_path / "src", tmp_path / "moved", replace=False)
    assert (tmp_path / "moved").read_text() == "new" and not (tmp_path / "src").exists()
