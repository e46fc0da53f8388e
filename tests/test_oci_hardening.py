"""push and pull against a hostile or broken registry: every answer is checked, every failure is one line."""
from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import pathlib
import socket
import subprocess
import sys
import tarfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Optional

import pytest

from builder.core.archive import write_archive
from builder.core.errors import UserError
from builder.core.manifest import write_manifest
from builder.oci.client import MANIFEST_MEDIA_TYPE, manifest_bytes, sha256_digest
from builder.oci.transfer import ARTIFACT_TYPE, CONFIG_MEDIA_TYPE, LAYER_MEDIA_TYPE, pull, push

# a bundle's manifest.json without its files: pull checks files against it, it needs no model behind it
DESCRIPTION = {
    "name": "det", "version": 1, "target": "standalone",
    "model": {"variant": "yolo_nas_s", "family": "yolo_nas", "num_classes": 2, "weights": {"source": "random"}},
    "precision": "fp32", "nms": "onnx", "runtime": "onnxruntime",
    "signature": {"inputs": [{"name": "images", "dtype": "uint8", "shape": [1, 3, 64, 64]}],
                  "outputs": [{"name": "num_predictions", "dtype": "int64", "shape": [1, 1]}]},
    "preprocessing": {"channel_order": "RGB", "mean": [0.0, 0.0, 0.0], "std": [255.0, 255.0, 255.0],
                      "resize": "letterbox", "pad_value": 114, "letterbox_margin": 0, "in_graph": [],
                      "resize_description": "letterbox into 64x64"},
    "postprocessing": {"confidence_threshold": 0.25, "iou_threshold": 0.7, "pre_nms_top_k": 100,
                       "max_detections": 100, "class_aware": True, "output_format": "batch"},
    "class_names": ["cat", "dog"], "versions": {"builder": "test"},
}
# a long non-ASCII name makes the archive carry a pax header, which the unpack bound must allow for
LONG_NAME = "client/" + "é" * 90 + ".txt"
FILES = {"README.md": b"# det\n", "model/1/model.onnx": bytes(range(256)) * 64, "model/labels.txt": b"cat\ndog\n",
         LONG_NAME: b"long\n",
         # what push holds manifest.json to: the options the bundle was built with
         "build.yaml": b"target: standalone\nname: det\nexport: {model: yolo_nas_s}\n"}


def make_bundle(folder: pathlib.Path, files: dict[str, bytes] = FILES) -> pathlib.Path:
    for relative, data in files.items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_bytes(data)
    write_manifest(folder, DESCRIPTION)
    return folder


def _files(folder: pathlib.Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


class FakeRegistry:
    """The endpoints a pull reads (manifests and blobs), on 127.0.0.1, answering what a test puts in.

    `manifests` and `blobs` map a tag or digest to bytes; `answers` maps a URL path to a function that
    answers the request itself (a broken connection, an odd status); `before_blob` runs before a blob is
    sent (a destination appearing mid-pull).
    """

    def __init__(self) -> None:
        self.manifests: dict[str, bytes] = {}
        self.blobs: dict[str, bytes] = {}
        self.answers: dict[str, Callable[[BaseHTTPRequestHandler], None]] = {}
        self.before_blob: dict[str, Callable[[], None]] = {}
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _answer(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))  # keeps the connection usable
                path = self.path.split("?", 1)[0]
                if path in fake.answers:
                    fake.answers[path](self)
                    return
                kind, _, key = path.rpartition("/")
                body = None
                if kind.endswith("/manifests"):
                    body = fake.manifests.get(key)
                elif kind.endswith("/blobs"):
                    if key in fake.before_blob:
                        fake.before_blob[key]()
                    body = fake.blobs.get(key)
                elif path == "/v2/":
                    body = b"{}"
                if body is None:
                    send(self, 404, b'{"errors": [{"code": "NAME_UNKNOWN", "message": "not here"}]}')
                else:
                    send(self, 200, body, {"Content-Type": MANIFEST_MEDIA_TYPE} if kind.endswith("/manifests") else {})

            do_GET = do_HEAD = do_POST = do_PUT = _answer

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_port}"

    def publish(self, manifest, tag: str = "1") -> str:
        """Serves `manifest` (an object, or bytes as they are) under `tag` and its digest; returns the digest."""
        data = manifest if isinstance(manifest, bytes) else manifest_bytes(manifest)
        digest = sha256_digest(data)
        self.manifests[tag] = self.manifests[digest] = data
        return digest

    def artifact(self, bundle: pathlib.Path, work: pathlib.Path, layer: Optional[bytes] = None) -> dict:
        """The OCI manifest push would write for `bundle` (or with `layer` as its archive), its blobs served."""
        config = (bundle / "manifest.json").read_bytes()
        if layer is None:
            layer = write_archive(bundle, work / "layer.tar.gz", root=DESCRIPTION["name"]).read_bytes()
        descriptors = []
        for data, media_type in ((config, CONFIG_MEDIA_TYPE), (layer, LAYER_MEDIA_TYPE)):
            self.blobs[sha256_digest(data)] = data
            descriptors.append({"mediaType": media_type, "digest": sha256_digest(data), "size": len(data)})
        return {"schemaVersion": 2, "mediaType": MANIFEST_MEDIA_TYPE, "artifactType": ARTIFACT_TYPE,
                "config": descriptors[0], "layers": [descriptors[1]]}


def send(handler: BaseHTTPRequestHandler, status: int, body: bytes, headers: Optional[dict] = None,
         cut_after: Optional[int] = None, stall: float = 0.0) -> None:
    """Answer with `body`; with `cut_after`, only that many bytes of it, then the connection closes (after
    `stall` seconds)."""
    handler.send_response(status)
    for key, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
        handler.send_header(key, value)
    handler.end_headers()
    if handler.command == "HEAD":
        return
    handler.wfile.write(body if cut_after is None else body[:cut_after])
    handler.wfile.flush()
    if cut_after is not None:
        time.sleep(stall)
        handler.close_connection = True
        with contextlib.suppress(OSError):
            handler.connection.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def fake():
    registry = FakeRegistry()
    thread = threading.Thread(target=registry.server.serve_forever, daemon=True)
    thread.start()
    yield registry
    registry.server.shutdown()
    registry.server.server_close()


@pytest.fixture
def bundle(tmp_path):
    (tmp_path / "bundle").mkdir()
    return make_bundle(tmp_path / "bundle")


def builder_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "builder", *args], capture_output=True, text=True, timeout=timeout)


def one_error(done: subprocess.CompletedProcess, code: int = 2) -> str:
    """The single `error:` line of a failed command (and no traceback)."""
    assert "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == code and len(errors) == 1, done.stderr
    return errors[0]


def nothing_left(work: pathlib.Path) -> None:
    assert list(work.iterdir()) == [], list(work.iterdir())


# --- 1. the OCI manifest and its descriptors are validated as they arrive --------------------------------


def _mutated(manifest: dict, change: Callable[[dict], None]) -> dict:
    copy = json.loads(json.dumps(manifest))
    change(copy)
    return copy


MALFORMED = {
    "a JSON list": (lambda m: [m], "the manifest"),
    "a JSON string": (lambda m: "manifest", "the manifest"),
    "not JSON": (lambda m: b"<html>gateway</html>", "the manifest: Invalid JSON"),
    "nested too deep": (lambda m: b"[" * 100_000 + b"]" * 100_000, "the manifest: Invalid JSON"),
    "a layer size that is a word": (lambda m: _mutated(m, lambda x: x["layers"][0].update(size="abc")),
                                    "layers.0.size"),
    "a negative size": (lambda m: _mutated(m, lambda x: x["layers"][0].update(size=-1)), "layers.0.size"),
    "a size beyond any blob": (lambda m: _mutated(m, lambda x: x["layers"][0].update(size=1 << 62)), "layers.0.size"),
    "a size that is true": (lambda m: _mutated(m, lambda x: x["config"].update(size=True)), "config.size"),
    "a config that is a string": (lambda m: _mutated(m, lambda x: x.update(config="sha256:abc")), "config"),
    "a digest that is an integer": (lambda m: _mutated(m, lambda x: x["layers"][0].update(digest=12)),
                                    "layers.0.digest"),
    "a digest of another algorithm": (lambda m: _mutated(m, lambda x: x["config"].update(digest="md5:abc")),
                                      "config.digest"),
    "a config without mediaType": (lambda m: _mutated(m, lambda x: x["config"].pop("mediaType")),
                                   "config.mediaType"),
    "a layer without mediaType": (lambda m: _mutated(m, lambda x: x["layers"][0].pop("mediaType")),
                                  "layers.0.mediaType"),
    "layers that are an object": (lambda m: _mutated(m, lambda x: x.update(layers={"a": 1})), "layers"),
    "no schemaVersion": (lambda m: _mutated(m, lambda x: x.pop("schemaVersion")), "schemaVersion"),
    "an annotation that is a number": (lambda m: _mutated(m, lambda x: x.update(annotations={"a": 1})),
                                       "annotations.a"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_malformed_manifest_is_one_error_naming_the_field(case, fake, bundle, tmp_path):
    craft, field = MALFORMED[case]
    fake.publish(craft(fake.artifact(bundle, tmp_path)))
    (tmp_path / "work").mkdir()
    with pytest.raises(UserError) as e:
        pull(f"{fake.address}/models/det:1", tmp_path / "work" / "out", insecure=True)
    assert "invalid manifest" in e.value.one_line() and f": {field}" in e.value.one_line()
    nothing_left(tmp_path / "work")


def test_cli_a_malformed_manifest_is_one_line_and_exit_2(fake, bundle, tmp_path):
    fake.publish(_mutated(fake.artifact(bundle, tmp_path), lambda x: x["layers"][0].update(size="abc")))
    done = builder_cli("pull", f"{fake.address}/models/det:1", str(tmp_path / "out"), "--insecure")
    assert "layers.0.size" in one_error(done)
    assert "downloading" not in done.stderr  # the progress note comes after validation, with a number


def test_extra_fields_are_allowed_as_oci_permits(fake, bundle, tmp_path):
    manifest = fake.artifact(bundle, tmp_path)
    manifest["subject"] = {"mediaType": MANIFEST_MEDIA_TYPE, "digest": "sha256:" + "a" * 64, "size": 1}
    manifest["layers"][0]["urls"] = ["https://mirror.example.com/blob"]
    manifest["config"]["x-vendor"] = {"anything": [1, 2]}
    fake.publish(manifest)
    pull(f"{fake.address}/models/det:1", tmp_path / "out", insecure=True)
    assert _files(tmp_path / "out") == _files(bundle)


# --- 2. the bundle's manifest.json bounds what the layer may unpack to -----------------------------------


def _archive(entries: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            info.size = len(data) if info.isfile() else 0
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return gzip.compress(buffer.getvalue(), compresslevel=9, mtime=0)


def _entry(name: str, data: bytes = b"", kind=tarfile.REGTYPE, **pax) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.pax_headers = pax
    return info, data


def _bundle_entries(bundle: pathlib.Path, replace: Optional[dict[str, bytes]] = None) -> list:
    replace = replace or {}
    entries = [_entry("det", kind=tarfile.DIRTYPE)]
    for path in sorted(bundle.rglob("*")):
        relative = path.relative_to(bundle).as_posix()
        if path.is_dir():
            entries.append(_entry(f"det/{relative}", kind=tarfile.DIRTYPE))
        else:
            entries.append(_entry(f"det/{relative}", replace.get(relative, path.read_bytes())))
    return entries


BOMB = 48 << 20  # zeros: 48 MiB unpacked from about 50 KB


@pytest.mark.parametrize("case, message", [
    ("a declared file far larger than declared", "is 50,331,648 bytes; the bundle's manifest declares 8"),
    ("a file the manifest does not list", "'det/extra.bin' is not a file the bundle's manifest lists"),
    ("a folder that holds none of the files", "'det/empty' is a folder that holds none of the bundle's files"),
    ("a pax header of 48 MiB", "archive unpacks to more than the"),
    ("the manifest.json larger than the config", "det/manifest.json' is"),
])
def test_a_layer_that_unpacks_to_more_than_declared_is_refused_at_once(case, message, fake, bundle, tmp_path):
    entries = _bundle_entries(bundle)
    if case == "a declared file far larger than declared":
        entries = _bundle_entries(bundle, {"model/labels.txt": bytes(BOMB)})
    elif case == "a file the manifest does not list":
        entries.append(_entry("det/extra.bin", bytes(BOMB)))
    elif case == "a folder that holds none of the files":
        entries.append(_entry("det/empty", kind=tarfile.DIRTYPE))
    elif case == "a pax header of 48 MiB":
        [readme] = [info for info, _ in entries if info.name == "det/README.md"]
        readme.pax_headers = {"comment": "x" * BOMB}
    elif case == "the manifest.json larger than the config":
        entries = _bundle_entries(bundle, {"manifest.json": (bundle / "manifest.json").read_bytes() + b" " * BOMB})
    layer = _archive(entries)
    assert len(layer) < 1 << 20
    fake.publish(fake.artifact(bundle, tmp_path, layer=layer))
    (tmp_path / "work").mkdir()
    started = time.monotonic()
    with pytest.raises(UserError) as e:
        pull(f"{fake.address}/models/det:1", tmp_path / "work" / "out", insecure=True)
    assert message in e.value.one_line()
    assert time.monotonic() - started < 10  # refused when the bound is passed, not after inflating it all
    nothing_left(tmp_path / "work")


def test_a_layer_larger_than_its_declared_files_can_take_is_not_downloaded(fake, bundle, tmp_path):
    manifest = fake.artifact(bundle, tmp_path, layer=os.urandom(1 << 20) * 3)
    fake.publish(manifest)
    requested = []
    fake.before_blob[manifest["layers"][0]["digest"]] = lambda: requested.append(True)
    (tmp_path / "work").mkdir()
    with pytest.raises(UserError, match="more than the .* bytes of files its manifest declares can take"):
        pull(f"{fake.address}/models/det:1", tmp_path / "work" / "out", insecure=True)
    assert requested == []
    nothing_left(tmp_path / "work")


def test_a_config_that_declares_more_than_a_pull_unpacks_is_refused(fake, tmp_path):
    (tmp_path / "bundle").mkdir()
    bundle = make_bundle(tmp_path / "bundle")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"][0]["size"] = 1 << 50
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    fake.publish(fake.artifact(bundle, tmp_path, layer=b"x"))
    done = builder_cli("pull", f"{fake.address}/models/det:1", str(tmp_path / "out"), "--insecure")
    assert "a pull unpacks at most" in one_error(done)


def test_a_pulled_bundle_with_pax_headers_and_nested_folders_fits_its_bound(fake, bundle, tmp_path):
    manifest = fake.artifact(bundle, tmp_path)
    fake.publish(manifest)
    pulled = pull(f"{fake.address}/models/det:1", tmp_path / "out", insecure=True)
    assert _files(tmp_path / "out") == _files(bundle) and LONG_NAME in _files(tmp_path / "out")
    assert pulled.size == manifest["layers"][0]["size"]


# --- 3. push refuses links and special files in the check, naming them -----------------------------------


@pytest.mark.parametrize("kind", ["a link to a file", "a link to a folder", "a dangling link", "a fifo"])
def test_push_refuses_a_bundle_holding_a_link_or_a_special_file(kind, tmp_path):
    (tmp_path / "bundle").mkdir()
    bundle = make_bundle(tmp_path / "bundle")
    # what the manifest lists is replaced after it was written, so only the kind of file differs
    if kind == "a link to a file":
        (bundle / "model/labels.txt").unlink()
        (bundle / "model/labels.txt").symlink_to("../README.md")
        manifest = json.loads((bundle / "manifest.json").read_text())
        for entry in manifest["files"]:
            if entry["path"] == "model/labels.txt":
                entry.update(sha256=sha256_digest(b"# det\n").removeprefix("sha256:"), size=6)
        (bundle / "manifest.json").write_text(json.dumps(manifest))
        name = "model/labels.txt"
    elif kind == "a link to a folder":
        (bundle / "linked").symlink_to("model")
        name = "linked"
    elif kind == "a dangling link":
        (bundle / "gone").symlink_to("/nonexistent/file")
        name = "gone"
    else:
        os.mkfifo(bundle / "pipe")
        name = "pipe"
    done = builder_cli("push", str(bundle), "127.0.0.1:9/models/det:1", "--insecure", timeout=60)
    line = one_error(done)
    assert f"'{name}'" in line and ("link" in line or "not a regular file" in line)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file without read permission")
def test_push_of_an_unreadable_bundle_file_is_one_line(tmp_path):
    (tmp_path / "bundle").mkdir()
    bundle = make_bundle(tmp_path / "bundle")
    (bundle / "model/labels.txt").chmod(0)
    done = builder_cli("push", str(bundle), "127.0.0.1:9/models/det:1", "--insecure")
    assert "labels.txt" in one_error(done)


def test_push_refuses_a_folder_that_a_pull_would_refuse(tmp_path):
    (tmp_path / "bundle").mkdir()
    bundle = make_bundle(tmp_path / "bundle")
    (bundle / "model/empty").mkdir()
    with pytest.raises(UserError, match="holds the folder 'model/empty', which holds none of its files"):
        push(bundle, "127.0.0.1:9/models/det:1", insecure=True)


# --- 4. the printed reference can be used again -----------------------------------------------------------


def test_a_pull_by_digest_prints_a_reference_that_pulls_again(fake, bundle, tmp_path):
    digest = fake.publish(fake.artifact(bundle, tmp_path), tag="1.0")
    done = builder_cli("pull", f"{fake.address}/models/det@{digest}", str(tmp_path / "a"), "--insecure")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{fake.address}/models/det@{digest}"
    again = builder_cli("pull", done.stdout.strip(), str(tmp_path / "b"), "--insecure")
    assert again.returncode == 0 and again.stdout == done.stdout, again.stderr
    tagged = builder_cli("pull", f"{fake.address}/models/det:1.0@{digest}", str(tmp_path / "c"), "--insecure")
    assert tagged.stdout.strip() == f"{fake.address}/models/det:1.0@{digest}"
    by_tag = builder_cli("pull", f"{fake.address}/models/det:1.0", str(tmp_path / "d"), "--insecure")
    assert by_tag.stdout.strip() == f"{fake.address}/models/det:1.0@{digest}"
    assert f"pulled {fake.address}/models/det@{digest} into" in done.stderr


# --- 5. an unwritable destination is one line ------------------------------------------------------------


@pytest.mark.parametrize("destination", ["/sys/kernel/builder-test/out", "/sys/builder-test-out",
                                         "/proc/self/builder-test/out"])
def test_an_unwritable_destination_is_one_line(destination, fake, bundle, tmp_path):
    fake.publish(fake.artifact(bundle, tmp_path))
    done = builder_cli("pull", f"{fake.address}/models/det:1", destination, "--insecure")
    assert "cannot write" in one_error(done)
    assert not pathlib.Path(destination).exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a folder without write permission")
def test_a_destination_without_write_permission_is_one_line(fake, bundle, tmp_path):
    fake.publish(fake.artifact(bundle, tmp_path))
    (tmp_path / "locked").mkdir(mode=0o555)
    done = builder_cli("pull", f"{fake.address}/models/det:1", str(tmp_path / "locked" / "out"), "--insecure")
    assert "cannot write" in one_error(done) and list((tmp_path / "locked").iterdir()) == []


# --- 6. what is at the destination: replaced whole with --force, untouched without ----------------------


def test_force_replaces_an_existing_destination_whole(fake, bundle, tmp_path):
    fake.publish(fake.artifact(bundle, tmp_path))
    (tmp_path / "work" / "out" / "model").mkdir(parents=True)
    (tmp_path / "work" / "out" / "model" / "stale.txt").write_text("old\n")
    (tmp_path / "work" / "out" / "README.md").write_text("old\n")
    pull(f"{fake.address}/models/det:1", tmp_path / "work" / "out", insecure=True, force=True)
    assert _files(tmp_path / "work" / "out") == _files(bundle)
    assert [p.name for p in (tmp_path / "work").iterdir()] == ["out"]


@pytest.mark.parametrize("force", [False, True])
def test_a_destination_that_appears_during_the_pull(force, fake, bundle, tmp_path):
    manifest = fake.artifact(bundle, tmp_path)
    fake.publish(manifest)
    out = tmp_path / "work" / "out"

    def someone_else_writes():
        out.mkdir(parents=True)
        (out / "theirs.txt").write_text("keep me\n")

    fake.before_blob[manifest["layers"][0]["digest"]] = someone_else_writes
    if force:
        pull(f"{fake.address}/models/det:1", out, insecure=True, force=True)
        assert _files(out) == _files(bundle)
    else:
        with pytest.raises(UserError, match="already exists"):
            pull(f"{fake.address}/models/det:1", out, insecure=True)
        assert _files(out) == {"theirs.txt": b"keep me\n"}
    assert [p.name for p in (tmp_path / "work").iterdir()] == ["out"]


# --- the network: every failure is one line naming the registry ------------------------------------------


def _cut(after: int, stall: float = 0.0):
    return lambda handler: send(handler, 200, b"{" + b" " * 4000 + b"}", cut_after=after, stall=stall)


@pytest.mark.parametrize("case, message", [
    ("manifest cut short", "broke off while sending a manifest"),
    ("blob cut short", "broke off while sending sha256:"),
    ("no answer", "cannot reach registry"),
    ("error body that is a list", "HTTP 500"),
    ("token realm unreachable", "cannot reach 127.0.0.1:9, the token service of registry"),
    ("token that is not JSON", "without a usable token"),
    ("token with a line break", "without a usable token"),
])
def test_a_broken_registry_is_one_line_naming_it(case, message, fake, bundle, tmp_path):
    manifest = fake.artifact(bundle, tmp_path)
    fake.publish(manifest)
    manifest_path = "/v2/models/det/manifests/1"
    layer = manifest["layers"][0]
    blob_path = f"/v2/models/det/blobs/{layer['digest']}"
    if case == "manifest cut short":
        fake.answers[manifest_path] = _cut(10)
    elif case == "blob cut short":
        fake.answers[blob_path] = lambda h: send(h, 200, fake.blobs[layer["digest"]], cut_after=100)
    elif case == "no answer":
        fake.answers[manifest_path] = lambda h: h.connection.shutdown(socket.SHUT_RDWR)
    elif case == "error body that is a list":
        fake.answers[manifest_path] = lambda h: send(h, 500, b'[{"message": 1}]')
    else:
        token_path = "/token"
        realm = {"token realm unreachable": "http://127.0.0.1:9/token"}.get(case, f"http://{fake.address}/token")
        fake.answers[manifest_path] = lambda h: send(h, 401, b"", {
            "WWW-Authenticate": f'Bearer realm="{realm}",service="fake",scope="repository:models/det:pull"'})
        body = b"<html>" if case == "token that is not JSON" else json.dumps({"token": "abc\r\nX-Evil: 1"}).encode()
        fake.answers[token_path] = lambda h: send(h, 200, body)
    started = time.monotonic()
    done = builder_cli("pull", f"{fake.address}/models/det:1", str(tmp_path / "work" / "out"), "--insecure")
    line = one_error(done)
    assert message in line and f"registry {fake.address}" in line, line
    assert time.monotonic() - started < 30
    assert not (tmp_path / "work").exists()


def test_a_registry_that_stalls_mid_blob_is_one_line(fake, bundle, tmp_path, monkeypatch):
    # in process, so that the per-request timeout can be shortened and the test stays fast
    import builder.oci.client

    monkeypatch.setattr(builder.oci.client, "TIMEOUT", 0.5)
    manifest = fake.artifact(bundle, tmp_path)
    fake.publish(manifest)
    layer = manifest["layers"][0]
    fake.answers[f"/v2/models/det/blobs/{layer['digest']}"] = lambda h: send(
        h, 200, fake.blobs[layer["digest"]], cut_after=100, stall=2)
    (tmp_path / "work").mkdir()
    with pytest.raises(UserError, match=rf"registry {fake.address} broke off while sending sha256:\w+: .*timed out"):
        pull(f"{fake.address}/models/det:1", tmp_path / "work" / "out", insecure=True)
    nothing_left(tmp_path / "work")


def test_an_upload_without_a_location_is_one_line(fake, bundle):
    fake.answers["/v2/models/det/blobs/uploads/"] = lambda h: send(h, 202, b"")
    with pytest.raises(UserError, match=f"registry {fake.address} started an upload without saying where"):
        push(bundle, f"{fake.address}/models/det:1", insecure=True)


# --- 7. a killed pull leaves only scratch that the next pull of its destination sweeps -------------------


def _aged(paths, seconds: float = 60.0) -> None:
    """Make leftovers look as old as a pull that died a while ago (the sweep spares young ones)."""
    for path in paths:
        past = time.time() - seconds
        os.utime(path, (past, past), follow_symlinks=False)


def test_a_killed_pull_leaves_scratch_that_the_next_pull_sweeps(fake, bundle, tmp_path):
    manifest = fake.artifact(bundle, tmp_path)
    fake.publish(manifest)
    asked, go_on = threading.Event(), threading.Event()

    def hold():  # the pull has its scratch folder, with the config in it, and waits for the layer
        asked.set()
        go_on.wait(120)

    layer = manifest["layers"][0]["digest"]
    fake.before_blob[layer] = hold
    work = tmp_path / "work"
    work.mkdir()
    process = subprocess.Popen([sys.executable, "-m", "builder", "pull", f"{fake.address}/models/det:1",
                                str(work / "out"), "--insecure"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert asked.wait(120), "the pull never asked for its layer"
        process.kill()
        process.wait()
    finally:
        go_on.set()
    del fake.before_blob[layer]
    [left] = list(work.iterdir())
    assert left.name.startswith(f".out.{process.pid}.") and left.name.endswith(".pull"), left.name
    _aged([left])
    pull(f"{fake.address}/models/det:1", work / "out", insecure=True)
    assert [p.name for p in work.iterdir()] == ["out"] and _files(work / "out") == _files(bundle)


# --- 8. the docker config and credential helpers: a wrong shape is one line naming where it came from -----


HELPER = """#!/bin/sh
read registry
echo "$registry" > "$(dirname "$0")/asked"
{answer}
"""


def _docker_config(tmp_path: pathlib.Path, monkeypatch, config, helper_answer: Optional[str] = None) -> pathlib.Path:
    """DOCKER_CONFIG with `config` (an object, or text as it is) and, with `helper_answer`, the credential helper
    `docker-credential-fake` on PATH: a real executable that runs those shell lines after reading the registry."""
    folder = tmp_path / "docker"
    folder.mkdir(exist_ok=True)
    path = folder / "config.json"
    path.write_text(config if isinstance(config, str) else json.dumps(config))
    monkeypatch.setenv("DOCKER_CONFIG", str(folder))
    monkeypatch.delenv("BUILDER_REGISTRY_USERNAME", raising=False)
    monkeypatch.delenv("BUILDER_REGISTRY_PASSWORD", raising=False)
    if helper_answer is not None:
        helpers = tmp_path / "bin"
        helpers.mkdir(exist_ok=True)
        helper = helpers / "docker-credential-fake"
        helper.write_text(HELPER.format(answer=helper_answer))
        helper.chmod(0o755)
        monkeypatch.setenv("PATH", f"{helpers}{os.pathsep}{os.environ['PATH']}")
    return path


REGISTRY = "127.0.0.1:9"
BAD_CONFIGS = {
    "not JSON": ("{", None, "config.json"),
    "a list": ("[1, 2]", None, "config.json"),
    "auths that is a list": ({"auths": [REGISTRY]}, None, "config.json"),
    "an entry that is a string": ({"auths": {REGISTRY: "user:secret"}}, None, "config.json"),
    "auth that is a number": ({"auths": {REGISTRY: {"auth": 12}}}, None, "config.json"),
    "auth that is not base64": ({"auths": {REGISTRY: {"auth": "user:secret!"}}}, None, "config.json"),
    "auth without a colon": ({"auths": {REGISTRY: {"auth": "dXNlcg=="}}}, None, "config.json"),
    "auth with a line break": ({"auths": {REGISTRY: {"auth": "dXNlcjpzZWNyZXQK\r\nX-Evil: 1"}}}, None, "config.json"),
    "credHelpers that is a list": ({"credHelpers": ["fake"]}, None, "config.json"),
    "a helper name that is a number": ({"credHelpers": {REGISTRY: 1}}, None, "config.json"),
    "a helper name with a slash": ({"credsStore": "../../bin/fake"}, None, "config.json"),
    "an answer that is a list": ({"credsStore": "fake"}, "echo '[]'", "docker-credential-fake"),
    "an answer that is not JSON": ({"credsStore": "fake"}, "echo 'hello'", "docker-credential-fake"),
    "an answer without Username": ({"credHelpers": {REGISTRY: "fake"}}, """echo '{"Secret": "s"}'""",
                                   "docker-credential-fake"),
    "a Username that is a number": ({"credsStore": "fake"}, """echo '{"Username": 1, "Secret": "s"}'""",
                                    "docker-credential-fake"),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_a_docker_config_or_helper_answer_of_the_wrong_shape_is_one_line_naming_it(case, tmp_path, monkeypatch,
                                                                                  capsys):
    from cli_runs import run_cli

    config, answer, named = BAD_CONFIGS[case]
    _docker_config(tmp_path, monkeypatch, config, answer)
    code, errors, stderr = run_cli(["pull", f"{REGISTRY}/models/det:1", str(tmp_path / "out" / "det"), "--insecure"],
                                   capsys, tmp_path, monkeypatch)
    assert code == 2 and len(errors) == 1 and "Traceback" not in stderr, stderr
    assert named in errors[0] and "cannot reach" not in errors[0], errors[0]
    assert "user:secret" not in errors[0] and "dXNlcjpzZWNyZXQ" not in errors[0]  # credentials are never shown


def test_a_credential_helper_that_answers_well_is_used(fake, bundle, tmp_path, monkeypatch):
    import base64

    fake.publish(fake.artifact(bundle, tmp_path))
    sent = []
    manifest_path = "/v2/models/det/manifests/1"
    served = fake.manifests["1"]

    def record(handler):
        sent.append(handler.headers.get("Authorization"))
        send(handler, 200, served, {"Content-Type": MANIFEST_MEDIA_TYPE})

    fake.answers[manifest_path] = record
    _docker_config(tmp_path, monkeypatch, {"credHelpers": {fake.address: "fake"}},
                   """echo '{"ServerURL": "x", "Username": "robot", "Secret": "s3cret"}'""")
    pull(f"{fake.address}/models/det:1", tmp_path / "out", insecure=True)
    assert sent == ["Basic " + base64.b64encode(b"robot:s3cret").decode()]
    assert (tmp_path / "bin" / "asked").read_text() == f"{fake.address}\n"


def test_a_credential_helper_without_credentials_means_anonymous(fake, bundle, tmp_path, monkeypatch):
    fake.publish(fake.artifact(bundle, tmp_path))
    _docker_config(tmp_path, monkeypatch, {"credsStore": "fake"},
                   "echo 'credentials not found in native keychain'\nexit 1")
    pull(f"{fake.address}/models/det:1", tmp_path / "out", insecure=True)
    assert _files(tmp_path / "out") == _files(bundle)


# --- 9. an archive entry whose name holds a NUL byte ------------------------------------------------------


def test_an_archive_entry_with_a_nul_byte_in_its_name_is_one_line(fake, bundle, tmp_path):
    entries = _bundle_entries(bundle)
    [readme] = [info for info, _ in entries if info.name == "det/README.md"]
    readme.pax_headers = {"path": "det/READ\x00ME.md"}  # a pax header carries what a tar header cannot
    fake.publish(fake.artifact(bundle, tmp_path, layer=_archive(entries)))
    (tmp_path / "work").mkdir()
    done = builder_cli("pull", f"{fake.address}/models/det:1", str(tmp_path / "work" / "out"), "--insecure")
    assert "archive entry 'det/READ\\x00ME.md' has a NUL byte in its name" in one_error(done)
    nothing_left(tmp_path / "work")
