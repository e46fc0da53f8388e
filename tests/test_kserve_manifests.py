"""The kserve target's Kubernetes manifests: rendered, strictly checked, and safe against hostile names."""
import json
import pathlib
import re

import pydantic
import pytest
import yaml

from builder.targets.kserve import manifests
from builder.targets.kserve.manifests import (KServeOptions, check_manifests, kubernetes_name, load_manifest,
                                              manifest_context, render_manifests)

UserError = manifests.UserError
TEMPLATES = pathlib.Path(__file__).resolve().parents[1] / "templates"
IMAGE = "nvcr.io/nvidia/tritonserver:24.08-py3"
DEPLOYMENT, SERVICE, ISVC = "kubernetes/deployment.yaml", "kubernetes/service.yaml", "kubernetes/inferenceservice.yaml"


@pytest.fixture(scope="module")
def render():
    """builder's own renderer: sandboxed, strict, with the escaping filters (json among them)."""
    from builder.targets.render import Renderer

    return Renderer().render


def _files(render, name="yolo_nas_s", gpu=False, image=IMAGE, **options):
    options.setdefault("storage_uri", "s3://models/detectors/yolo")
    context = manifest_context(name, 1, image, gpu, 2, KServeOptions(**options), "9.9.9")
    return render_manifests(render, context)


def _refused(files: dict, path: str, old: str, new: str, message: str):
    assert old in files[path], old
    broken = {**files, path: files[path].replace(old, new, 1)}
    with pytest.raises(UserError, match=re.escape(message)):
        check_manifests(broken)


@pytest.mark.parametrize("gpu", [False, True])
@pytest.mark.parametrize("namespace", [None, "vision"])
def test_manifests_render_and_pass_the_strict_checks(render, gpu, namespace):
    files = _files(render, gpu=gpu, namespace=namespace)
    assert set(files) == {ISVC, DEPLOYMENT, SERVICE, "kubernetes/README.md"}
    check_manifests(files)

    deployment = load_manifest(DEPLOYMENT, files[DEPLOYMENT])
    assert type(deployment).__name__ == "V1Deployment" and deployment.spec.replicas == 1
    pod = deployment.spec.template.spec
    (container,) = pod.containers
    assert container.readiness_probe.http_get.path == "/v2/health/ready"
    assert container.readiness_probe.http_get.port == 8000
    assert container.liveness_probe.http_get.path in ("/v2/health/live", "/v2/health/ready")
    assert container.liveness_probe.http_get.port == 8000
    assert [(p.name, p.container_port) for p in container.ports] == [("http", 8000), ("grpc", 8001), ("metrics", 8002)]
    assert container.image == "yolo-nas-s-triton:1"
    assert container.command == ["tritonserver", "--model-repository=/models", "--model-control-mode=none",
                                 "--exit-on-error=true"]
    assert pod.security_context.run_as_non_root is True and pod.security_context.run_as_user == 1000
    assert container.security_context.allow_privilege_escalation is False
    assert container.security_context.capabilities.drop == ["ALL"]
    assert container.resources.requests == {"cpu": "2", "memory": "4Gi"}
    assert ("nvidia.com/gpu" in container.resources.limits) is gpu
    assert deployment.metadata.namespace == namespace

    service = load_manifest(SERVICE, files[SERVICE])
    assert service.spec.type == "ClusterIP" and service.metadata.namespace == namespace
    labels = deployment.spec.template.metadata.labels
    assert service.spec.selector and all(labels[k] == v for k, v in service.spec.selector.items())
    assert labels["app.kubernetes.io/managed-by"] == "builder" and labels["app.kubernetes.io/name"] == "yolo-nas-s"
    assert [(p.name, p.port) for p in service.spec.ports] == [("http", 8000), ("grpc", 8001), ("metrics", 8002)]

    isvc = load_manifest(ISVC, files[ISVC])
    assert (isvc["apiVersion"], isvc["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    assert isvc["metadata"]["name"] == "yolo-nas-s" and isvc["metadata"].get("namespace") == namespace
    predictor = isvc["spec"]["predictor"]
    assert predictor["minReplicas"] == predictor["maxReplicas"] == 1
    triton = predictor["triton"]
    assert triton["storageUri"] == "s3://models/detectors/yolo" and triton["protocolVersion"] == "v2"
    assert triton["runtimeVersion"] == "24.08-py3"
    assert ("nvidia.com/gpu" in triton["resources"]["limits"]) is gpu
    # KServe copies the InferenceService's labels onto its pods: the plain Service must not select them
    assert not all(isvc["metadata"]["labels"].get(k) == v for k, v in service.spec.selector.items())


def test_options_reach_the_manifests(render):
    files = _files(render, replicas=3, cpu="500m", memory="1536Mi", storage_uri="pvc://models-claim/yolo")
    check_manifests(files)
    deployment = load_manifest(DEPLOYMENT, files[DEPLOYMENT])
    assert deployment.spec.replicas == 3
    assert deployment.spec.template.spec.containers[0].resources.requests == {"cpu": "500m", "memory": "1536Mi"}
    predictor = load_manifest(ISVC, files[ISVC])["spec"]["predictor"]
    assert predictor["minReplicas"] == predictor["maxReplicas"] == 3
    assert predictor["triton"]["storageUri"] == "pvc://models-claim/yolo"
    assert "'pvc://models-claim/yolo'" not in files["kubernetes/README.md"]  # no s3/gs copy command for a PVC


def test_without_a_storage_uri_there_is_no_inferenceservice(render):
    files = _files(render, storage_uri=None)
    assert ISVC not in files and "No storage URI was given" in files["kubernetes/README.md"]
    check_manifests(files)


def test_runtime_version_only_for_an_nvcr_triton_image(render):
    files = _files(render, image="registry.example.com/mirror/tritonserver:24.08-py3")
    check_manifests(files)
    assert "runtimeVersion" not in load_manifest(ISVC, files[ISVC])["spec"]["predictor"]["triton"]
    digest = "nvcr.io/nvidia/tritonserver:24.05-py3@sha256:" + "a" * 64
    assert manifest_context("m", 1, digest, False, 1, KServeOptions(), "0")["runtime_version"] == "24.05-py3"


@pytest.mark.parametrize("model, expected", [("yolo_nas_s", "yolo-nas-s"), ("YOLO.NAS__S", "yolo-nas-s"),
                                             ("-det-", "det"), ("3d_boxes", "model-3d-boxes")])
def test_kubernetes_name(model, expected):
    assert kubernetes_name(model) == expected


def test_long_names_are_cut_and_stay_distinct():
    first, second = kubernetes_name("a" * 80 + "_one"), kubernetes_name("a" * 80 + "_two")
    assert first != second
    for name in (first, second):
        assert len(name) <= manifests.MAX_NAME and re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name)


@pytest.mark.parametrize("model", ["", "___", "..-..", "模型"])
def test_a_model_name_without_letters_or_digits_is_refused(model):
    with pytest.raises(ValueError, match="no letter or digit"):
        kubernetes_name(model)


@pytest.mark.parametrize("uri", ["s3://b/p", "gs://b/p", "pvc://claim/p", "https://host/p.tar.gz", "hdfs://nn/p",
                                 "webhdfs://nn/p", "oci://registry/repo:tag", "hf://org/model", "file:///mnt/p"])
def test_storage_uris_kserve_can_fetch(uri):
    assert KServeOptions(storage_uri=uri).storage_uri == uri


@pytest.mark.parametrize("uri", ["ftp://host/p", "bucket/models", "s3://", "s3:/bucket", "s3://b/p q",
                                 's3://b/p"x', "s3://b/p'x", "s3://b/p\nkind: Secret", "s3://b/{{ 7*7 }}",
                                 "s3://b/\x00", "s3://b/é", "s3://" + "a" * 1100])
def test_storage_uris_that_are_refused(uri):
    with pytest.raises(pydantic.ValidationError):
        KServeOptions(storage_uri=uri)


@pytest.mark.parametrize("field, value", [("namespace", "Vision"), ("namespace", "vision_team"),
                                          ("namespace", "-x"), ("namespace", "a" * 64), ("cpu", "two"),
                                          ("cpu", "0"), ("cpu", "-1"), ("memory", "4GB"), ("memory", "4 Gi"),
                                          ("replicas", 0), ("replicas", 101), ("gpus", 1)])
def test_options_that_are_refused(field, value):
    with pytest.raises(pydantic.ValidationError, match=field):
        KServeOptions(**{field: value})


def test_options_are_frozen_and_documented():
    options = KServeOptions(cpu="500m", memory="512Mi", namespace="ml")
    with pytest.raises(pydantic.ValidationError):
        options.replicas = 2
    for name, field in KServeOptions.model_fields.items():
        assert field.description and "default" in field.description, name


def test_an_unknown_deployment_field_is_named(render):
    files = _files(render)
    _refused(files, DEPLOYMENT, "readinessProbe:\n            httpGet:", "readinessProbe:\n            httpGett:",
             "kubernetes/deployment.yaml: spec.template.spec.containers[0].readinessProbe: unknown field 'httpGett'")
    _refused(files, SERVICE, "type: ", "typo: ", "kubernetes/service.yaml: spec: unknown field 'typo'")


def test_wrong_types_and_missing_fields_are_named(render):
    files = _files(render)
    _refused(files, DEPLOYMENT, "replicas: 1", 'replicas: "one"', "kubernetes/deployment.yaml: spec.replicas: "
                                                                  "expected int, got str 'one'")
    _refused(files, DEPLOYMENT, "containerPort: 8000", 'containerPort: "8000"',
             "spec.template.spec.containers[0].ports[0].containerPort: expected int")
    _refused(files, DEPLOYMENT, "runAsNonRoot: true", "runAsNonRoot: 1",
             "spec.template.spec.securityContext.runAsNonRoot: expected bool")
    _refused(files, DEPLOYMENT, 'drop: ["ALL"]', 'drop: "ALL"',
             "spec.template.spec.containers[0].securityContext.capabilities.drop: expected a list")
    _refused(files, DEPLOYMENT, '- name: "tritonserver"\n          image:', "- image:",
             "spec.template.spec.containers[0]: missing required field 'name'")
    _refused(files, SERVICE, '"app.kubernetes.io/version": "1"\nspec:', '"app.kubernetes.io/version": 1\nspec:',
             'kubernetes/service.yaml: metadata.labels["app.kubernetes.io/version"]: expected str, got int 1')


def test_inferenceservice_schema_errors_are_named(render):
    files = _files(render)
    _refused(files, ISVC, "storageUri:", "storageUrl:",
             "kubernetes/inferenceservice.yaml: spec.predictor.triton: unknown field 'storageUrl'")
    _refused(files, ISVC, "    triton:\n", "    tritonn:\n",
             "kubernetes/inferenceservice.yaml: spec.predictor: unknown field 'tritonn'")
    _refused(files, ISVC, 'protocolVersion: "v2"', 'protocolVersion: "v3"', "spec.predictor.triton.protocolVersion")
    _refused(files, ISVC, 'name: "yolo-nas-s"', 'name: "Yolo_Nas"', "kubernetes/inferenceservice.yaml: metadata.name")
    _refused(files, ISVC, "maxReplicas: 1", "maxReplicas: -1", "spec.predictor.maxReplicas")
    _refused(files, ISVC, "minReplicas: 1", "minReplicas: 5", "spec.predictor.minReplicas: 5 is more than maxReplicas")
    _refused(files, ISVC, '"memory": "4Gi"', '"memory": "lots"', 'spec.predictor.triton.resources.requests.memory')


def test_wiring_and_yaml_problems_are_named(render):
    files = _files(render)
    _refused(files, SERVICE, '  selector:\n    "app.kubernetes.io/instance": "yolo-nas-s-triton"',
             '  selector:\n    "app.kubernetes.io/instance": "other"',
             "kubernetes/service.yaml: spec.selector: selects none of the Deployment's pods")
    _refused(files, DEPLOYMENT, '    matchLabels:\n      "app.kubernetes.io/instance": "yolo-nas-s-triton"',
             '    matchLabels:\n      "app.kubernetes.io/instance": "other"',
             "kubernetes/deployment.yaml: spec.selector.matchLabels: does not match")
    _refused(files, DEPLOYMENT, "spec:\n  replicas: 1", "spec:\n  replicas: 1\n  replicas: 2",
             "kubernetes/deployment.yaml: line 17: field 'replicas' appears twice")
    _refused(files, SERVICE, "kind: Service", "kind: Secret", "kubernetes/service.yaml: (top level): unexpected")
    _refused(files, SERVICE, "spec:\n", "spec: [\n", "kubernetes/service.yaml: not valid YAML")


HOSTILE = 'evil"\n  injected: true\nkind: Secret #{{ 7*7 }}\'\\'


def test_a_hostile_model_name_stays_data(render):
    files = _files(render, name=HOSTILE)
    check_manifests(files)
    for path in (DEPLOYMENT, SERVICE, ISVC):
        document = yaml.safe_load(files[path])
        assert document["kind"] in ("Deployment", "Service", "InferenceService") and "injected" not in document
        assert document["metadata"]["name"].startswith("evil-injected-true-kind-secret-7-7")
        assert "49" not in files[path]  # the name was never evaluated as a template
    annotations = yaml.safe_load(files[DEPLOYMENT])["metadata"]["annotations"]
    assert annotations["builder/triton-model"] == HOSTILE


def test_yaml_special_characters_in_a_storage_uri_stay_data(render):
    uri = "s3://bucket/a#b&c*d!e%41h[i]:j,k@l?x=1&y=2"
    files = _files(render, storage_uri=uri)
    check_manifests(files)
    assert load_manifest(ISVC, files[ISVC])["spec"]["predictor"]["triton"]["storageUri"] == uri


def test_the_schema_is_valid_and_closed():
    import jsonschema

    schema = json.loads(manifests.SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    assert "kserve/kserve" in schema["$comment"]
    objects = [schema] + [d for d in schema["$defs"].values() if "properties" in d]
    assert all(d["additionalProperties"] is False for d in objects)
