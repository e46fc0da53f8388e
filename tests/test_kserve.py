"""`builder bundle --target kserve`: a Triton repository plus Kubernetes manifests that load into the official
client's models and KServe's schema, built through the same registry, spec and renderer as every target."""
from __future__ import annotations

import json

import pytest
import yaml

import builder
from builder.core.errors import UserError

SMALL = dict(model="ppyoloe_s", input_image_shape=(160, 160), runner="local")


@pytest.fixture(scope="module")
def gpu_bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("kserve") / "det"
    return builder.bundle(out, target="kserve", name="Det_v2", storage_uri="s3://bucket/models/det", device="gpu",
                          dynamic_batch=True, namespace="vision", replicas=2, **SMALL)


def test_the_bundle_holds_a_triton_repository_and_valid_manifests(gpu_bundle):
    from builder.targets.kserve.manifests import check_manifests, load_manifest

    root = gpu_bundle.destination
    names = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    assert {"model_repository/Det_v2/config.pbtxt", "model_repository/Det_v2/1/model.onnx",
            "kubernetes/deployment.yaml", "kubernetes/service.yaml", "kubernetes/inferenceservice.yaml",
            "kubernetes/README.md", "client/triton_client.py", "manifest.json"} <= names
    texts = {name: (root / name).read_text() for name in names if name.startswith("kubernetes/")}
    check_manifests(texts)  # raises on any unknown field or schema violation
    deployment = load_manifest("kubernetes/deployment.yaml", texts["kubernetes/deployment.yaml"])
    [container] = deployment.spec.template.spec.containers
    assert container.readiness_probe.http_get.path == "/v2/health/ready"
    assert container.liveness_probe.http_get.path.startswith("/v2/health/")
    assert container.resources.limits["nvidia.com/gpu"] == "1" and deployment.spec.replicas == 2
    assert deployment.metadata.namespace == "vision"
    isvc = yaml.safe_load(texts["kubernetes/inferenceservice.yaml"])
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1" and isvc["kind"] == "InferenceService"
    assert isvc["spec"]["predictor"]["triton"]["storageUri"] == "s3://bucket/models/det"
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["target"] == "kserve" and "kubernetes/deployment.yaml" in {f["path"] for f in manifest["files"]}


@pytest.mark.parametrize("options, message", [
    (dict(), "--target kserve needs --storage-uri"),
    (dict(storage_uri="ftp://host/models"), "storage_uri"),
    (dict(storage_uri="s3://b/m", namespace="Not_DNS"), "namespace"),
    (dict(storage_uri="s3://b/m", engine="tensorrt"), None),
])
def test_kserve_options_are_checked_before_any_work(options, message, tmp_path):
    if message is None:  # a TensorRT engine is served by Triton, so kserve takes it too (it needs a GPU to build)
        from builder.targets.spec import BundleSpec

        spec = BundleSpec.create({"target": "kserve", "export": {"model": "yolo_nas_s", "engine": "tensorrt"},
                                  "kserve": {"storage_uri": "s3://b/m"}})
        assert spec.export.serving.builds_plan
        return
    with pytest.raises(UserError, match=message.replace("-", "\\-")):
        builder.bundle(tmp_path / "out", target="kserve", **SMALL, **options)
    assert not (tmp_path / "out").exists()


def test_kserve_options_on_another_target_are_refused(tmp_path):
    with pytest.raises(UserError, match="kserve options apply to --target kserve only"):
        builder.bundle(tmp_path / "out", target="triton", storage_uri="s3://b/m", **SMALL)
