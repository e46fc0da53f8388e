"""`builder release` on a real multi-node Ray cluster: runs tests/release_cluster_checks.py in a network namespace.

Ray binds the machine's own network address even when told 127.0.0.1; inside `unshare -n` (loopback up)
loopback is the only address, so the cluster, the registry and the builds stay on 127.0.0.1.
"""
from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

from docker_engine import skip_or_fail

TESTS = pathlib.Path(__file__).resolve().parent
CHECKS = TESTS / "release_cluster_checks.py"


def _namespace_problem() -> str | None:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "needs unshare and ip (util-linux, iproute2)"
    try:
        import ray  # noqa: F401
    except ImportError:
        return "needs Ray: pip install 'model-bundle-builder[cluster]'"
    tried = subprocess.run(["unshare", "-n", "sh", "-c", "ip link set lo up"], capture_output=True, text=True)
    if tried.returncode != 0:
        return f"cannot make a network namespace (unshare -n needs root or user namespaces): {tried.stderr.strip()}"
    return None


@pytest.mark.cluster
@pytest.mark.registry
def test_release_on_a_two_node_ray_cluster(tmp_path):
    problem = _namespace_problem()
    if problem:
        skip_or_fail(problem)
    command = (f"ip link set lo up && exec {sys.executable} -m pytest -q -p no:cacheprovider -x "
               f"-o addopts='' -rA {CHECKS}")
    # Ray 2.5x turns token authentication on by itself: `ray.init()` of a new local cluster writes
    # ~/.ray/auth_token, and a later `ray start --head` that finds one requires it. The checks run with a home
    # of their own (nothing left in the user's, nothing read from it) and say which mode they test.
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "HOME": str(home), "RAY_AUTH_MODE": "disabled"}
    done = subprocess.run(["unshare", "-n", "sh", "-c", command], capture_output=True, text=True, timeout=900,
                          cwd=TESTS.parent, env=env)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-12000:]
    assert re.search(r"^7 passed in ", output, re.M), output[-4000:]  # every check ran: none skipped
