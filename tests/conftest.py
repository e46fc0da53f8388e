"""Shared fixtures: real photos, the SuperGradients reference files, and a local HTTP file server."""
from __future__ import annotations

import hashlib
import http.server
import json
import pathlib
import sys
import threading

import numpy as np
import pytest

TESTS = pathlib.Path(__file__).resolve().parent
REFERENCE = TESTS / "data" / "sg_reference"
sys.path.insert(0, str(TESTS))

VARIANTS = ["yolo_nas_s", "yolo_nas_m", "yolo_nas_l", "ppyoloe_s", "ppyoloe_m", "ppyoloe_l", "ppyoloe_x"]


@pytest.fixture(scope="session")
def photos() -> dict[str, np.ndarray]:
    """Real RGB photos bundled with scikit-image (no download)."""
    import skimage.data

    return {name: getattr(skimage.data, name)() for name in ("astronaut", "coffee", "chelsea", "rocket")}


@pytest.fixture(scope="session")
def sg_state_dicts() -> dict:
    return json.loads((REFERENCE / "state_dicts.json").read_text())


class FileServer:
    """Serves `files` (name -> bytes) on 127.0.0.1 as a static file server does: Range (with If-Range), an ETag
    by content, and 304 to an If-None-Match that matches (or an If-Modified-Since equal to a Last-Modified a
    test gives). A test can cut a transfer short, stall it, or replace the usual headers of a file."""

    #: how long a stalled transfer waits for the next request of its file before it goes on
    STALL_S = 3.0

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.cut_after: dict[str, int] = {}  # name -> bytes sent before the connection drops, once
        self.stall_after: dict[str, int] = {}  # name -> bytes sent before waiting for another request of it, once
        self.headers: dict[str, dict[str, str | None]] = {}  # name -> headers that replace the usual (None: none)
        self.if_range = True  # False: a server that ignores If-Range and resumes whatever it holds now
        self.requests: list[tuple[str, str | None]] = []  # (name, Range) of each request
        self.answers: list[tuple[str, int]] = []  # (name, status) of each answer
        arrived = threading.Condition()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def send_response(self, code, message=None):
                server.answers.append((self.path.lstrip("/"), code))
                super().send_response(code, message)

            def do_GET(self):
                name = self.path.lstrip("/")
                with arrived:
                    server.requests.append((name, self.headers.get("Range")))
                    arrived.notify_all()
                if name not in server.files:
                    self.send_error(404)
                    return
                body, start = server.files[name], 0
                usual = {"Content-Type": "application/octet-stream", "ETag": server.etag(name), "Last-Modified": None}
                headers = {**usual, **server.headers.get(name, {})}
                etag, modified = headers["ETag"], headers["Last-Modified"]
                if (etag and self.headers.get("If-None-Match") == etag) or (
                        modified and self.headers.get("If-Modified-Since") == modified):
                    self.send_response(304)
                    self.end_headers()
                    return
                rng = self.headers.get("Range")
                if rng and server.if_range and self.headers.get("If-Range") not in (None, etag, modified):
                    rng = None  # the file changed since the client's part: send it whole
                if rng:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(body):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    headers = {"Content-Range": f"bytes {start}-{len(body) - 1}/{len(body)}", **headers}
                else:
                    self.send_response(200)
                headers = {"Content-Length": str(len(body) - start), **headers}
                for key, value in headers.items():
                    if value is not None:
                        self.send_header(key, value)
                self.end_headers()
                chunk = body[start:]
                cut = server.cut_after.pop(name, None)
                if cut is not None:
                    self.wfile.write(chunk[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                stall = server.stall_after.pop(name, None)
                if stall is not None:
                    self.wfile.write(chunk[:stall])
                    self.wfile.flush()
                    seen = len(server.requests)
                    with arrived:
                        arrived.wait_for(lambda: any(n == name for n, _ in server.requests[seen:]), server.STALL_S)
                    chunk = chunk[stall:]
                self.wfile.write(chunk)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def etag(self, name: str) -> str:
        """The ETag the server gives a file unless a test replaces it: by content, as most servers make theirs."""
        return '"' + hashlib.sha256(self.files[name]).hexdigest()[:16] + '"'

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def file_server():
    server = FileServer()
    yield server
    server.close()


@pytest.fixture
def weights_cache(tmp_path, monkeypatch) -> pathlib.Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("BUILDER_CACHE", str(cache))
    return cache / "weights"
