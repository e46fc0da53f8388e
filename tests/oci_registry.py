"""A real OCI registry for the tests: Debian's docker-registry (distribution 2.x) on 127.0.0.1."""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

REGISTRY_BINARY = os.environ.get("BUILDER_REGISTRY_BINARY", "docker-registry")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def registry_binary() -> str:
    found = shutil.which(REGISTRY_BINARY) or (REGISTRY_BINARY if os.path.exists(REGISTRY_BINARY) else None)
    if not found:
        message = "no docker-registry: apt-get install docker-registry"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


@contextlib.contextmanager
def running_registry(root, htpasswd: str | None = None):
    """Yields 'host:port' of a registry storing under `root`; with `htpasswd`, it requires Basic auth."""
    binary = registry_binary()
    port = _free_port()
    storage = root / "storage"
    storage.mkdir(parents=True, exist_ok=True)
    auth = ""
    if htpasswd is not None:
        (root / "htpasswd").write_text(htpasswd)
        auth = f"auth:\n  htpasswd:\n    realm: test\n    path: {root / 'htpasswd'}\n"
    config = root / "config.yml"
    config.write_text(f"""version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
  secret: builder-tests
{auth}""")
    log = open(root / "registry.log", "wb")
    process = subprocess.Popen([binary, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=2)
                break
            except urllib.error.HTTPError:
                break  # 401: up, and asking for credentials
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"registry did not start:\n{(root / 'registry.log').read_text()[-3000:]}")
                time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=20)
        log.close()


@contextlib.contextmanager
def failing_proxy(upstream: str, fail_when):
    """An HTTP proxy on 127.0.0.1 in front of `upstream` that answers 500 to requests where
    fail_when(method, path) is true: a registry that breaks in the middle of a push."""
    import http.client

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _forward(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if fail_when(self.command, self.path):
                self.send_response(500)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            host, port = upstream.split(":")
            connection = http.client.HTTPConnection(host, int(port), timeout=30)
            headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
            connection.request(self.command, self.path, body=body or None, headers=headers)
            response = connection.getresponse()
            data = response.read()
            self.send_response(response.status)
            for key, value in response.getheaders():
                if key.lower() == "location":
                    value = value.replace(upstream, f"127.0.0.1:{self.server.server_port}")
                if key.lower() not in ("transfer-encoding", "connection"):
                    self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _forward

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
