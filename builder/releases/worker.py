"""One build of a release, as it runs on a Ray node: check the stage, bundle, verify, push; report as it goes.

A build that fails returns its error line (it is not retried: the same inputs fail the same way). A node
that dies takes the build with it and Ray runs it again elsewhere: the bundle is pushed only after it is
whole and verified, and its tag is written last, so a dead build leaves nothing the registry serves. What it
leaves in its node's TMPDIR the next build there sweeps. A cancelled build (Ctrl-C of the release) cleans up.
"""
from __future__ import annotations

import logging
import pathlib
import tempfile
import time
from typing import Any, Optional

from builder.core.errors import UserError

#: builds keep their files in TMPDIR/.builder-release.PID.RANDOM.build (builder.core.files.scratch_folder)
SCRATCH_NAME = "builder-release"


class ProgressBoard:
    """A Ray actor (the driver makes it one) where builds post their stage; the driver reads it to draw progress."""

    def __init__(self) -> None:
        self.states: dict[str, dict[str, Any]] = {}

    def post(self, key: str, node: str, stage: str, started: bool = False) -> None:
        state = self.states.setdefault(key, {"attempts": 0})
        if started:
            state["attempts"] += 1
        state.update(node=node, stage=stage)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        return self.states


class _Forward(logging.Handler):
    """builder's notices during a build become the build's stage on the board; its warnings are kept for the
    report (on a remote node nobody would see them)."""

    def __init__(self, post) -> None:
        super().__init__(logging.INFO)
        self.post = post
        self.warnings: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = " ".join(record.getMessage().split())
        if record.levelno >= logging.WARNING:
            if message not in self.warnings:
                self.warnings.append(message)
            return
        try:
            self.post(message[:160])
        except Exception:  # progress is best effort: a lost update must not fail the build
            pass


def build(job: dict[str, Any], board) -> dict[str, Any]:
    """Build, verify and push one bundle on this node; a dict saying what happened (never raises a UserError)."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    key = job["key"]

    def post(stage: str, started: bool = False) -> None:
        board.post.remote(key, node, stage, started)

    post("starting", started=True)
    started = time.monotonic()
    logger = logging.getLogger("builder")
    handler, level, propagate = _Forward(post), logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        outcome = _build(job, post)
        outcome.update(ok=True)
    except UserError as e:
        outcome = {"ok": False, "error": e.one_line()}
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate
    outcome.update(node=node, seconds=round(time.monotonic() - started, 1), warnings=handler.warnings)
    post("done" if outcome["ok"] else "failed")
    return outcome


def _build(job: dict[str, Any], post) -> dict[str, Any]:
    from builder.core.files import scratch_folder
    from builder.oci.transfer import push
    from builder.targets.build import bundle

    runner = _runner(job["stage"])
    _check_key(job)
    # a builder scratch folder, not a TemporaryDirectory: what a killed build leaves (its node's raylet gone, a
    # forced cancel) the next build on the node sweeps
    with scratch_folder(pathlib.Path(tempfile.gettempdir()) / SCRATCH_NAME, "build") as scratch:
        folder = pathlib.Path(scratch) / job["name"]
        post("exporting")
        bundle(folder, runner=runner.name, image=getattr(runner, "image", None), **job["options"])
        accuracy = "not verified"
        if job["verify"] is not None:
            accuracy = _verify(folder, post, **job["verify"])
        post("pushing")
        annotations = {"dev.builder.build-key": job["key"], "dev.builder.accuracy": accuracy}
        transfer = push(folder, f"{job['repository']}:{job['tag']}", job["insecure"], annotations)
    return {"digest": transfer.digest, "size": transfer.size, "manifest_size": transfer.manifest_size,
            "accuracy": accuracy}


def _check_key(job: dict[str, Any]) -> None:
    """The key again, from this node's view of the inputs: a weights URL that now serves another file, or a path
    that holds other content here than where the release was planned, would give a bundle its key does not name."""
    from builder.releases.keys import build_key
    from builder.targets.build import resolve_spec

    if build_key(resolve_spec(None, **job["options"]), job["stage"], job["gpu"]) != job["key"]:
        raise UserError("the files this bundle is built from (weights, images, labels, templates) are not the ones "
                        "the release was planned with: they changed since, or differ on this node",
                        hint="run the release again; on a cluster, every node must see the same files")


def _runner(stage: dict[str, Any]):
    """The runner the build key was made for, checked against this node: a key means one toolchain."""
    from builder.releases.keys import local_stage
    from builder.runners import LocalRunner

    if stage["runner"] == "local":
        here = local_stage()["toolchain"]
        differing = sorted(k for k in set(here) | set(stage["toolchain"]) if here.get(k) != stage["toolchain"].get(k))
        if differing:
            name = differing[0]
            raise UserError(f"this node has {name} {here.get(name, '(none)')}; the release was planned with "
                            f"{stage['toolchain'].get(name, '(none)')}",
                            hint="install the same toolchain on every node, or release with runner: docker")
        return LocalRunner()
    from builder.runners.docker_runner import DockerRunner, engine, image_info

    found = image_info(engine(), stage["image"])
    if found.get("image_id") != stage["image_id"]:
        what = "another build of" if found else "no"
        raise UserError(f"this node has {what} image '{stage['image']}' (the release was planned with "
                        f"{stage['image_id'][:19]})", hint="load the same image on every node")
    return DockerRunner(stage["image"])


def _verify(folder: pathlib.Path, post, images: Optional[str], count: int) -> str:
    """The bundle against its PyTorch model on the release's verify images (default: the bundle's own samples, else
    builder's photos): a failed gate fails the build."""
    from builder.core.manifest import read_manifest
    from builder.exporting.nms import flavour

    if not flavour(read_manifest(folder).nms).runs_on_onnxruntime:
        return "not verified (TensorRT: verify against a Triton server)"
    from builder.verification.verify import verify

    post("verifying")
    result = verify(folder, images=images, count=count)
    totals = result.totals
    summary = f"recall {totals['recall']:.3f}, precision {totals['precision']:.3f} on {totals['images']} images"
    if not result.passed:
        raise UserError(f"verification failed: {'; '.join(result.failures)}")
    return summary + ", verified"
