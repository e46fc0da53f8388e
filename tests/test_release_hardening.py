"""`builder release` against careless input and hostile circumstances: release files YAML reads oddly, a matrix
that multiplies out to billions, report folders the user keeps other files in, cluster addresses where no
cluster answers, and SIGTERM or Ctrl-C in the middle of a build. Each ends in one `error:` line, with nothing of
the user's touched and nothing left in TMPDIR."""
from __future__ import annotations

import contextlib
import json
import os
import pathlib
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.request

import pytest

from cli_runs import listing, run_cli

BASE = """\
name: detectors
version: "1.0"
registry: {registry}/acme
insecure: true
runner: local
verify: false
defaults: {{input_image_shape: [64, 64], target: standalone}}
"""
#: a registry address where nothing listens: a check that contacts it first fails with another error
NOWHERE = "127.0.0.1:1"
#: what the libraries leave in TMPDIR on every build, finished or not: ONNX Runtime's session id file and torch's
#: (empty) inductor cache folder
LIBRARY_LEFTOVERS = {".ses", "torchinductor_root"}


def release_file(folder: pathlib.Path, text: str, registry: str = NOWHERE, name: str = "release.yaml") -> pathlib.Path:
    path = folder / name
    path.write_text(BASE.format(registry=registry) + text)
    return path


# ---- release files that YAML reads as something other than text ---------------------------------------------

CASES = [
    ("a date in the matrix", "matrix: {model: [ppyoloe_s], name: [det, 2026-11-02]}\n",
     "'name' lists 2026-11-02, which YAML reads as a date: quote it"),
    ("a timestamp in the matrix", "matrix: {model: [ppyoloe_s], name: [2026-11-02T10:00:00]}\n",
     "'name' lists 2026-11-02 10:00:00, which YAML reads as a date and time: quote it"),
    ("a set in the matrix", "matrix: {model: [ppyoloe_s], name: [!!set {a, b}]}\n",
     "which YAML reads as a set: quote it"),
    ("a set written with question marks", "matrix:\n  model: [ppyoloe_s]\n  name:\n    - !!set\n      ? a\n",
     "'name' lists {'a'}, which YAML reads as a set: quote it"),
    ("a date in an exclude entry", "matrix: {model: [ppyoloe_s], name: [a, b]}\nexclude: [{name: 2026-11-02}]\n",
     "invalid exclude: entry 1: 'name' is 2026-11-02, which YAML reads as a date: quote it"),
    ("a set in an exclude entry", "matrix: {model: [ppyoloe_s], name: [a, b]}\nexclude: [{model: !!set {a}}]\n",
     "invalid exclude: entry 1: 'model' is {'a'}, which YAML reads as a set: quote it"),
    ("a date in an include entry", "matrix: {model: [ppyoloe_s]}\ninclude: [{model: ppyoloe_s, name: 2026-11-02}]\n",
     "invalid include: entry 1: 'name' is 2026-11-02, which YAML reads as a date: quote it"),
    ("a date inside an include's resources", "matrix: {model: [ppyoloe_s]}\n"
                                             "include: [{model: ppyoloe_s, resources: {disk: 2026-11-02}}]\n",
     "invalid include: entry 1: 'resources' holds 2026-11-02, which YAML reads as a date: quote it"),
    ("a set as a matrix list", "matrix: {model: [ppyoloe_s], name: !!set {b, a}}\n",
     "which YAML reads as a set: write a list, e.g. [a, b]"),
    ("binary data in the matrix", "matrix: {model: [ppyoloe_s], name: [!!binary aGk=]}\n",
     "which YAML reads as binary data: quote it"),
]


@pytest.mark.parametrize("text, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_value_yaml_reads_as_a_date_a_set_or_binary_is_one_line_saying_how_to_write_it(text, expected, tmp_path,
                                                                                        capsys, monkeypatch):
    path = release_file(tmp_path, text)
    code, errors, stderr = run_cli(["release", str(path), "--dry-run"], capsys, tmp_path, monkeypatch)
    assert code == 2 and len(errors) == 1 and "Traceback" not in stderr, stderr
    assert expected in errors[0], errors[0]


def test_quoted_dates_are_text(tmp_path, capsys, monkeypatch):
    path = release_file(tmp_path, "matrix: {model: [ppyoloe_s], name: ['2026-11-02', det]}\n"
                                  "exclude: [{name: det}]\n")
    code, errors, stderr = run_cli(["release", str(path), "--dry-run"], capsys, tmp_path, monkeypatch)
    assert code == 0 and errors == [], stderr


def test_a_matrix_that_multiplies_out_to_billions_is_refused_before_it_is_expanded(tmp_path):
    """8 keys x 30 values, about 1 KB: 656,100,000,000 combinations. Expanding them first would take all memory;
    the command runs with 2 GiB of address space, which a refusal needs a fraction of."""
    matrix = {f"option{k}": list(range(30)) for k in range(8)}
    path = release_file(tmp_path, f"matrix: {json.dumps(matrix)}\n")
    assert path.stat().st_size < 1500

    def bounded():
        resource.setrlimit(resource.RLIMIT_AS, (2 * 2 ** 30, 2 * 2 ** 30))

    done = subprocess.run([sys.executable, "-m", "builder", "release", str(path), "--dry-run"], capture_output=True,
                          text=True, timeout=300, preexec_fn=bounded)
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.splitlines() == [
        f"error: release file '{path}': invalid matrix: its lists multiply out to 656100000000 combinations; "
        f"at most 1024 (before exclude)"], done.stderr[-3000:]


# ---- the report folder: three files written, nothing else touched, every problem found up front ---------------

def _result(tmp_path: pathlib.Path, version: str = "1.0"):
    from builder.releases.run import Outcome, ReleaseResult, with_keys
    from builder.releases.spec import plan, read_release_file

    spec = read_release_file(release_file(tmp_path, "matrix: {model: [ppyoloe_s]}\n"))
    if version != "1.0":
        spec = spec.model_copy(update={"version": version})
    planned = with_keys(spec, plan(spec))
    result = ReleaseResult(spec, planned)
    result.outcomes[planned[0].key] = Outcome("built", "sha256:" + "ab" * 32, 1000, 500, 1.0, "f" * 56, "-")
    return result


@pytest.mark.parametrize("where", ["docs", ".", ".."])
def test_the_report_is_three_files_written_beside_what_the_folder_holds(where, tmp_path, monkeypatch):
    from builder.releases.report import write_report

    work = tmp_path / "work" / "here"
    (work / "docs").mkdir(parents=True)
    for folder in (work / "docs", work, work.parent):
        (folder / "notes.md").write_text("the user's own notes\n")
    monkeypatch.chdir(work)
    folder = (work / where).resolve()
    before = set(os.listdir(folder))
    report = write_report(_result(tmp_path), pathlib.Path(where))
    assert report.resolve() == folder / "report.md"
    assert set(os.listdir(folder)) == before | {"report.md", "report.html", "report.json"}
    assert json.loads((folder / "report.json").read_text())["version"] == "1.0"
    # the release run again replaces its own three files, and only them
    write_report(_result(tmp_path), pathlib.Path(where))
    assert set(os.listdir(folder)) == before | {"report.md", "report.html", "report.json"}
    assert (folder / "notes.md").read_text() == "the user's own notes\n"


def test_a_report_folder_holding_another_report_is_refused_and_left_alone(tmp_path):
    from builder.core.errors import UserError
    from builder.releases.report import check_report_dir, write_report

    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "report.md").write_text("the user's report\n")
    with pytest.raises(UserError, match=r"report.md' exists and is not the report of release detectors 1.0"):
        check_report_dir(folder, _result(tmp_path).spec)
    write_report(_result(tmp_path, "0.9"), tmp_path / "older")
    with pytest.raises(UserError, match=r"is not the report of release detectors 1.0"):
        check_report_dir(tmp_path / "older", _result(tmp_path).spec)
    # a file that appears after the check (the release ran for hours meanwhile) is not replaced either
    with pytest.raises(UserError, match=r"report.md' already exists") as refused:
        write_report(_result(tmp_path), folder)
    assert refused.value.hint == "give another --report-dir, or move the file away"  # release has no --force
    assert (folder / "report.md").read_text() == "the user's report\n"


@pytest.mark.parametrize("case", ["a file", "under a file", "a virtual filesystem", "another report"])
def test_a_report_folder_that_cannot_take_the_report_is_refused_before_the_registry_is_asked(case, tmp_path, capsys,
                                                                                             monkeypatch):
    path = release_file(tmp_path, "matrix: {model: [ppyoloe_s]}\n")
    (tmp_path / "file").write_text("a file\n")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "report.json").write_text('{"name": "someone else"}\n')
    report_dir, expected = {
        "a file": (tmp_path / "file", "is not a folder"),
        "under a file": (tmp_path / "file" / "reports", "is not a folder, so"),
        "a virtual filesystem": (pathlib.Path("/proc/builder-report"), "cannot write '/proc/builder-report"),
        "another report": (tmp_path / "docs", "report.json' exists and is not the report of release detectors 1.0"),
    }[case]
    # the registry (NOWHERE) is never asked: that would be another error line
    code, errors, stderr = run_cli(["release", str(path), "--report-dir", str(report_dir)], capsys, tmp_path,
                                   monkeypatch, watched=(tmp_path / "docs",))
    assert code == 2 and len(errors) == 1 and "Traceback" not in stderr, stderr
    assert expected in errors[0], errors[0]
    assert (tmp_path / "file").read_text() == "a file\n"


# ---- a real release: a local registry, Ray started by the command ----------------------------------------------

@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    from oci_registry import running_registry

    with running_registry(tmp_path_factory.mktemp("registry")) as address:
        yield address


@pytest.fixture
def ray_env(tmp_path):
    """The environment of a `builder release` subprocess: TMPDIR of its own (its builds' scratch goes there), Ray's
    files in a short folder of their own (they hold Unix sockets), and a home of its own with Ray's token
    authentication off (see tests/test_release_cluster.py)."""
    ray_tmp = pathlib.Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    for name in ("tmp", "home"):
        (tmp_path / name).mkdir(exist_ok=True)
    yield {**os.environ, "TMPDIR": str(tmp_path / "tmp"), "RAY_TMPDIR": str(ray_tmp), "HOME": str(tmp_path / "home"),
           "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "PYTHONDONTWRITEBYTECODE": "1"}
    shutil.rmtree(ray_tmp, ignore_errors=True)


def _left_in(tmp: pathlib.Path) -> set[str]:
    """What is left under TMPDIR `tmp`, less LIBRARY_LEFTOVERS."""
    return {path for path in listing(tmp) if path.split("/")[0] not in LIBRARY_LEFTOVERS}


def _tags(registry: str) -> list[str]:
    try:
        with urllib.request.urlopen(f"http://{registry}/v2/acme/detectors/tags/list", timeout=30) as answer:
            return json.load(answer)["tags"] or []
    except urllib.error.HTTPError:  # no such repository yet
        return []


def _release(arguments: list[str], env: dict, cwd: pathlib.Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "builder", "release", *arguments], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)


@pytest.mark.registry
def test_a_release_writes_its_report_into_the_current_folder_and_then_its_parent(registry, ray_env, tmp_path):
    work = tmp_path / "work" / "here"
    work.mkdir(parents=True)
    for folder in (work, work.parent):
        (folder / "notes.md").write_text("the user's own notes\n")
    path = release_file(tmp_path, "matrix: {model: [ppyoloe_s]}\n", registry)
    process = _release([str(path), "--cluster", "local", "--report-dir", "."], ray_env, work)
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr[-3000:]
    assert sorted(os.listdir(work)) == ["notes.md", "report.html", "report.json", "report.md"]
    assert "1.0" in _tags(registry)
    # again, to the parent folder: every bundle is in the registry now, so the report is all that is written
    process = _release([str(path), "--report-dir", ".."], ray_env, work)
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr[-3000:]
    assert "0 built, 1 cached, 0 failed" in stdout
    assert sorted(os.listdir(work.parent)) == ["here", "notes.md", "report.html", "report.json", "report.md"]
    assert (work / "notes.md").read_text() == (work.parent / "notes.md").read_text() == "the user's own notes\n"
    assert _left_in(tmp_path / "tmp") == set()


@pytest.mark.registry
@pytest.mark.parametrize("signum, code, line", [(signal.SIGTERM, 143, "error: terminated"),
                                                (signal.SIGINT, 130, "error: interrupted")])
def test_a_signal_during_a_build_cancels_it_cleans_up_and_pushes_no_index(signum, code, line, registry, ray_env,
                                                                          tmp_path):
    version = f"5.{signum}"
    # a name of its own gives a build key of its own: built here, never found in the registry
    path = release_file(tmp_path, f"matrix: {{model: [ppyoloe_s], name: [signal{signum}]}}\n", registry)
    path.write_text(path.read_text().replace('version: "1.0"', f'version: "{version}"'))
    process = _release([str(path), "--cluster", "local", "--report-dir", str(tmp_path / "report")], ray_env, tmp_path)
    seen = []
    for got in process.stderr:  # once the build runs, its scratch folder under TMPDIR holds the bundle in the making
        seen.append(got)
        if got.startswith("note: [1]") and ": exporting" in got:
            break
    else:
        pytest.fail("the build never started:\n" + "".join(seen))
    assert _left_in(tmp_path / "tmp"), "the build's scratch folder is not in TMPDIR"
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == code, "".join(seen) + stderr
    assert stderr.strip().splitlines()[-1] == line and "Traceback" not in stderr and "*** " not in stderr, stderr
    assert stdout == ""  # no summary: the release did not finish
    assert _left_in(tmp_path / "tmp") == set()  # the build's own cleanup ran
    assert version not in _tags(registry) and not (tmp_path / "report").exists()


# ---- cluster addresses where no cluster answers -----------------------------------------------------------------

@contextlib.contextmanager
def _listening():
    """A port that accepts connections and says nothing."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield server.getsockname()[1]


@pytest.mark.registry
@pytest.mark.parametrize("case", ["nothing listens", "ray:// where nothing listens", "an HTTP server",
                                  "auto from RAY_ADDRESS", "silence", "not an address"])
def test_an_address_where_no_ray_cluster_answers_fails_in_seconds_with_one_line(case, registry, tmp_path, capsys,
                                                                                monkeypatch):
    path = release_file(tmp_path, "matrix: {model: [ppyoloe_s], precision: [fp16]}\n", registry)
    tags = _tags(registry)
    with _listening() as quiet:
        address, expected = {
            "nothing listens": (NOWHERE, "no Ray cluster answers at 127.0.0.1:1"),
            "ray:// where nothing listens": (f"ray://{NOWHERE}", "no Ray cluster answers at ray://127.0.0.1:1"),
            "an HTTP server": (registry, "is not a Ray cluster: it does not answer as Ray does"),
            "auto from RAY_ADDRESS": ("auto", "no Ray cluster answers at auto"),
            "silence": (f"127.0.0.1:{quiet}", "within 5 s"),
            "not an address": ("127.0.0.1", "--address '127.0.0.1' is not a Ray cluster's address"),
        }[case]
        monkeypatch.setenv("RAY_ADDRESS", NOWHERE)
        code, errors, stderr = run_cli(["release", str(path), "--address", address, "--report-dir",
                                        str(tmp_path / "report")], capsys, tmp_path, monkeypatch)
    assert code == 2 and len(errors) == 1 and "Traceback" not in stderr, stderr
    assert expected in errors[0], errors[0]
    assert _tags(registry) == tags  # nothing was pushed
