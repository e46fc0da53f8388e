"""The docker runner: the export stage in the pinned builder image, through the docker SDK.

The container runs as the calling user's uid:gid, with no network, no capabilities, a read-only root
filesystem (a tmpfs /tmp), and only what the stage needs mounted at the same absolute paths as on the
host: the spec (read-only), the weights (read-only), the calibration and report images (read-only) and the output
folder. Its log streams to stderr as it comes; its exit code and last error line come back; Ctrl-C or
the timeout stops and removes it.
"""
from __future__ import annotations

import contextlib
import json
import os
import pathlib
import secrets
import signal
import sys
import threading
from typing import Optional

from builder.core.errors import UserError
from builder.exporting.spec import ExportSpec

#: the image the top-level Dockerfile builds (docker build -t model-bundle-builder:VERSION .): CUDA and TensorRT
IMAGE_REPOSITORY = "model-bundle-builder"
#: the image containers/cpu/build.sh builds offline: the export toolchain without CUDA
CPU_IMAGE_REPOSITORY = "model-bundle-builder-cpu"
STAGE_TIMEOUT_S = 3600
#: the image's unprivileged user, which the stage runs as when the caller is root
IMAGE_UID = 10001
#: host folders never mounted into a container, whatever a spec names
FORBIDDEN_MOUNTS = ("/", "/bin", "/boot", "/dev", "/etc", "/lib", "/lib64", "/proc", "/sbin", "/sys", "/usr", "/var/run")


def default_image() -> str:
    from builder.core.version import __version__

    return f"{IMAGE_REPOSITORY}:{__version__}"


def cpu_image() -> str:
    from builder.core.version import __version__

    return f"{CPU_IMAGE_REPOSITORY}:{__version__}"


def fitting_images(needs_gpu: bool) -> list[str]:
    """The builder images that can run a stage, the best fit first: a GPU job needs CUDA and TensorRT."""
    return [default_image()] if needs_gpu else [cpu_image(), default_image()]


def engine():
    """A docker client that answered a ping, or a UserError saying why not."""
    try:
        import docker
    except ImportError:
        from builder.core.errors import MissingExtraError

        raise MissingExtraError("docker", "docker") from None
    try:
        client = docker.from_env(timeout=30)
        client.ping()
    except docker.errors.DockerException as e:
        text = str(e)
        if "Permission denied" in text:
            raise UserError("no permission to use the Docker engine's socket",
                            hint="add yourself to the 'docker' group, or set DOCKER_HOST") from None
        raise UserError("no Docker engine answers", hint="start dockerd, or set DOCKER_HOST") from None
    return client


def image_info(client, image: str) -> dict:
    import docker

    try:
        found = client.images.get(image)
    except docker.errors.ImageNotFound:
        return {}
    return {"image": image, "image_id": found.id, "repo_digests": sorted(found.attrs.get("RepoDigests") or [])}


class DockerRunner:
    name = "docker"

    def __init__(self, image: Optional[str] = None, gpus: bool = False, pull: bool = False,
                 timeout_s: float = STAGE_TIMEOUT_S, client=None):
        self.image = image or default_image()
        self.gpus = gpus
        self.pull = pull
        self.timeout_s = timeout_s
        self.client = client or engine()

    def run(self, spec: ExportSpec, output: pathlib.Path, engine: Optional[dict] = None):
        import docker

        from builder.core.log import notice
        from builder.stage import read_outcome, stage_request

        info = self._image()
        output = pathlib.Path(output).resolve()
        request_path = output.parent / f".{output.name}.spec.json"
        if engine is not None and not self.gpus:
            raise UserError("building a TensorRT engine needs the GPU in the container: add --gpus")
        mounts = {str(request_path): {"bind": str(request_path), "mode": "ro"}, str(output): {"bind": str(output), "mode": "rw"}}
        environment = {"HOME": "/tmp", "PYTHONDONTWRITEBYTECODE": "1"}
        for path, mode in self._inputs(spec):
            _mount(mounts, path, mode)
        if spec.weights in ("coco",) or (spec.weights or "").startswith(("http://", "https://")):
            # the host downloads (a bad URL is one line here); the stage reads the cached file, offline
            from builder.models.download import cache_dir
            from builder.models.registry import resolve_weights

            resolve_weights(spec.model, spec.weights)
            cache = cache_dir()
            _mount(mounts, cache, "ro")
            environment["BUILDER_CACHE"] = str(cache.parent)
        device_requests = [docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])] if self.gpus else []
        # the caller's uid:gid, so that what the stage writes is theirs; never root: a root caller's stage
        # runs as the image's own user on an output folder lent to it for the run
        uid, gid = (os.getuid(), os.getgid()) if os.getuid() != 0 else (IMAGE_UID, IMAGE_UID)
        if os.getuid() == 0:
            os.chown(output, uid, gid)
        notice(f"export stage in {self.image} ({info['image_id'][:19]}), no network, as uid {uid}")
        # named, so that a container whose creation a Ctrl-C cut short can still be found and removed
        name = f"builder-stage-{os.getpid()}-{secrets.token_hex(4)}"
        container = None
        try:
            request_path.write_text(json.dumps(stage_request(spec, engine), indent=2))
            try:
                container = self.client.containers.create(
                    self.image, [str(request_path), str(output)], entrypoint=["python", "-m", "builder.stage"],
                    name=name, user=f"{uid}:{gid}", network_mode="none", volumes=mounts, environment=environment,
                    working_dir=os.getcwd(), read_only=True, tmpfs={"/tmp": "rw,exec,size=8g"}, cap_drop=["ALL"],
                    security_opt=["no-new-privileges"], device_requests=device_requests, detach=True)
            except docker.errors.APIError as e:
                raise UserError(f"cannot create the stage container: {e.explanation or e}") from None
            status, tail = self._follow(container)
        finally:
            with _signals_held():  # a second Ctrl-C or SIGTERM must not leave the container running
                self._remove(container, name)
                request_path.unlink(missing_ok=True)
                if os.getuid() == 0:
                    for path in [output, *output.rglob("*")]:
                        os.chown(path, 0, 0)
        if status != 0:
            line = next((line for line in reversed(tail) if line.startswith("error:")), tail[-1] if tail else "")
            raise UserError(f"export stage failed in {self.image} (exit {status}): "
                            f"{line.removeprefix('error: ') or 'no message'}")
        return read_outcome(output, {"runner": "docker", **info})

    def _image(self) -> dict:
        import docker

        info = image_info(self.client, self.image)
        if info:
            return info
        if not self.pull:
            raise UserError(f"image '{self.image}' is not on this Docker engine",
                            hint="build it (containers/README.md) or pass --pull")
        from builder.core.log import notice

        notice(f"pulling {self.image} ...")
        try:
            self.client.images.pull(self.image)
        except docker.errors.APIError as e:
            raise UserError(f"cannot pull '{self.image}': {e.explanation or e}") from None
        return image_info(self.client, self.image)

    def _remove(self, container, name: str) -> None:
        """Stop and remove the stage container: the one created, or the one of that name an interrupted
        create may have left."""
        import docker

        try:
            (container or self.client.containers.get(name)).remove(force=True)
        except docker.errors.APIError:  # gone already, or never created
            pass

    @staticmethod
    def _inputs(spec: ExportSpec) -> list[tuple[pathlib.Path, str]]:
        paths = []
        if spec.weights is not None and pathlib.Path(spec.weights).expanduser().exists():
            paths.append((pathlib.Path(spec.weights).expanduser().resolve(), "ro"))
        for folder in (spec.calibration_images, spec.report_images):
            if folder is not None:
                paths.append((pathlib.Path(folder).resolve(), "ro"))
        return paths

    def _follow(self, container) -> tuple[int, list[str]]:
        """Start, stream the log to stderr, wait; stop on timeout or Ctrl-C. Returns (exit code, last lines)."""
        tail: list[str] = []
        timed_out = threading.Event()

        def stop():
            timed_out.set()
            try:
                container.kill()
            except Exception:  # already gone
                pass

        timer = threading.Timer(self.timeout_s, stop)
        container.start()
        timer.start()
        try:
            buffer = b""
            for chunk in container.logs(stream=True, follow=True):
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for raw in lines:
                    line = raw.decode("utf-8", "replace").rstrip("\r")
                    if not line.startswith("error:"):  # the host reports the stage's error, as its one line
                        print(line, file=sys.stderr, flush=True)
                    tail = (tail + [line])[-50:]
            if buffer:
                tail.append(buffer.decode("utf-8", "replace"))
            status = container.wait().get("StatusCode", 1)
        except KeyboardInterrupt:
            stop()
            raise
        finally:
            timer.cancel()
        if timed_out.is_set():
            raise UserError(f"export stage in {self.image} ran past {self.timeout_s:.0f} s and was stopped")
        return status, tail


@contextlib.contextmanager
def _signals_held():
    """Hold Ctrl-C and SIGTERM until the block (a cleanup; each docker call gives up after 30 s) is done, then
    act on the first as its handler would (raise KeyboardInterrupt, or end the process)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = []
    previous = {signum: signal.signal(signum, lambda signum, frame: held.append((signum, frame)))
                for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum, frame in held[:1]:
            handler = previous[signum]
            if callable(handler):
                handler(signum, frame)
            elif handler == signal.SIG_DFL:
                signal.raise_signal(signum)


def _mount(mounts: dict, path: pathlib.Path, mode: str) -> None:
    path = pathlib.Path(path).resolve()
    for forbidden in FORBIDDEN_MOUNTS:
        if str(path) == forbidden or (forbidden != "/" and str(path).startswith(forbidden + "/")):
            raise UserError(f"'{path}' cannot be mounted into the build container (system folder {forbidden})")
    mounts[str(path)] = {"bind": str(path), "mode": mode}
