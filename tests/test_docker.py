"""The docker runner on a real Docker engine with the CPU build image (containers/cpu/build.sh)."""
from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import sys

import pytest

import builder
from builder.core.errors import UserError
from bundle_helpers import lively_weights
from docker_engine import IMAGE, engine_with_image

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def client():
    return engine_with_image()


def _containers(client) -> set[str]:
    return {c.id for c in client.containers.list(all=True)}


def _files(folder: pathlib.Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_docker_and_local_runners_build_the_same_bundle(client, tmp_path):
    from builder.core.images import CALIBRATION_PHOTOS, PHOTOS

    weights = lively_weights(tmp_path / "weights.pth")
    calibration = tmp_path / "calibration"
    calibration.mkdir()
    for name in CALIBRATION_PHOTOS:
        shutil.copy(PHOTOS / f"{name}.jpg", calibration / f"{name}.jpg")
    options = dict(target="triton", model="yolo_nas_s", weights=str(weights), input_image_shape=(96, 96),
                   dynamic_batch=True, precision="int8", calibration_images=str(calibration), calibration_count=5)
    before = _containers(client)
    in_docker = builder.bundle(tmp_path / "docker", runner="docker", image=IMAGE, **options)
    local = builder.bundle(tmp_path / "local", runner="local", **options)
    assert _containers(client) == before  # the stage's container is gone
    docker_files, local_files = _files(in_docker.destination), _files(local.destination)
    manifests = [json.loads(files.pop("manifest.json")) for files in (docker_files, local_files)]
    assert docker_files == local_files  # model.onnx (INT8, calibrated in the container), config, client...
    stages = [m.pop("stage") for m in manifests]
    assert manifests[0] == manifests[1]
    docker_stage, local_stage = stages
    assert docker_stage["runner"] == "docker" and docker_stage["image"] == IMAGE
    assert docker_stage["image_id"] == client.images.get(IMAGE).id
    # seen from inside the container: not root, and no network but loopback
    assert docker_stage["uid"] != 0 and docker_stage["network_interfaces"] == ["lo"]
    assert local_stage["runner"] == "local"


def test_a_failing_stage_reports_its_exit_code_and_message(client, tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    before = _containers(client)
    done = subprocess.run([sys.executable, "-m", "builder", "bundle", "--target", "standalone", "--model", "yolo_nas_s",
                           "--weights", str(garbage), "--input-shape", "64", "--runner", "docker", "--image", IMAGE,
                           "--output", str(tmp_path / "out")], capture_output=True, text=True, timeout=600)
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: export stage failed in {IMAGE} (exit 2): ") and "garbage.pth" in last
    assert _containers(client) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["garbage.pth"]  # nothing half-written


def test_a_stage_past_its_timeout_is_stopped_and_removed(client, tmp_path):
    from builder.runners.docker_runner import DockerRunner
    from builder.exporting.spec import ExportSpec

    before = _containers(client)
    runner = DockerRunner(IMAGE, timeout_s=1, client=client)
    out = tmp_path / "stage"
    out.mkdir()
    with pytest.raises(UserError, match="ran past 1 s and was stopped"):
        runner.run(ExportSpec(model="yolo_nas_l"), out)
    assert _containers(client) == before


def test_export_in_docker_writes_the_same_onnx(client, tmp_path):
    done = subprocess.run([sys.executable, "-m", "builder", "export", "--model", "ppyoloe_s", "--input-shape", "64",
                           "--runner", "docker", "--image", IMAGE, "--output", str(tmp_path / "d.onnx")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "Exported ppyoloe_s to" in done.stdout
    builder.export("ppyoloe_s", tmp_path / "l.onnx", input_image_shape=(64, 64))
    assert (tmp_path / "d.onnx").read_bytes() == (tmp_path / "l.onnx").read_bytes()


def test_a_missing_image_is_one_clear_error_and_auto_falls_back(client, tmp_path, caplog):
    from builder.runners import LocalRunner, select_runner

    with pytest.raises(UserError, match="is not on this Docker engine"):
        builder.bundle(tmp_path / "x", target="standalone", model="yolo_nas_s", runner="docker",
                       image="builder-test:does-not-exist")
    assert not (tmp_path / "x").exists()
    with caplog.at_level("INFO", logger="builder"):
        assert isinstance(select_runner("auto", image="builder-test:does-not-exist"), LocalRunner)
    assert "export stage runs here (local): no image 'builder-test:does-not-exist' on the Docker engine" in caplog.text


def test_a_missing_image_is_said_before_any_work_is_announced(client, tmp_path):
    done = subprocess.run([sys.executable, "-m", "builder", "bundle", "--target", "standalone", "--model",
                           "yolo_nas_s", "--runner", "docker", "--image", "builder-test:does-not-exist", "--output",
                           str(tmp_path / "x")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr == ("error: image 'builder-test:does-not-exist' is not on this Docker engine (build it "
                           "(containers/README.md) or pass --pull)\n")
    assert list(tmp_path.iterdir()) == []


def test_auto_picks_the_cpu_image_for_cpu_work_and_says_so(client, caplog):
    """The CPU image is what containers/cpu/build.sh makes; auto used to look only for the CUDA image."""
    from builder.runners import LocalRunner, select_runner
    from builder.runners.docker_runner import DockerRunner, cpu_image, default_image, image_info

    assert image_info(client, cpu_image()), "the CPU image is built by containers/cpu/build.sh"
    with caplog.at_level("INFO", logger="builder"):
        chosen = select_runner("auto")
    assert isinstance(chosen, DockerRunner) and chosen.image == cpu_image()
    assert f"export stage runs in the docker image {cpu_image()} (--runner auto)" in caplog.text
    assert select_runner("docker").image == cpu_image()
    if not image_info(client, default_image()):  # a TensorRT engine needs the CUDA image, which is not here
        caplog.clear()
        with caplog.at_level("INFO", logger="builder"):
            assert isinstance(select_runner("auto", needs_gpu=True), LocalRunner)
        assert f"no image '{default_image()}' on the Docker engine" in caplog.text
        with pytest.raises(UserError, match=f"image '{default_image()}' is not on this Docker engine"):
            select_runner("docker", gpus=True)


def test_without_an_engine_docker_is_one_clear_error(monkeypatch):
    from builder.runners.docker_runner import engine

    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    with pytest.raises(UserError, match="no Docker engine answers"):
        engine()


def test_ctrl_c_stops_and_removes_the_container(client, tmp_path):
    import signal
    import time

    before = _containers(client)
    process = subprocess.Popen([sys.executable, "-m", "builder", "bundle", "--target", "standalone", "--model",
                                "yolo_nas_l", "--runner", "docker", "--image", IMAGE, "--output", str(tmp_path / "out")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (_containers(client) - before) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
    assert _containers(client) - before, "the stage container never started"
    time.sleep(1)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130 and stderr.strip().splitlines()[-1] == "error: interrupted"
    assert _containers(client) == before
    assert list(tmp_path.iterdir()) == []
