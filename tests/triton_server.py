"""A real tritonserver (from the nvidia-pytriton wheel, see scripts/install-triton.sh) on 127.0.0.1."""
from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import socket
import subprocess
import time
import urllib.request

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
STAND_IN_MODEL = pathlib.Path(__file__).resolve().parent / "data" / "triton" / "model.py"


def triton_home() -> pathlib.Path:
    """The installed server, or a skip (a failure under CI, where .ci/run installs it)."""
    home = pathlib.Path(os.environ.get("BUILDER_TRITON_HOME", ROOT / ".cache" / "triton"))
    if not (home / "pytriton" / "pytriton" / "tritonserver" / "bin" / "tritonserver").exists():
        message = f"no tritonserver in {home}: run scripts/install-triton.sh"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return home


def python_backend_repository(bundle: pathlib.Path, repository: pathlib.Path) -> pathlib.Path:
    """The bundle's model repository, with only the platform line swapped for the python backend, which runs
    the bundle's model.onnx with onnxruntime (this server has no ONNX Runtime backend)."""
    source = bundle / "model_repository"
    for model in sorted(p for p in source.iterdir() if p.is_dir()):
        shutil.copytree(model, repository / model.name)
        config = repository / model.name / "config.pbtxt"
        text = config.read_text()
        assert text.count('platform: "onnxruntime_onnx"\n') == 1
        config.write_text(text.replace('platform: "onnxruntime_onnx"\n', 'backend: "python"\n'))
        for version in (p for p in (repository / model.name).iterdir() if p.is_dir()):
            shutil.copy(STAND_IN_MODEL, version / "model.py")
    return repository


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_triton(repository: pathlib.Path, log: pathlib.Path, timeout: float = 120.0):
    """Yields (http_url, grpc_url) of a server on 127.0.0.1 that has loaded every model of `repository`."""
    home = triton_home()
    server = home / "pytriton" / "pytriton" / "tritonserver" / "bin" / "tritonserver"
    http, grpc = _free_port(), _free_port()
    env = dict(os.environ, LD_LIBRARY_PATH=str(home / "pytriton" / "nvidia_pytriton.libs"),
               PATH=f"{home / 'stubenv' / 'bin'}:{os.environ['PATH']}")
    env.pop("PYTHONPATH", None)
    command = [str(server), f"--model-repository={repository}", f"--backend-directory={home / 'backends'}",
               "--http-address=127.0.0.1", "--grpc-address=127.0.0.1", f"--http-port={http}",
               f"--grpc-port={grpc}", "--allow-metrics=false", "--exit-timeout-secs=5"]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise AssertionError(f"tritonserver exited with {process.returncode}:\n{log.read_text()[-4000:]}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/health/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            if time.monotonic() > deadline:
                raise AssertionError(f"tritonserver not ready after {timeout:.0f} s:\n{log.read_text()[-4000:]}")
            time.sleep(0.5)
        yield f"127.0.0.1:{http}", f"127.0.0.1:{grpc}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
