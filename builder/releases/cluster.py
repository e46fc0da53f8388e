"""Ray for a release: the cluster's address probed with a deadline, builder's signal handling kept, running builds
cancelled so that their cleanup runs, and how nodes are named."""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
from typing import Any, Optional

from builder.core.errors import UserError

#: seconds to reach a cluster's address and hear it answer: Ray itself retries an address for ten minutes and more
PROBE_S = 5.0
#: seconds that cancelled builds get to clean up (their scratch folder, a docker stage's container) before Ray
#: kills them
CANCEL_GRACE_S = 30.0
#: what an HTTP/2 client opens with (the preface, then an empty SETTINGS frame); Ray's GCS and its client server
#: speak gRPC, so they answer with a SETTINGS frame of their own
_HTTP2_OPENING = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
_HTTP2_SETTINGS = 4
_ADDRESS_HINTS = {"ray": "Ray Client listens on the head node's port 10001 unless 'ray start' was told otherwise",
                  "gcs": "give the head node's GCS address, HOST:6379 unless 'ray start --head --port' said otherwise"}


@contextlib.contextmanager
def ray_cluster(address: Optional[str]):
    """Connected to the cluster at `address`, or to a Ray started in this process (None); disconnected after."""
    from builder.core.extras import require

    require("cluster", "ray")
    import ray

    if ray.is_initialized():  # the caller's own connection (builder.release() from a Ray driver)
        yield ray
        return
    if address is not None:
        probe(address)
    options: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False}
    try:
        try:
            with _signal_handling_kept():
                if address is None:
                    ray.init(include_dashboard=False, **options)
                else:
                    ray.init(address=address, **options)
        except (ConnectionError, RuntimeError, ValueError) as e:
            where = f"the Ray cluster at {address}" if address else "a local Ray"
            raise UserError(f"cannot connect to {where}: {' '.join(str(e).split())[:300]}") from None
        yield ray
    finally:
        if ray.is_initialized():
            ray.shutdown()


def probe(address: str) -> None:
    """Refuse, within seconds, an address where no Ray cluster answers (`auto` where none runs, HOST:PORT or
    ray://HOST:PORT where nothing listens or something else does)."""
    resolved = (os.environ.get("RAY_ADDRESS") or _cluster_here()) if address == "auto" else address
    host, port = _host_and_port(resolved)
    shown = address if resolved == address else f"{address} ({resolved})"
    hint = _ADDRESS_HINTS["ray" if resolved.startswith("ray://") else "gcs"]
    try:
        with socket.create_connection((host, port), timeout=PROBE_S) as connection:
            connection.sendall(_HTTP2_OPENING)
            answer = connection.recv(9)
    except socket.timeout:
        raise UserError(f"no Ray cluster answers at {shown} within {PROBE_S:g} s", hint=hint) from None
    except OSError as e:
        raise UserError(f"no Ray cluster answers at {shown}: {e.strerror or e}", hint=hint) from None
    if len(answer) < 4 or answer[3] != _HTTP2_SETTINGS:
        raise UserError(f"{shown} is not a Ray cluster: it does not answer as Ray does (gRPC)", hint=hint)


def _host_and_port(address: str) -> tuple[str, int]:
    host, _, port = address.removeprefix("ray://").split("/", 1)[0].rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(f"--address '{address}' is not a Ray cluster's address: auto, HOST:PORT or ray://HOST:PORT")
    return host.strip("[]"), int(port)


def _cluster_here() -> str:
    """The address of the cluster that runs on this machine, found as ray.init("auto") finds it."""
    from ray._private.services import canonicalize_bootstrap_address

    try:
        return canonicalize_bootstrap_address("auto")
    except ConnectionError:
        raise UserError("--address auto: no Ray cluster runs on this machine and RAY_ADDRESS is not set",
                        hint="start one with 'ray start --head', or give --address HOST:PORT") from None


@contextlib.contextmanager
def _signal_handling_kept():
    """ray.init installs Ray's own SIGTERM handler (an exit, or a kill of a local cluster's processes), which would
    end builder with Ray's stack dump and no cleanup: builder's handlers (builder.core.signals: unwind as for Ctrl-C)
    are put back. A SIGTERM that Ray's handler took meanwhile (its SystemExit) is raised again for builder's."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    kept = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    except SystemExit:  # nothing in ray.init exits but Ray's SIGTERM handler
        _restore(kept)
        signal.raise_signal(signal.SIGTERM)
        raise
    finally:
        _restore(kept)


def _restore(handlers: dict) -> None:
    for signum, handler in handlers.items():
        if handler is not None:  # None: a handler from outside Python, which cannot be put back
            signal.signal(signum, handler)


def cancel_builds(ray, refs: list) -> None:
    """Stop running builds so that their cleanup runs: Ray raises KeyboardInterrupt in each (a cancel without
    force). What still runs CANCEL_GRACE_S later (stuck in native code), or all of them at a second Ctrl-C or
    SIGTERM, is killed; a scratch folder a killed build leaves is swept by the next build on its node."""
    if not refs:
        return
    for ref in refs:
        with contextlib.suppress(Exception):
            ray.cancel(ref)
    running = refs
    try:
        _done, running = ray.wait(refs, num_returns=len(refs), timeout=CANCEL_GRACE_S)
    except KeyboardInterrupt:  # a second Ctrl-C or SIGTERM: no more waiting
        pass
    for ref in running:
        with contextlib.suppress(Exception):
            ray.cancel(ref, force=True)


def node_names(ray) -> dict[str, str]:
    """node id -> 'id8 (head)' / 'id8 (GPU 1, accelerator_type:T4, ...)': how progress and the report name nodes."""
    names = {}
    for node in ray.nodes():
        resources = node.get("Resources", {})
        notable = [f"GPU {resources['GPU']:g}"] if resources.get("GPU") else []
        notable += sorted(k for k in resources if not k.startswith(("node:", "CPU", "GPU", "memory",
                                                                      "object_store_memory")))
        if "node:__internal_head__" in resources:
            notable.insert(0, "head")
        names[node["NodeID"]] = node["NodeID"][:8] + (f" ({', '.join(notable)})" if notable else "")
    return names
