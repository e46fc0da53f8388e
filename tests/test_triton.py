"""Generated Triton bundles on a real tritonserver, queried by their generated clients as a user would."""
from __future__ import annotations

import json
import subprocess
import urllib.request

import pytest

import builder
from bundle_helpers import PYTHON, SIZE, assert_same_detections, direct_detections, lively_weights, photo_paths, run_json
from triton_server import python_backend_repository, running_triton, triton_home

pytestmark = pytest.mark.triton


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """Two bundles (batch format with dynamic batching; flat format, fixed batch) in one running server."""
    triton_home()
    tmp = tmp_path_factory.mktemp("triton")
    weights = lively_weights(tmp / "weights.pth")
    # a long queue delay, so that two clients' requests reliably meet in one batch
    batched = builder.bundle(tmp / "batched", target="triton", model="yolo_nas_s", weights=str(weights), name="batched",
                             input_image_shape=SIZE, dynamic_batch=True, max_batch_size=8, max_queue_delay_us=500_000)
    flat = builder.bundle(tmp / "flat", target="triton", model="yolo_nas_s", weights=str(weights), name="flat",
                          input_image_shape=SIZE, output_predictions_format="flat", batch_size=2)
    # every default: fixed batch of 1, batch format, 640x640, KIND_AUTO, warm-up
    default = builder.bundle(tmp / "default", target="triton", model="yolo_nas_s", weights=str(weights))
    repository = tmp / "repository"
    repository.mkdir()
    for bundle in (batched, flat, default):
        python_backend_repository(bundle.destination, repository)
    with running_triton(repository, tmp / "tritonserver.log") as urls:
        yield {"batched": batched, "flat": flat, "default": default, "urls": urls}


def _expected(bundle, paths):
    root = bundle.destination
    name = bundle.spec.model_name
    manifest = json.loads((root / "manifest.json").read_text())
    return direct_detections(root / f"model_repository/{name}/1/model.onnx", paths, "yolo_nas_s", manifest["class_names"])


def _client(bundle, url, protocol, paths, *extra):
    return [PYTHON, str(bundle.destination / "client" / "triton_client.py"), *paths, "--url", url,
            "--protocol", protocol, *extra]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("which", ["batched", "flat"])
def test_generated_client_prints_what_the_onnx_model_finds(served, which, protocol):
    bundle = served[which]
    url = served["urls"][0 if protocol == "http" else 1]
    paths = photo_paths()  # three photos: more than the flat model's fixed batch of 2
    printed = run_json(_client(bundle, url, protocol, paths, "--json"))
    assert_same_detections(printed, _expected(bundle, paths))


def test_the_all_defaults_bundle_loads_and_answers(served):
    paths = photo_paths(["coffee"])
    printed = run_json(_client(served["default"], served["urls"][0], "http", paths, "--json"))
    assert_same_detections(printed, _expected(served["default"], paths))


def test_two_clients_at_once_are_batched_together(served):
    bundle, url = served["batched"], served["urls"][0]
    before = _stats(url, "batched")
    paths = photo_paths(["grace_hopper"])
    clients = [subprocess.Popen(_client(bundle, url, "http", paths, "--json"), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [c.communicate(timeout=300) for c in clients]
    assert all(c.returncode == 0 for c in clients), [o[1][-2000:] for o in outputs]
    expected = _expected(bundle, paths)
    for stdout, _ in outputs:
        assert_same_detections(json.loads(stdout), expected)
    after = _stats(url, "batched")
    inferences = after["inference_count"] - before["inference_count"]
    executions = after["execution_count"] - before["execution_count"]
    assert (inferences, executions) == (2, 1), "Triton's dynamic batcher ran the two requests as one batch"


def _stats(url: str, model: str) -> dict:
    with urllib.request.urlopen(f"http://{url}/v2/models/{model}/stats", timeout=10) as r:
        stats = json.loads(r.read())["model_stats"][0]
    return {"inference_count": int(stats.get("inference_count", 0)), "execution_count": int(stats.get("execution_count", 0))}


def test_client_draws_the_detections(served, tmp_path):
    from PIL import Image

    bundle, url = served["batched"], served["urls"][0]
    [path] = photo_paths(["flower"])
    done = subprocess.run(_client(bundle, url, "http", [path], "--save", str(tmp_path / "out.png")),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "flower.jpg:" in done.stdout and "detections" in done.stdout
    assert Image.open(tmp_path / "out.png").size == Image.open(path).size


def test_client_reports_an_unreachable_server_in_one_line(served):
    bundle = served["batched"]
    done = subprocess.run(_client(bundle, "127.0.0.1:9", "http", photo_paths(["flower"])), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.startswith("error: cannot reach Triton at 127.0.0.1:9 (http)")
    assert "Traceback" not in done.stderr


def test_server_loaded_the_generated_config_unchanged_but_for_the_backend(served):
    """What Triton reports back is the bundle's config: its names, dims, batching and parameters."""
    url = served["urls"][0]
    with urllib.request.urlopen(f"http://{url}/v2/models/batched/config", timeout=10) as r:
        config = json.loads(r.read())
    assert config["max_batch_size"] == 8 and config["dynamic_batching"]["max_queue_delay_microseconds"] == 500000
    assert [i["dims"] for i in config["input"]] == [[3, *SIZE]]
    assert json.loads(config["parameters"]["class_names"]["string_value"])[0] == "person"
    with urllib.request.urlopen(f"http://{url}/v2/models/flat/config", timeout=10) as r:
        flat = json.loads(r.read())
    assert flat["max_batch_size"] == 0 and [o["dims"] for o in flat["output"]] == [[-1, 7]]


def test_verify_through_the_client_against_the_server(served):
    from builder.verification.verify import verify

    result = verify(served["batched"].destination, url=served["urls"][1], protocol="grpc")
    assert result.passed and result.runtime.startswith("Triton") and result.totals["recall"] == 1.0


def test_bench_through_triton_with_concurrent_clients(served):
    from builder.verification.bench import bench

    result = bench(served["batched"].destination, (1, 16), duration=0.5, url=served["urls"][0], concurrency=2)
    assert result.skipped == ["batch 16: Triton's max_batch_size is 8"]
    [row] = result.as_dict()["results"]
    assert row["concurrency"] == 2 and row["errors"] == 0 and row["requests"] >= 2
