"""A real multi-node Ray cluster for the tests: `ray start --head` plus node processes, on 127.0.0.1.

Ray binds the machine's own address even when told 127.0.0.1, so these run only inside a network namespace of
their own (`unshare -n`, loopback up), where loopback is the only address: tests/test_release_cluster.py
runs tests/release_cluster_checks.py there. Each node runs `ray start --block` in a session of its own, so
killing the session kills that node and nothing else (its raylet, agents and the workers running builds).
"""
from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import tempfile
import time

RAY = str(pathlib.Path(sys.executable).with_name("ray"))
#: the head declares a node dead after ~1.5 s without answers (Ray's default is ~30 s): a killed node's builds
#: are retried within seconds
HEALTH_CHECKS = {"RAY_health_check_period_ms": "500", "RAY_health_check_timeout_ms": "1000",
                 "RAY_health_check_failure_threshold": "3", "RAY_USAGE_STATS_ENABLED": "0"}
OBJECT_STORE_BYTES = 80 * 1024 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def in_private_network() -> bool:
    """True where loopback is the only network interface (the namespace `unshare -n` makes)."""
    return [name for _index, name in socket.if_nameindex()] == ["lo"]  # /sys shows the namespace it was mounted in


class Node:
    def __init__(self, name: str, process: subprocess.Popen, log: pathlib.Path, tmp: pathlib.Path) -> None:
        self.name, self.process, self.log = name, process, log
        self.tmp = tmp  # the node's TMPDIR, where its builds keep their scratch

    def kill(self) -> None:
        """SIGKILL every process of the node's session: a machine that is gone, not a clean shutdown."""
        session = self.process.pid
        for pid in _session_members(session):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait(timeout=30)


class RayCluster:
    def __init__(self, root: pathlib.Path) -> None:
        assert in_private_network(), "start Ray clusters only in a private network namespace (unshare -n)"
        self.root = root
        self.temp = root / "ray"  # Ray's session folder; short, since it holds Unix sockets
        self.nodes: list[Node] = []
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"

    def _start(self, name: str, arguments: list[str], tmp: pathlib.Path | None = None) -> Node:
        """A node whose builds use TMPDIR `tmp` (default: a folder of its own); Ray's own files stay where they were
        (RAY_TMPDIR), since they hold Unix sockets, whose paths must be short."""
        log = self.root / f"{name}.log"
        tmp = tmp or self.root / "tmp" / name
        tmp.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **HEALTH_CHECKS, "TMPDIR": str(tmp),
               "RAY_TMPDIR": os.environ.get("RAY_TMPDIR") or tempfile.gettempdir()}
        process = subprocess.Popen([RAY, "start", "--block", "--node-ip-address=127.0.0.1", "--disable-usage-stats",
                                    f"--object-store-memory={OBJECT_STORE_BYTES}", *arguments],
                                   stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
        node = Node(name, process, log, tmp)
        self.nodes.append(node)
        return node

    def start_head(self, num_cpus: int = 1) -> Node:
        head = self._start("head", ["--head", f"--port={self.port}", f"--num-cpus={num_cpus}",
                                    "--include-dashboard=false", f"--temp-dir={self.temp}"])
        self.wait_for(1)
        return head

    def add_node(self, name: str, num_cpus: int = 1, num_gpus: int = 0, resources: dict | None = None,
                 tmp: pathlib.Path | None = None) -> Node:
        """A node joining the cluster; `tmp`: the TMPDIR of a node that was, as a machine that comes back has."""
        arguments = [f"--address={self.address}", f"--num-cpus={num_cpus}", f"--num-gpus={num_gpus}"]
        if resources:
            arguments.append(f"--resources={json.dumps(resources)}")
        node = self._start(name, arguments, tmp)
        self.wait_for(sum(1 for n in self.nodes if n.process.poll() is None))
        return node

    def alive_nodes(self) -> list[dict]:
        """The cluster's live nodes, asked of the GCS by a driver of its own (seconds on a busy machine)."""
        script = ("import json, ray; ray.init(address=%r, logging_level='ERROR', log_to_driver=False); "
                  "print(json.dumps([n for n in ray.nodes() if n['Alive']]))" % self.address)
        try:
            done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                                  env={**os.environ, **HEALTH_CHECKS})
        except subprocess.TimeoutExpired:
            self.last_problem = "asking the cluster for its nodes took more than 120 s"
            return []
        if done.returncode != 0:
            self.last_problem = done.stderr[-2000:]
            return []
        return json.loads(done.stdout.strip().splitlines()[-1])

    def wait_for(self, count: int, timeout: float = 300) -> None:
        """Until `count` nodes are alive; generous, since two cores may also be running a whole test suite."""
        self.last_problem = ""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for node in self.nodes:
                if node.process.poll() is not None and node.process.returncode not in (None, -9):
                    raise AssertionError(f"ray node {node.name} exited:\n{node.log.read_text()[-3000:]}")
            if len(self.alive_nodes()) >= count:
                return
            time.sleep(1)
        logs = "\n".join(n.log.read_text()[-1500:] for n in self.nodes)
        raise AssertionError(f"the Ray cluster did not reach {count} nodes; the last answer:\n{self.last_problem}\n"
                             f"{logs}")

    def stop(self) -> None:
        for node in reversed(self.nodes):
            if node.process.poll() is None:
                node.kill()


def _session_members(session: int) -> list[int]:
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = pathlib.Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[3]) == session:  # after the name: state, ppid, pgrp, session
            members.append(int(entry))
    return members
