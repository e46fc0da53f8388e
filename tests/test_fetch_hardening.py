"""Weights by URL, against a server that misbehaves and a cache that breaks: one line or the right file, never a
traceback, and never a wrong file cached for good. A file that changed on the server is downloaded again (the
cache asks with its ETag or Last-Modified), and a release keys URL weights by what the URL serves."""
from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import threading

import pytest

from builder.core.errors import UserError
from builder.core.hashing import sha256_of
from builder.models.demo import CHECKPOINT as DEMO_CHECKPOINT
from builder.models.download import fetch
from cli_runs import run_cli

NAME = "w.pth"


@pytest.fixture(scope="module")
def checkpoint() -> bytes:
    """A real ppyoloe_s checkpoint (the demo's, 16 MB in half precision)."""
    from builder import models

    models.get("ppyoloe_s", checkpoint_path=str(DEMO_CHECKPOINT))  # torch makes its caches in TMPDIR once, here
    return DEMO_CHECKPOINT.read_bytes()


@pytest.fixture
def notices() -> list[str]:
    """builder's notices while the test runs (its logger does not propagate once the CLI has configured it)."""
    import logging

    seen: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: seen.append(record.getMessage())
    logger = logging.getLogger("builder")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield seen
    logger.removeHandler(handler)
    logger.setLevel(level)


def _cached(cache: pathlib.Path) -> list[pathlib.Path]:
    """The downloads in the cache (no records, parts or locks)."""
    return sorted(p for p in cache.iterdir() if p.suffix == ".pth") if cache.is_dir() else []


def _fetch_cli(url: str, capsys, tmp_path, monkeypatch) -> tuple[int, list[str], str]:
    return run_cli(["fetch", "--model", "ppyoloe_s", "--weights", url], capsys, tmp_path, monkeypatch)


# ---- point 10: one line, not a traceback ------------------------------------------------------------------------

@pytest.mark.parametrize("length", ["many", "-5", "1e6"])
def test_a_bad_content_length_is_one_line_naming_the_url(length, file_server, weights_cache, capsys, tmp_path,
                                                         monkeypatch):
    file_server.files[NAME] = b"x" * 100
    file_server.headers[NAME] = {"Content-Length": length}
    url = f"{file_server.url}/{NAME}"
    code, errors, _ = _fetch_cli(url, capsys, tmp_path, monkeypatch)
    assert code == 2 and errors == [f"error: the server sent a bad Content-Length ('{length}') for {url}"]
    assert _cached(weights_cache) == []


@pytest.mark.parametrize("path", ["w%00.pth", "w%0a.pth"])
def test_a_control_character_in_the_file_name_is_one_line(path, file_server, weights_cache, capsys, tmp_path,
                                                          monkeypatch):
    file_server.files[path] = b"x" * 100
    url = f"{file_server.url}/{path}"
    code, errors, _ = _fetch_cli(url, capsys, tmp_path, monkeypatch)
    assert code == 2 and errors == [f"error: the file name in the URL '{url}' holds a control character"]
    assert file_server.requests == []


@pytest.mark.parametrize("record", ["{\"url\": \"http", "[1, 2]", ""])
def test_a_broken_cache_record_means_the_file_is_downloaded_again(record, file_server, weights_cache, capsys,
                                                                  tmp_path, monkeypatch, checkpoint):
    file_server.files[NAME] = checkpoint
    url = f"{file_server.url}/{NAME}"
    cached = fetch(url, progress=False)
    cached.with_name(cached.name + ".json").write_text(record)  # as a full disk or a kill mid-write leaves it
    code, errors, err = _fetch_cli(url, capsys, tmp_path, monkeypatch)
    assert code == 0 and errors == [], err
    assert f"note: cached {cached.name} does not match its record; downloading it again" in err
    assert [status for _, status in file_server.answers] == [200, 200]
    assert json.loads(cached.with_name(cached.name + ".json").read_text())["sha256"] == sha256_of(cached)


@pytest.mark.parametrize("where", ["file", "file/below"])
def test_a_weights_cache_that_is_a_file_is_one_line(where, file_server, tmp_path, capsys, monkeypatch):
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("BUILDER_CACHE", str(tmp_path / where))
    file_server.files[NAME] = b"x" * 100
    code, errors, _ = _fetch_cli(f"{file_server.url}/{NAME}", capsys, tmp_path, monkeypatch)
    assert code == 2 and len(errors) == 1
    assert errors[0].startswith(f"error: cannot use '{tmp_path / where / 'weights'}' as the weights cache: ")
    assert errors[0].endswith("(set BUILDER_CACHE to a folder builder may write)")
    assert file_server.requests == []


def _without_write_permission(argv: list[str]) -> list[str]:
    """`argv` run so that file permissions bind it (root drops the capability that overrides them)."""
    if os.getuid() != 0:
        return argv
    if shutil.which("setpriv") is None:
        pytest.skip("root without setpriv cannot be made to respect a read-only folder")
    return ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", *argv]


def test_a_read_only_cache_serves_what_it_holds_and_refuses_a_download_in_one_line(file_server, weights_cache,
                                                                                      tmp_path):
    file_server.files["held.bin"] = b"h" * 100
    file_server.files["new.bin"] = b"n" * 100
    held = fetch(f"{file_server.url}/held.bin", progress=False)
    for path in weights_cache.iterdir():  # as the export stage's read-only mount of the host's cache
        path.chmod(0o444)
    weights_cache.chmod(0o555)
    try:
        probe = ("import sys\nfrom builder.models.download import fetch\nfrom builder.core.errors import UserError\n"
                 "try:\n    print(fetch(sys.argv[1], progress=False))\n"
                 "except UserError as e:\n    sys.exit('error: ' + e.one_line())\n")
        done = [subprocess.run(_without_write_permission([sys.executable, "-c", probe, f"{file_server.url}/{name}"]),
                               capture_output=True, text=True) for name in ("held.bin", "new.bin")]
    finally:
        weights_cache.chmod(0o755)
    assert done[0].returncode == 0 and done[0].stdout.strip() == str(held), done[0].stderr
    assert done[1].returncode == 1 and "Traceback" not in done[1].stderr, done[1].stderr
    assert done[1].stderr.splitlines() == [f"error: cannot download {file_server.url}/new.bin into the weights cache "
                                           f"'{weights_cache}': Permission denied (set BUILDER_CACHE to a folder "
                                           f"builder may write)"]
    assert file_server.requests == [("held.bin", None)]  # a read-only cache is used as it is: nothing asked


def test_two_fetches_of_one_url_at_once_download_it_once(file_server, weights_cache):
    blob = os.urandom(1 << 20)
    file_server.files["big.bin"] = blob
    file_server.stall_after["big.bin"] = 1000  # the first transfer waits for a second request, which never comes
    url = f"{file_server.url}/big.bin"
    results: list = [None, None]

    def run(i):
        try:
            results[i] = fetch(url, progress=False)
        except BaseException as e:  # reported by the assertion below
            results[i] = e

    first = threading.Thread(target=run, args=(0,))
    first.start()
    while not file_server.requests:
        first.join(0.01)
    second = threading.Thread(target=run, args=(1,))
    second.start()
    first.join()
    second.join()
    assert results[0] == results[1] and isinstance(results[0], pathlib.Path), results
    assert results[0].read_bytes() == blob
    assert file_server.answers == [("big.bin", 200), ("big.bin", 304)]  # one download; the second asks, and keeps it


# ---- point 11: never a wrong file cached for good ----------------------------------------------------------------

def _part_of(url: str, cache: pathlib.Path) -> pathlib.Path:
    name = url.rsplit("/", 1)[1]
    return cache / f"{hashlib.sha256(url.encode()).hexdigest()[:12]}-{name}.part"


def _interrupted(file_server, content: bytes, after: int) -> str:
    """The URL of `content` on the server, whose download into the cache was cut after `after` bytes."""
    file_server.files["a.bin"] = content
    file_server.cut_after["a.bin"] = after
    url = f"{file_server.url}/a.bin"
    with pytest.raises(UserError, match="run again to resume"):
        fetch(url, progress=False)
    return url


def test_a_stale_longer_partial_download_is_never_taken_as_complete(file_server, weights_cache):
    file_server.files["a.bin"] = b"new" * 100
    url = f"{file_server.url}/a.bin"
    weights_cache.mkdir(parents=True)
    _part_of(url, weights_cache).write_bytes(b"old" * 1000)  # left by an interrupted download of an older file
    assert fetch(url, progress=False).read_bytes() == b"new" * 100


def test_a_partial_download_the_server_answers_with_416_is_downloaded_again(file_server, weights_cache):
    url = _interrupted(file_server, b"old" * 1000, 2000)
    file_server.files["a.bin"] = b"n" * 1000  # shorter now, and this server resumes without asking If-Range
    file_server.if_range = False
    assert fetch(url, progress=False).read_bytes() == b"n" * 1000
    assert [status for _, status in file_server.answers] == [200, 416, 200]


def test_a_resumed_download_of_a_file_that_changed_is_not_spliced(file_server, weights_cache):
    url = _interrupted(file_server, b"a" * 3000, 1000)
    file_server.files["a.bin"] = b"b" * 3000  # same size, new content: If-Range makes the server send it whole
    assert fetch(url, progress=False).read_bytes() == b"b" * 3000
    assert file_server.requests[-1] == ("a.bin", "bytes=1000-")
    assert file_server.answers[-1] == ("a.bin", 200)


@pytest.mark.parametrize("content_range", ["bytes 0-2999/3000", "bytes 1000-2999/5000", "bytes */3000", "pages"])
def test_a_partial_answer_that_is_not_the_part_asked_for_is_refused(content_range, file_server, weights_cache):
    url = _interrupted(file_server, b"a" * 3000, 1000)
    file_server.headers["a.bin"] = {"Content-Range": content_range}
    with pytest.raises(UserError) as e:
        fetch(url, progress=False)
    assert e.value.one_line() == (f"the server answered a request for {url} from byte 1000 with Content-Range "
                                  f"'{content_range}' (run again to download it whole)")
    file_server.headers.clear()
    assert fetch(url, progress=False).read_bytes() == b"a" * 3000
    assert file_server.requests[-1] == ("a.bin", None)


@pytest.mark.parametrize("content_type, body", [
    ("text/html; charset=utf-8", b"<!DOCTYPE html><html><body>Sign in</body></html>"),
    ("application/xhtml+xml", b"<?xml version='1.0'?><html/>"),
    ("application/octet-stream", b"\n  <!doctype HTML>\n<html><form action=login>"),
])
def test_a_login_page_is_refused_in_one_line_naming_the_url(content_type, body, file_server, weights_cache, capsys,
                                                            tmp_path, monkeypatch):
    file_server.files[NAME] = body
    file_server.headers[NAME] = {"Content-Type": content_type}
    url = f"{file_server.url}/{NAME}"
    code, errors, _ = _fetch_cli(url, capsys, tmp_path, monkeypatch)
    assert code == 2 and errors == [f"error: {url} sent a web page, not a file (a login or error page?) (download "
                                    f"it in a browser to see; a file behind a login needs a direct link)"]
    assert _cached(weights_cache) == [] and not _part_of(url, weights_cache).exists()


def test_a_cached_download_that_does_not_load_is_dropped_so_the_next_run_downloads_it(file_server, weights_cache,
                                                                                     capsys, tmp_path, monkeypatch,
                                                                                     checkpoint):
    file_server.files[NAME] = b"Service unavailable, try later\n"  # an error text, served as a file
    url = f"{file_server.url}/{NAME}"
    code, errors, _ = _fetch_cli(url, capsys, tmp_path, monkeypatch)
    assert code == 2 and len(errors) == 1 and "not a PyTorch checkpoint" in errors[0]
    assert errors[0].endswith("(removed from the weights cache: the next run downloads it again)")
    assert _cached(weights_cache) == []
    file_server.files[NAME] = checkpoint
    code, errors, err = _fetch_cli(url, capsys, tmp_path, monkeypatch)
    assert code == 0 and errors == [], err
    assert [status for _, status in file_server.answers] == [200, 200]


# ---- point 11: revalidation -------------------------------------------------------------------------------------

@pytest.mark.parametrize("validator", ["ETag", "Last-Modified"])
def test_a_file_that_changed_on_the_server_is_downloaded_again(validator, file_server, weights_cache):
    file_server.files["a.bin"] = b"one" * 100
    if validator == "Last-Modified":
        file_server.headers["a.bin"] = {"ETag": None, "Last-Modified": "Mon, 02 Jun 2025 10:00:00 GMT"}
    url = f"{file_server.url}/a.bin"
    path = fetch(url, progress=False)
    assert fetch(url, progress=False) == path and path.read_bytes() == b"one" * 100  # unchanged: 304
    file_server.files["a.bin"] = b"two" * 200
    if validator == "Last-Modified":
        file_server.headers["a.bin"]["Last-Modified"] = "Tue, 03 Jun 2025 10:00:00 GMT"
    assert fetch(url, progress=False) == path and path.read_bytes() == b"two" * 200
    assert [status for _, status in file_server.answers] == [200, 304, 200]
    record = json.loads(path.with_name(path.name + ".json").read_text())
    assert record["size"] == 600 and record["sha256"] == sha256_of(path)


def test_a_server_that_gives_no_validator_is_asked_for_the_whole_file_each_time(file_server, weights_cache):
    file_server.files["a.bin"] = b"one" * 100
    file_server.headers["a.bin"] = {"ETag": None}
    url = f"{file_server.url}/a.bin"
    fetch(url, progress=False)
    file_server.files["a.bin"] = b"two" * 100
    assert fetch(url, progress=False).read_bytes() == b"two" * 100


def test_an_unreachable_server_leaves_the_checked_cached_file_in_use_with_a_notice(file_server, weights_cache,
                                                                                   notices):
    file_server.files["a.bin"] = b"one" * 100
    url = f"{file_server.url}/a.bin"
    path = fetch(url, progress=False)
    file_server.close()
    assert fetch(url, progress=False) == path
    [line] = notices
    assert line.startswith(f"cannot ask {file_server.url} whether a.bin changed (") and line.endswith(
        "): using the cached copy")


# ---- point 24: a release keys URL weights by their content ------------------------------------------------------

RELEASE = """\
name: detectors
version: "1.0"
registry: 127.0.0.1:5999/acme
insecure: true
runner: local
defaults: {{input_image_shape: [64, 64]}}
matrix: {{model: [ppyoloe_s, yolo_nas_s], target: [standalone]}}
weights: {{ppyoloe_s: "{url}", yolo_nas_s: coco}}
"""


def _dry_run_keys(release: pathlib.Path, capsys) -> dict[str, str]:
    from builder.cli import main

    capsys.readouterr()
    assert main(["release", str(release), "--dry-run"]) == 0
    rows = capsys.readouterr().out.splitlines()[1:-1]
    return {row.split()[1]: next(word for word in row.split() if len(word) == 12) for row in rows}


def test_a_release_keys_url_weights_by_the_content_the_url_serves(file_server, weights_cache, tmp_path, capsys,
                                                                   monkeypatch):
    file_server.files["w/ppyoloe_s.pth"] = b"one"
    file_server.files["mirror/yolo_nas_s_coco.pth"] = b"coco one"
    monkeypatch.setenv("BUILDER_WEIGHTS_MIRROR", f"{file_server.url}/mirror")
    release = tmp_path / "release.yaml"
    release.write_text(RELEASE.format(url=f"{file_server.url}/w/ppyoloe_s.pth"))
    first = _dry_run_keys(release, capsys)
    assert sorted(first) == ["ppyoloe_s", "yolo_nas_s"]
    assert _dry_run_keys(release, capsys) == first  # the same content: the same keys
    file_server.files["w/ppyoloe_s.pth"] = b"two"
    second = _dry_run_keys(release, capsys)
    assert second["ppyoloe_s"] != first["ppyoloe_s"] and second["yolo_nas_s"] == first["yolo_nas_s"]
    file_server.files["mirror/yolo_nas_s_coco.pth"] = b"coco two"
    assert _dry_run_keys(release, capsys)["yolo_nas_s"] != first["yolo_nas_s"]
    file_server.files["w/ppyoloe_s.pth"] = b"one"
    assert _dry_run_keys(release, capsys)["ppyoloe_s"] == first["ppyoloe_s"]  # the old content again: its key


def test_a_build_whose_url_weights_changed_since_the_release_was_planned_refuses_to_build(file_server, weights_cache,
                                                                                          tmp_path, monkeypatch):
    """A worker fetches the weights again: had the URL's file changed since the keys were made, the bundle pushed
    under its key would be built from other bytes than the key names."""
    from builder.core.errors import UserError
    from builder.releases.run import _job, with_keys
    from builder.releases.spec import plan, read_release_file
    from builder.releases.worker import _build

    file_server.files["w/ppyoloe_s.pth"] = b"one"
    file_server.files["mirror/yolo_nas_s_coco.pth"] = b"coco one"
    monkeypatch.setenv("BUILDER_WEIGHTS_MIRROR", f"{file_server.url}/mirror")
    release = tmp_path / "release.yaml"
    release.write_text(RELEASE.format(url=f"{file_server.url}/w/ppyoloe_s.pth"))
    spec = read_release_file(release)
    [job] = [_job(spec, p) for p in with_keys(spec, plan(spec)) if p.spec.export.model == "ppyoloe_s"]
    file_server.files["w/ppyoloe_s.pth"] = b"two"
    posted = []
    with pytest.raises(UserError, match="not the ones the release was planned with"):
        _build(job, posted.append)
    assert posted == []  # refused before any work was announced
