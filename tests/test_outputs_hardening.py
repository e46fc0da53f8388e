"""Outputs never replace what the user owns without --force, whenever it appears: a bundle's folder and its archive
land together or not at all, --emit's and --report's files are refused like a bundle folder, and the current folder
(or one above it) is never a destination."""
from __future__ import annotations

import gzip
import pathlib

import pytest
import yaml

import builder
import builder.core.files
import builder.core.manifest
import builder.verification.verify
from builder.cli import main
from builder.core.errors import UserError
from cli_runs import listing, run_cli

SMALL = ["--model", "ppyoloe_s", "--input-shape", "64x64", "--runner", "local"]
BUNDLE = ["bundle", "--target", "standalone", *SMALL]
OPTIONS = {"target": "standalone", "model": "ppyoloe_s", "input_image_shape": (64, 64), "runner": "local"}
RELEASE = {"name": "detectors", "version": "1.0", "registry": "127.0.0.1:5999/acme", "insecure": True,
           "runner": "local", "defaults": {"input_image_shape": [64, 64]},
           "matrix": {"model": ["yolo_nas_s"], "target": ["triton"]},
           "weights": {"yolo_nas_s": "https://models.example.com/yolo_nas_s.pth"}}


def _after(monkeypatch, module, name: str, appear) -> None:
    """Run `appear` right after `module.name` does its work: a user's file or folder shows up at that moment."""
    real = getattr(module, name)

    def wrapped(*args, **kwargs):
        result = real(*args, **kwargs)
        appear()
        return result

    monkeypatch.setattr(module, name, wrapped)


def _users_folder(path: pathlib.Path):
    def appear():
        path.mkdir()
        (path / "mine.txt").write_text("mine")
    return appear


def _users_file(path: pathlib.Path):
    return lambda: path.write_text("mine")


# --- a bundle's folder and archive: together or not at all ---------------------------------------------------------

def test_a_bundle_refused_because_its_folder_appeared_meanwhile_leaves_no_archive(tmp_path, monkeypatch):
    destination = tmp_path / "det"
    _after(monkeypatch, builder.core.manifest, "write_manifest", _users_folder(destination))
    with pytest.raises(UserError, match=f"'{destination}' already exists"):
        builder.bundle(destination, archive=True, **OPTIONS)
    assert listing(tmp_path) == {"det", "det/mine.txt"}
    assert (destination / "mine.txt").read_text() == "mine"


@pytest.mark.parametrize("module, name", [
    (builder.core.manifest, "write_manifest"),  # during the build: refused before the folder lands
    (builder.core.files, "_move_into_place"),  # the last moment: the folder has landed, and is taken back
], ids=["during-the-build", "as-the-folder-lands"])
def test_an_archive_that_appears_meanwhile_is_not_replaced_and_no_folder_is_left(module, name, tmp_path, monkeypatch):
    destination, archive = tmp_path / "det", tmp_path / "det.tar.gz"
    _after(monkeypatch, module, name, _users_file(archive))
    with pytest.raises(UserError, match=f"'{archive}' already exists"):
        builder.bundle(destination, archive=True, **OPTIONS)
    assert listing(tmp_path) == {"det.tar.gz"} and archive.read_text() == "mine"


def test_force_replaces_both_the_folder_and_the_archive(tmp_path):
    destination, archive = tmp_path / "det", tmp_path / "det.tar.gz"
    _users_folder(destination)()
    archive.write_text("old")
    result = builder.bundle(destination, archive=True, force=True, **OPTIONS)
    assert result.archive == archive and gzip.decompress(archive.read_bytes())
    assert "mine.txt" not in listing(destination) and "manifest.json" in listing(destination)
    assert {p.name for p in tmp_path.iterdir()} == {"det", "det.tar.gz"}


def test_a_folder_that_appears_at_the_archive_path_is_refused_even_with_force_and_the_old_bundle_stays(
        tmp_path, monkeypatch):
    destination, archive = tmp_path / "det", tmp_path / "det.tar.gz"
    _users_folder(destination)()
    _after(monkeypatch, builder.core.manifest, "write_manifest", _users_folder(archive))
    with pytest.raises(UserError, match=f"'{archive}' exists and is not a file"):
        builder.bundle(destination, archive=True, force=True, **OPTIONS)
    assert listing(tmp_path) == {"det", "det/mine.txt", "det.tar.gz", "det.tar.gz/mine.txt"}


def test_a_folder_at_the_archive_path_is_refused_up_front_even_with_force(tmp_path, capsys, monkeypatch):
    (tmp_path / "det.tar.gz").mkdir()
    code, errors, _ = run_cli([*BUNDLE, "--archive", "--force", "--output", str(tmp_path / "det")], capsys, tmp_path,
                              monkeypatch)
    assert code == 2 and errors == [f"error: '{tmp_path / 'det.tar.gz'}' exists and is not a file"]


# --- the current folder, or one above it, is never a folder destination ---------------------------------------------

@pytest.mark.parametrize("given", [".", "..", "", "new/..", "{cwd}", "{cwd}/.", "{parent}", "/"])
@pytest.mark.parametrize("force", [[], ["--force"]], ids=["plain", "force"])
@pytest.mark.parametrize("command", [[*BUNDLE, "--output"], ["pull", "127.0.0.1:9/acme/det:1"]],
                         ids=["bundle", "pull"])
def test_the_current_folder_or_one_above_it_is_refused_as_a_destination(command, force, given, tmp_path, capsys,
                                                                        monkeypatch):
    cwd = tmp_path / "out"  # where run_cli runs the command
    destination = given.format(cwd=cwd, parent=tmp_path)
    cwd.mkdir()
    (cwd / "mine.txt").write_text("mine")
    code, errors, err = run_cli([*command, destination, *force], capsys, tmp_path, monkeypatch)
    assert code == 2 and len(errors) == 1, err
    assert "is the current folder or a folder above it" in errors[0]
    assert (cwd / "mine.txt").read_text() == "mine"


def test_a_link_to_the_current_folder_is_replaced_as_a_link_not_followed(tmp_path, monkeypatch):
    """Only the link is the destination: --force replaces it, and what it pointed at is untouched."""
    here = tmp_path / "here"
    here.mkdir()
    (here / "mine.txt").write_text("mine")
    monkeypatch.chdir(here)
    (tmp_path / "link").symlink_to(here)
    with pytest.raises(UserError, match="already exists"):
        builder.bundle(tmp_path / "link", **OPTIONS)
    builder.bundle(tmp_path / "link", force=True, **OPTIONS)
    assert not (tmp_path / "link").is_symlink() and (tmp_path / "link" / "manifest.json").exists()
    assert listing(here) == {"mine.txt"}


@pytest.mark.parametrize("given", ["./.onnx", ".onnx", "a/../.onnx", "x.onnx/..", ".", "..", "/", ""])
def test_an_odd_export_output_is_one_line(given, tmp_path, capsys, monkeypatch):
    code, errors, err = run_cli(["export", *SMALL, "--output", given, "--force"], capsys, tmp_path, monkeypatch)
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, err


# --- release --emit kuberay -o FILE ----------------------------------------------------------------------------------

def _release_file(tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "release.yaml"
    path.write_text(yaml.safe_dump(RELEASE, sort_keys=False))
    return path


def test_emit_refuses_an_existing_output_file_unless_forced(tmp_path, capsys, monkeypatch):
    job = tmp_path / "job.yaml"
    job.write_text("mine")
    argv = ["release", str(_release_file(tmp_path)), "--emit", "kuberay", "-o", str(job)]
    code, errors, _ = run_cli(argv, capsys, tmp_path, monkeypatch)
    assert code == 2 and errors == [f"error: '{job}' already exists (pass --force to replace it)"]
    assert job.read_text() == "mine"
    assert main([*argv, "--force"]) == 0
    assert [d["kind"] for d in yaml.safe_load_all(job.read_text())] == ["ConfigMap", "RayJob"]


def test_emit_never_replaces_an_output_file_that_appears_meanwhile(tmp_path, capsys, monkeypatch):
    import builder.releases.kuberay

    job = tmp_path / "job.yaml"
    _after(monkeypatch, builder.releases.kuberay, "emit_kuberay", _users_file(job))
    assert main(["release", str(_release_file(tmp_path)), "--emit", "kuberay", "-o", str(job)]) == 2
    assert capsys.readouterr().err == f"error: '{job}' already exists (pass --force to replace it)\n"
    assert job.read_text() == "mine" and {p.name for p in tmp_path.iterdir()} == {"release.yaml", "job.yaml"}


@pytest.mark.parametrize("command, message", [
    (["release", "{release}", "--emit", "kuberay", "--force"], "--force replaces --output's file: give -o FILE"),
    (["release", "{release}", "--force"], "--force replaces --output's file: give -o FILE"),
    (["verify", "{root}/det", "--force"], "--force replaces --report's file: give --report FILE"),
])
def test_force_with_no_file_to_replace_is_refused(command, message, tmp_path, capsys, monkeypatch):
    argv = [a.format(release=_release_file(tmp_path), root=tmp_path) for a in command]
    code, errors, _ = run_cli(argv, capsys, tmp_path, monkeypatch)
    assert code == 2 and errors == [f"error: {message}"]


# --- verify --report FILE --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_bundle(tmp_path_factory) -> pathlib.Path:
    return builder.bundle(tmp_path_factory.mktemp("v") / "det", **OPTIONS).destination


def test_verify_refuses_an_existing_report_before_verifying_unless_forced(small_bundle, tmp_path, capsys,
                                                                          monkeypatch):
    report = tmp_path / "r.html"
    report.write_text("mine")
    ran = []
    _after(monkeypatch, builder.verification.verify, "verify", lambda: ran.append(True))
    code, errors, _ = run_cli(["verify", str(small_bundle), "--count", "1", "--report", str(report)], capsys,
                              tmp_path, monkeypatch)
    assert code == 2 and errors == [f"error: '{report}' already exists (pass --force to replace it)"]
    assert report.read_text() == "mine" and not ran
    # random weights find nothing, so the gate fails (3); the report is written all the same
    assert main(["verify", str(small_bundle), "--count", "1", "--report", str(report), "--force"]) == 3
    assert report.read_text().startswith("<!doctype html>") and ran


def test_verify_never_replaces_a_report_that_appears_meanwhile(small_bundle, tmp_path, monkeypatch):
    report = tmp_path / "r.png"
    _after(monkeypatch, builder.verification.verify, "verify", _users_file(report))
    with pytest.raises(UserError, match=f"'{report}' already exists"):
        builder.verify(small_bundle, count=1, report=str(report))
    assert report.read_text() == "mine" and [p.name for p in tmp_path.iterdir()] == ["r.png"]
    report.unlink()
    monkeypatch.undo()
    assert builder.verify(small_bundle, count=1, report=str(report), force=True).report_path == report
