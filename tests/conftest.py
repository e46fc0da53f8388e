"""Shared fixtures: real photos, the SuperGradients reference files, and a local HTTP file server."""
from __future__ import annotations

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
    """Serves `files` (name -> bytes) on 127.0.0.1 with Range support; can cut a transfer short."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.cut_after: dict[str, int] = {}  # name -> bytes sent before the connection drops, once
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_GET(self):
                name = self.path.lstrip("/")
                server.requests.append((name, self.headers.get("Range")))
                if name not in server.files:
                    self.send_error(404)
                    return
                body, start = server.files[name], 0
                rng = self.headers.get("Range")
                if rng:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(body):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                chunk = body[start:]
                cut = server.cut_after.pop(name, None)
                if cut is not None:
                    self.wfile.write(chunk[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(chunk)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

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
